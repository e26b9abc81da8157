"""Tests for ncsn_jax.outputs."""

import os
import tempfile

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np
from PIL import Image

from ncsn_jax import outputs


def _distinct_tiles(n, h, w, c):
  """uint8 [N,H,W,C] where tile i is filled with the value 10 * (i + 1)."""
  values = 10 * (np.arange(n, dtype=np.uint8) + 1)
  return np.broadcast_to(values[:, None, None, None], (n, h, w, c)).copy()


class ToUint8Test(absltest.TestCase):

  def test_rounding_and_clipping(self):
    x = np.array([-1.0, 0.0, 0.5 / 255 - 1e-6, 0.5 / 255 + 1e-6, 0.5,
                  254.5 / 255 + 1e-6, 1.0, 2.0, np.nan], np.float64)
    np.testing.assert_array_equal(
        outputs.to_uint8(x), [0, 0, 0, 1, 128, 255, 255, 255, 0])

  def test_float32_samples_round_to_nearest(self):
    # What samples (float32) become for the metrics and the PNGs alike.
    x = np.array([-0.1, 0.0, 0.6 / 255, 0.4, 0.999, 1.2, np.nan], np.float32)
    np.testing.assert_array_equal(outputs.to_uint8(x),
                                  [0, 0, 1, 102, 255, 255, 0])

  def test_matches_torchvision_formula_in_float32(self):
    x = np.random.default_rng(0).uniform(-0.1, 1.1, 1000).astype(np.float32)
    want = np.clip(x * np.float32(255) + np.float32(0.5), 0, 255).astype(
        np.uint8)
    np.testing.assert_array_equal(outputs.to_uint8(x), want)

  def test_uint8_passthrough_and_bad_dtype(self):
    x = np.arange(256, dtype=np.uint8)
    np.testing.assert_array_equal(outputs.to_uint8(x), x)
    with self.assertRaises(TypeError):
      outputs.to_uint8(np.arange(3))


class MakeGridTest(parameterized.TestCase):

  @parameterized.parameters((5, None, 2, 3), (5, 2, 3, 2), (4, 4, 1, 4),
                            (3, 10, 1, 3), (1, None, 1, 1))
  def test_shape_and_tile_positions(self, n, ncol, nrow, used_ncol):
    h, w, pad = 3, 4, 2
    images = _distinct_tiles(n, h, w, 1)
    grid = outputs.make_grid(images, ncol=ncol, padding=pad,
                             pad_value=1.0)
    self.assertEqual(grid.dtype, np.uint8)
    self.assertEqual(grid.shape, (nrow * (h + pad) + pad,
                                  used_ncol * (w + pad) + pad, 1))
    mask = np.zeros(grid.shape, bool)
    for i in range(n):
      top = (i // used_ncol) * (h + pad) + pad
      left = (i % used_ncol) * (w + pad) + pad
      np.testing.assert_array_equal(grid[top:top + h, left:left + w], images[i])
      mask[top:top + h, left:left + w] = True
    np.testing.assert_array_equal(grid[~mask], 255)  # Padding and empty cells.

  def test_float_input_rgb_and_no_padding(self):
    rng = np.random.default_rng(0)
    images = rng.uniform(size=(4, 2, 2, 3))
    grid = outputs.make_grid(images, ncol=2, padding=0)
    self.assertEqual(grid.shape, (4, 4, 3))
    q = outputs.to_uint8(images)
    np.testing.assert_array_equal(grid[:2, :2], q[0])
    np.testing.assert_array_equal(grid[:2, 2:], q[1])
    np.testing.assert_array_equal(grid[2:, :2], q[2])
    np.testing.assert_array_equal(grid[2:, 2:], q[3])

  def test_errors(self):
    with self.assertRaisesRegex(ValueError, '4-D'):
      outputs.make_grid(np.zeros((2, 2, 1)))
    with self.assertRaisesRegex(ValueError, 'at least one'):
      outputs.make_grid(np.zeros((0, 2, 2, 1)))


class FilesTest(parameterized.TestCase):

  def setUp(self):
    super().setUp()
    # tempfile rather than create_tempdir: absl flags are unparsed under pytest.
    tmp = tempfile.TemporaryDirectory()
    self.addCleanup(tmp.cleanup)
    self.dir = tmp.name

  def _no_temp_files_left(self, directory):
    self.assertEmpty([f for f in os.listdir(directory) if f.endswith('.tmp')])

  def test_save_text_replaces_whole_file(self):
    path = os.path.join(self.dir, 'new', 'report.json')
    outputs.save_text(path, 'first, longer text')
    outputs.save_text(path, 'second')
    with open(path) as f:
      self.assertEqual(f.read(), 'second')
    self._no_temp_files_left(os.path.dirname(path))

  @parameterized.parameters(1, 3)
  def test_png_round_trip(self, channels):
    images = np.random.default_rng(1).uniform(size=(7, 5, 6, channels))
    path = os.path.join(self.dir, 'sub', 'dir', 'grid.png')
    grid = outputs.save_image_grid(path, images, ncol=3, scale=1)
    with Image.open(path) as im:
      self.assertEqual(im.mode, 'L' if channels == 1 else 'RGB')
      loaded = np.asarray(im)
    np.testing.assert_array_equal(loaded.reshape(grid.shape), grid)
    np.testing.assert_array_equal(grid, outputs.make_grid(images, ncol=3))
    self._no_temp_files_left(os.path.dirname(path))
    # By default small images are shown at least 64 px wide (5 px: x12).
    self.assertEqual(outputs.display_scale(images), 12)
    big = outputs.save_image_grid(path, images, ncol=3)
    np.testing.assert_array_equal(big[::12, ::12], grid)

  def test_png_scale(self):
    images = _distinct_tiles(2, 2, 2, 3)
    path = os.path.join(self.dir, 'big.png')
    grid = outputs.save_image_grid(path, images, padding=1, scale=3)
    self.assertEqual(grid.shape, (3 * 4, 3 * 7, 3))
    with Image.open(path) as im:
      self.assertEqual(im.size, (21, 12))

  def test_overwrite_is_atomic_replace(self):
    path = os.path.join(self.dir, 'grid.png')
    outputs.save_image_grid(path, np.zeros((1, 2, 2, 1)))
    outputs.save_image_grid(path, np.ones((1, 2, 2, 1)), padding=0)
    with Image.open(path) as im:
      np.testing.assert_array_equal(np.asarray(im), 255)
    self._no_temp_files_left(self.dir)

  def test_failed_write_leaves_no_file(self):
    path = os.path.join(self.dir, 'bad.png')
    with self.assertRaisesRegex(ValueError, 'channels'):
      outputs.save_image_grid(path, np.zeros((1, 2, 2, 2)))
    self.assertEmpty(os.listdir(self.dir))

  def test_npz_round_trip(self):
    images = np.random.default_rng(2).uniform(size=(6, 4, 4, 3))
    path = os.path.join(self.dir, 'samples', 'x.npz')
    outputs.save_npz_images(path, images)
    with np.load(path) as f:
      loaded = f['images']
    self.assertEqual(loaded.dtype, np.uint8)
    np.testing.assert_array_equal(loaded, outputs.to_uint8(images))
    path2 = os.path.join(self.dir, 'y.npz')
    outputs.save_npz_images(path2, loaded, compressed=True)
    with np.load(path2) as f:
      np.testing.assert_array_equal(f['images'], loaded)

  def test_loss_curve_is_png(self):
    path = os.path.join(self.dir, 'plots', 'loss.png')
    steps = np.arange(100)
    outputs.save_loss_curve(path, steps, np.exp(-steps / 30.0),
                            title='DSM loss', test_steps=steps[::10],
                            test_losses=np.exp(-steps[::10] / 25.0),
                            log_y=True)
    with open(path, 'rb') as f:
      self.assertEqual(f.read(8), b'\x89PNG\r\n\x1a\n')
    with Image.open(path) as im:
      im.verify()
    outputs.save_loss_curve(path, [1, 2], [3.0, 2.0])
    with self.assertRaisesRegex(ValueError, 'equal length'):
      outputs.save_loss_curve(path, [1, 2, 3], [3.0, 2.0])
    with self.assertRaisesRegex(ValueError, 'both'):
      outputs.save_loss_curve(path, [1], [1.0], test_steps=[1])

  @parameterized.parameters(1, 3)
  def test_gif_frames(self, channels):
    t = 5
    frames = np.stack([np.full((4, 6, channels), (i + 1) / (t + 1))
                       for i in range(t)])
    path = os.path.join(self.dir, 'anim', 'process.gif')
    outputs.save_gif(path, frames, duration_ms=50, scale=2)
    with Image.open(path) as im:
      self.assertEqual(im.n_frames, t)
      self.assertEqual(im.size, (12, 8))
      self.assertTrue(im.is_animated)


if __name__ == '__main__':
  absltest.main()
