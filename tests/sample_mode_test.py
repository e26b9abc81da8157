"""Tests of sample mode: the grid, the process and every figure."""

import json

from absl.testing import absltest
from configs import tiny
import jax
import numpy as np
from PIL import Image
from tests import compiles

from ncsn_jax import checkpoints
from ncsn_jax import models
from ncsn_jax import outputs
from ncsn_jax import train_state
from ncsn_jax.data import input_pipeline
from ncsn_jax.sampling import sample_mode


class SampleModeFiguresTest(absltest.TestCase):

  def test_sample_mode_writes_every_figure(self):
    config = tiny.get_config()
    config.data.dataset = 'digits'
    config.data.channels = 1
    s = config.sampling
    s.batch_size = 8
    s.record_every = 2  # 4 levels x 2 steps: 4 states + the denoised one.
    s.inpainting = True
    s.completions = 2
    s.interpolation = True
    s.n_interpolations = 2
    s.nearest_neighbors = 3
    workdir = self.create_tempdir().full_path
    model = models.create_model(config)
    tx = train_state.create_optimizer(config)
    state = train_state.create_train_state(config, model, tx,
                                           jax.random.key(0))
    checkpoints.save(checkpoints.create_manager(workdir), 1, state)

    with compiles.counting() as counts:
      paths = sample_mode.sample(config, workdir)
    # Three samplers (plain, inpainting, interpolation), each built once.
    self.assertEqual(counts[compiles.PMAP], 3)
    size = lambda name: Image.open(paths[name]).size  # (width, height)
    cell = 8 + 2  # Image plus padding; grids are upscaled 8x.
    self.assertEqual(size('grid'), ((3 * cell + 2) * 8, (3 * cell + 2) * 8))
    # Process figure: one row per sample (8), one column per kept state.
    self.assertEqual(size('process'), ((5 * cell + 2) * 8, (8 * cell + 2) * 8))
    with Image.open(paths['gif']) as gif:
      self.assertEqual(gif.n_frames, 5)
    # Inpainting rows: masked image, 2 completions, original (4 references).
    self.assertEqual(size('inpainting'), ((4 * cell + 2) * 8,
                                          (4 * cell + 2) * 8))
    grid = np.asarray(Image.open(paths['inpainting']))[::8, ::8]
    refs = input_pipeline.load_split_arrays(config, 'test', 4)
    original = grid[2:10, 3 * cell + 2:3 * cell + 10]
    np.testing.assert_array_equal(original,
                                  outputs.to_uint8(refs[0, ..., 0]))
    completion = grid[2:10, cell + 2:cell + 10]
    np.testing.assert_array_equal(completion[:, :4], original[:, :4])
    self.assertEqual(size('interpolation'), ((2 * cell + 2) * 8,
                                             (4 * cell + 2) * 8))
    self.assertEqual(size('nearest'), ((4 * cell + 2) * 8,
                                       (8 * cell + 2) * 8))
    # Nearest neighbours are the closest training images.
    with open(paths['nearest_json']) as f:
      report = json.load(f)
    samples = np.load(paths['npz'])['images'] / 255.0
    train_images = input_pipeline.load_split_arrays(config, 'train')
    d = np.sqrt(((samples[:, None] - train_images[None])**2).sum((2, 3, 4)))
    for i, (idx, dist) in enumerate(zip(report['indices'],
                                        report['distances'])):
      self.assertLen(idx, 3)
      self.assertLessEqual(dist[0], d[i].min() + 0.02)  # uint8 rounding.
      np.testing.assert_allclose(d[i, idx], dist, atol=0.02)



if __name__ == '__main__':
  absltest.main()
