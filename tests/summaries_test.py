"""Tests of the TensorBoard images, sweep scalars and sweep plot."""

import os

from absl.testing import absltest
from clu import metric_writers
import numpy as np
from PIL import Image
from tests import run_test

from ncsn_jax import outputs


class SummariesTest(absltest.TestCase):

  def test_sweep_scalars_and_plot(self):
    root = self.create_tempdir().full_path
    rows = [{
        'step': s,
        'num_samples': 8,
        'test_dsm_loss': 1.0 / s,
        'digits_classifier.score_ratio': 0.1 * s,
        'digits_classifier.kid_std': None
    } for s in (2, 4, 6)]
    path = outputs.write_sweep(root, rows, 'test_dsm_loss')
    tags = run_test.event_tags(root)
    self.assertEqual(
        set(tags), {'eval/test_dsm_loss', 'eval/digits_classifier/score_ratio'})
    self.assertEqual(tags['eval/test_dsm_loss'], {2, 4, 6})
    self.assertEqual(path, os.path.join(root, 'sweep.png'))
    with Image.open(path) as image:
      self.assertEqual(image.format, 'PNG')
      self.assertGreater(image.size[1], image.size[0] // 2)  # Two panels.
    self.assertEqual(outputs.save_sweep_plot(path, rows, 'test_dsm_loss'),
                     ['test_dsm_loss', 'digits_classifier.score_ratio'])

  def test_grid_image(self):
    logdir = self.create_tempdir().full_path
    writer = metric_writers.SummaryWriter(logdir)
    outputs.write_grid(writer, 7, np.zeros((10, 12, 1), np.uint8))
    writer.flush()
    self.assertEqual(run_test.event_tags(logdir), {'samples': {7}})


if __name__ == '__main__':
  absltest.main()
