"""Tests for inception.preprocessing against per-pixel resize oracles."""

from absl.testing import absltest
from configs import tiny
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np

from ncsn_jax import config_checks
from ncsn_jax import errors
from ncsn_jax.evaluation.inception import extractor
from ncsn_jax.models import layers


def _matrix(size: int, mode: str) -> np.ndarray:
  """The float64 [299, size] resize matrix of a preprocessing mode."""
  return layers.bilinear_matrix(size, 299, extractor.RESIZE_RULES[mode])


def _tf_resize_oracle(image: np.ndarray, out: int) -> np.ndarray:
  """TF1 legacy bilinear, pixel by pixel, [H,W] -> [out,out], float64."""
  h, w = image.shape

  def taps(i, n):
    src = np.float32(i) * (np.float32(n) / np.float32(out))
    lo = min(int(np.floor(src)), n - 1)
    return lo, min(lo + 1, n - 1), float(src) - lo

  res = np.zeros((out, out))
  for i in range(out):
    y0, y1, fy = taps(i, h)
    for j in range(out):
      x0, x1, fx = taps(j, w)
      top = image[y0, x0] + (image[y0, x1] - image[y0, x0]) * fx
      bottom = image[y1, x0] + (image[y1, x1] - image[y1, x0]) * fx
      res[i, j] = top + (bottom - top) * fy
  return res


def _half_pixel_oracle(image: np.ndarray, out: int) -> np.ndarray:
  """PyTorch bilinear, align_corners=False, pixel by pixel.

  Source coordinates in float32, as ATen computes them for float images.
  """
  h, w = image.shape

  def taps(i, n):
    scale = np.float32(n) / np.float32(out)
    src = max(scale * (np.float32(i) + np.float32(0.5)) - np.float32(0.5),
              np.float32(0))
    lo = int(np.floor(src))
    hi = lo + 1 if lo < n - 1 else lo
    return lo, hi, float(src) - lo

  res = np.zeros((out, out))
  for i in range(out):
    y0, y1, fy = taps(i, h)
    for j in range(out):
      x0, x1, fx = taps(j, w)
      res[i, j] = ((1 - fy) * ((1 - fx) * image[y0, x0] + fx * image[y0, x1])
                   + fy * ((1 - fx) * image[y1, x0] + fx * image[y1, x1]))
  return res


class PreprocessingTest(parameterized.TestCase):

  @parameterized.product(size=(8, 32, 64, 256, 299), mode=('tf', 'pytorch'))
  def test_matrix_rows_match_oracle(self, size, mode):
    m = _matrix(size, mode)
    self.assertEqual(m.shape, (299, size))
    np.testing.assert_allclose(m.sum(1), 1.0, atol=1e-12)
    if size == 299:
      np.testing.assert_array_equal(m, np.eye(299))
    image = np.random.default_rng(size).uniform(0, 255, (size, size))
    oracle = (_tf_resize_oracle if mode == 'tf' else
              _half_pixel_oracle)(image, 299)
    got = m @ image @ m.T
    np.testing.assert_allclose(got, oracle, atol=1e-4)
    # The right / bottom border band is where a wrong edge rule shows.
    np.testing.assert_allclose(got[-12:], oracle[-12:], atol=1e-4)
    np.testing.assert_allclose(got[:, -12:], oracle[:, -12:], atol=1e-4)

  def test_tf_edge_rows_clamp_to_last_pixel(self):
    m = _matrix(32, 'tf')
    # Output 298 samples source 298 * 32/299 = 31.89: only pixel 31.
    self.assertEqual(m[298, 31], 1.0)
    self.assertEqual(m[0, 0], 1.0)
    m = _matrix(32, 'pytorch')
    self.assertEqual(m[0, 0], 1.0)  # Source clamped at 0.
    self.assertEqual(m[298, 31], 1.0)

  @parameterized.parameters('tf', 'pytorch')
  def test_preprocess_range_and_channels(self, mode):
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (2, 16, 12, 3), np.uint8)
    x = np.asarray(extractor.preprocess(images, mode))
    self.assertEqual(x.shape, (2, 299, 299, 3))
    self.assertEqual(x.dtype, np.float32)
    rh = _matrix(16, mode)
    rw = _matrix(12, mode)
    want = np.einsum('oh,bhwc,pw->bopc', rh, images.astype(np.float64), rw)
    want = (want - 128) / 128 if mode == 'tf' else want / 127.5 - 1
    np.testing.assert_allclose(x, want, atol=2e-6)
    grey = np.asarray(extractor.preprocess(images[..., :1], mode))
    np.testing.assert_allclose(grey, np.repeat(grey[..., :1], 3, -1))
    np.testing.assert_allclose(grey[..., 0], x[..., 0], atol=1e-6)
    full = np.full((1, 299, 299, 3), 255, np.uint8)
    top = float(np.asarray(extractor.preprocess(full, mode)).max())
    self.assertAlmostEqual(top, 0.9921875 if mode == 'tf' else 1.0, places=6)
    config = tiny.get_config()
    config.eval.inception_preprocessing = 'bicubic'
    with self.assertRaisesRegex(errors.ConfigError,
                                'inception_preprocessing.*unknown'):
      config_checks.check_config(config, 'eval')

  def test_pytorch_mode_matches_jax_image_resize(self):
    image = np.random.default_rng(4).uniform(0, 255, (1, 32, 32, 3))
    ours = np.asarray(extractor.preprocess(image, 'pytorch'))
    theirs = np.asarray(jax.image.resize(jnp.asarray(image, jnp.float32),
                                         (1, 299, 299, 3), 'bilinear'))
    np.testing.assert_allclose(ours, theirs / 127.5 - 1, atol=1e-5)


if __name__ == '__main__':
  absltest.main()
