"""Tests of the pure per-image transforms (geometry, dequantisation, 16 bit)."""

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np
from PIL import Image
import tensorflow as tf

from ncsn_jax.data import preprocessing


class DequantizationTest(absltest.TestCase):

  def test_fixed_noise_gives_the_formula(self):
    x = np.arange(256, dtype=np.float32) / 255.0
    for u in (0.0, 0.25, 0.999):
      np.testing.assert_allclose(preprocessing.uniform_dequantize(x, u),
                                 (np.arange(256) + u) / 256.0, rtol=1e-6)

  def test_numpy_and_tensorflow_agree_and_stay_in_the_level(self):
    rng = np.random.RandomState(0)
    levels = rng.randint(0, 256, (4, 5, 5, 3))
    x = (levels / 255.0).astype(np.float32)
    u = rng.uniform(size=x.shape).astype(np.float32)
    out = preprocessing.uniform_dequantize(x, u)
    np.testing.assert_allclose(
        preprocessing.uniform_dequantize(tf.constant(x), tf.constant(u)), out,
        rtol=1e-6)
    np.testing.assert_array_equal(np.floor(out * 256), levels)


class GeometryTest(parameterized.TestCase):

  @parameterized.parameters(
      # (h, w, size) -> torchvision Resize(size) output (h, w).
      ((218, 178, 64), (78, 64)), ((140, 140, 64), (64, 64)),
      ((256, 341, 128), (128, 170)), ((30, 20, 12), (18, 12)))
  def test_resized_shape(self, args, want):
    self.assertEqual(preprocessing.resized_shape(*args), want)

  def test_celeba_center_crop_offsets(self):
    # torchvision CenterCrop(140) on CelebA's 178x218: rows 39.., columns 19..
    self.assertEqual(preprocessing.center_offsets(218, 178, 140, 140),
                     (39, 19))
    # Half-way offsets round to even, as Python's round: (5 - 2) / 2 = 1.5.
    self.assertEqual(preprocessing.center_offsets(5, 7, 2, 2), (2, 2))

  def test_tf_and_pil_geometry(self):
    image = np.random.RandomState(0).randint(0, 256, (218, 178, 3)).astype(
        np.uint8)
    out = np.asarray(preprocessing.center_crop_and_resize(image, 64, 140))
    pil = np.asarray(preprocessing.center_crop_and_resize_pil(
        Image.fromarray(image), 64, 140))
    self.assertEqual(out.shape, (64, 64, 3))
    self.assertEqual(out.dtype, np.uint8)
    self.assertEqual(pil.shape, (64, 64, 3))
    # Crop only (no resize): both are exactly the torchvision crop.
    np.testing.assert_array_equal(
        preprocessing.center_crop_and_resize(image, 140, 140),
        image[39:179, 19:159])
    np.testing.assert_array_equal(
        np.asarray(preprocessing.center_crop_and_resize_pil(
            Image.fromarray(image), 140, 140)), image[39:179, 19:159])
    # Antialiased TF bilinear and PIL bilinear agree on smooth images.
    smooth = np.asarray(Image.fromarray(image).resize((22, 27)).resize(
        (178, 218), Image.Resampling.BILINEAR))
    tf_out = np.asarray(preprocessing.center_crop_and_resize(smooth, 32, 140))
    pil_out = np.asarray(preprocessing.center_crop_and_resize_pil(
        Image.fromarray(smooth), 32, 140))
    self.assertLessEqual(np.abs(tf_out.astype(int) - pil_out).max(), 2)

  def test_tf_crop_larger_than_the_image_fails(self):
    with self.assertRaisesRegex(tf.errors.InvalidArgumentError,
                                'smaller than the 40x40 centre crop'):
      preprocessing.center_crop_and_resize(np.zeros((32, 32, 3), np.uint8),
                                           32, 40)


class EightBitTest(absltest.TestCase):

  def test_sixteen_bit_grey_is_scaled(self):
    values = np.array([[0, 128, 257, 65535, 40000]], np.uint16)
    img = preprocessing.to_8bit(Image.fromarray(values))
    self.assertEqual(img.mode, 'L')
    np.testing.assert_array_equal(np.asarray(img),
                                  np.round(values / 257.0).astype(np.uint8))

  def test_eight_bit_modes_pass_through(self):
    for mode in ('L', 'RGB', 'RGBA', 'P'):
      img = Image.new(mode, (3, 2))
      self.assertIs(preprocessing.to_8bit(img), img)


if __name__ == '__main__':
  absltest.main()
