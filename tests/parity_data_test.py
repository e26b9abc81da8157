"""Input-pipeline transforms against the official ones (recorded, no torch).

testdata/torch_checkpoints/transforms.npz holds the official CelebA
transform (torchvision CenterCrop(140), Resize(S), ToTensor, as NCSN and
NCSNv2 build it; recorded with PIL under torchvision's semantics, see
`celeba_method`) of a fixed 218x178 image with fine detail, and the
official uniform and Gaussian dequantisation with their draws.

Tolerances: the PIL path is PIL's own bilinear resize, so it must agree
exactly. TensorFlow's antialiased bilinear resize rounds its float result,
PIL works in fixed point: the two may differ by one grey level, on a small
share of the pixels (measured: see `TF_MAX_LEVELS`, `TF_MAX_SHARE`).
Dequantisation: (255 x + u) / 256 equals the official x / 256 * 255 +
u / 256 bit for bit (scaling by 1/256 is exact), x + 0.01 n as well.
"""

from absl.testing import absltest
from absl.testing import parameterized
from configs import celeba_ncsn
from configs import celeba_ncsnv2
import numpy as np
from PIL import Image
import tensorflow as tf
from tests import parity_common as pc

from ncsn_jax.data import preprocessing

REF = pc.load('transforms.npz')
CONFIGS = {64: celeba_ncsnv2, 32: celeba_ncsn}
TF_MAX_LEVELS = 1  # Grey levels, TF resize against PIL / torchvision.
TF_MAX_SHARE = 0.2  # Of the values that may differ (measured: 13%, 9%).


def official_uint8(size: int) -> np.ndarray:
  """The official ToTensor output k / 255 as the uint8 levels k."""
  levels = np.round(REF[f'celeba_{size}'] * 255)
  np.testing.assert_array_equal(
      levels.astype(np.float32) / np.float32(255), REF[f'celeba_{size}'])
  return levels.astype(np.uint8)


class CelebaTransformTest(parameterized.TestCase):

  def test_config_files_use_the_official_crop_and_sizes(self):
    for size, module in CONFIGS.items():
      config = module.get_config()
      self.assertEqual(config.data.dataset, 'celeba')
      self.assertEqual((config.data.crop_size, config.data.image_size),
                       (140, size))

  def test_center_crop(self):
    image = REF['celeba_image']
    self.assertEqual(
        preprocessing.center_offsets(*image.shape[:2], 140, 140),
        tuple(REF['celeba_crop_corner']))
    pil = preprocessing.center_crop_and_resize_pil(Image.fromarray(image),
                                                   140, 140)
    np.testing.assert_array_equal(np.asarray(pil), REF['celeba_crop'])
    tf_crop = preprocessing.center_crop_and_resize(image, 140, 140)
    np.testing.assert_array_equal(tf_crop.numpy(), REF['celeba_crop'])

  @parameterized.parameters(64, 32)
  def test_pil_path_is_exact(self, size):
    config = CONFIGS[size].get_config()
    got = preprocessing.center_crop_and_resize_pil(
        Image.fromarray(REF['celeba_image']), config.data.image_size,
        config.data.crop_size)
    np.testing.assert_array_equal(np.asarray(got), official_uint8(size))
    # As the pipeline scales it: uint8 / 255 in float32, as ToTensor.
    scaled = tf.cast(np.asarray(got), tf.float32) / 255.0
    np.testing.assert_array_equal(scaled.numpy(), REF[f'celeba_{size}'])

  @parameterized.parameters(64, 32)
  def test_tf_path_within_one_grey_level(self, size):
    config = CONFIGS[size].get_config()
    got = preprocessing.center_crop_and_resize(
        REF['celeba_image'], config.data.image_size, config.data.crop_size)
    diff = np.abs(got.numpy().astype(int) - official_uint8(size))
    self.assertLessEqual(diff.max(), TF_MAX_LEVELS)
    self.assertLessEqual(np.mean(diff > 0), TF_MAX_SHARE)

  def test_fixture_detail_makes_the_resampling_filter_matter(self):
    # Plain nearest-neighbour subsampling of the crop would be far off:
    # the comparison above tests the antialiased bilinear filter itself.
    crop = REF['celeba_crop'].astype(int)
    step = 140 / 64
    idx = np.minimum((np.arange(64) * step + step / 2).astype(int), 139)
    nearest = crop[idx][:, idx]
    self.assertGreater(np.abs(nearest - official_uint8(64)).max(), 20)


class DequantisationTest(absltest.TestCase):

  def test_uniform(self):
    x, u = REF['x'], REF['uniform_draw']
    np.testing.assert_array_equal(preprocessing.uniform_dequantize(x, u),
                                  REF['uniform_dequantized'])
    # The pipeline applies it to TensorFlow tensors.
    np.testing.assert_array_equal(
        preprocessing.uniform_dequantize(tf.constant(x),
                                         tf.constant(u)).numpy(),
        REF['uniform_dequantized'])
    self.assertFalse(np.array_equal(REF['uniform_dequantized'], x))

  def test_gaussian(self):
    x, n = REF['x'], REF['gaussian_draw']
    np.testing.assert_array_equal(
        preprocessing.gaussian_dequantize(tf.constant(x),
                                          tf.constant(n)).numpy(),
        REF['gaussian_dequantized'])
    np.testing.assert_array_equal(preprocessing.gaussian_dequantize(x, n),
                                  REF['gaussian_dequantized'])


if __name__ == '__main__':
  absltest.main()
