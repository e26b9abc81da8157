"""Tests of eval mode: reports, sweeps, and programs built once.

What eval mode does with any network, on the per-pixel one of
`tests/score_models.py` (`run_test.py` evaluates the tiny RefineNet).
"""

import json
import os

from absl.testing import absltest
from configs import tiny
import jax
import numpy as np
from tests import compiles
from tests import score_models

from ncsn_jax import checkpoints
from ncsn_jax import models
from ncsn_jax import train_state
from ncsn_jax.evaluation import evaluate


def digits_config():
  config = tiny.get_config()
  config.data.dataset = 'digits'
  config.data.channels = 1
  config.eval.batch_size = 40
  config.eval.num_samples = 6  # Two sampler batches of 4, the last padded.
  return config


def save_checkpoints(config, workdir, steps):
  model = models.create_model(config)
  tx = train_state.create_optimizer(config)
  manager = checkpoints.create_manager(workdir)
  for step in steps:
    state = train_state.create_train_state(config, model, tx,
                                           jax.random.key(step))
    checkpoints.save(manager, step, state.replace(step=np.int32(step)))


class EvaluateTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.enter_context(score_models.pixel_networks())

  def test_sweep_compiles_what_one_checkpoint_compiles(self):
    config = digits_config()
    workdir = self.create_tempdir().full_path
    save_checkpoints(config, workdir, (1, 2, 3))
    with compiles.counting() as one:
      path = evaluate.evaluate(config, workdir)
    with open(path) as f:
      report = json.load(f)
    self.assertEqual(report['step'], 3)
    self.assertGreater(report['test_dsm_loss'], 0)
    self.assertIn('frechet_distance', report['digits_classifier'])
    config.eval.begin_ckpt = 1
    with compiles.counting() as three:
      path = evaluate.evaluate(config, workdir)
    with open(path) as f:
      sweep = json.load(f)
    self.assertEqual([r['step'] for r in sweep['rows']], [1, 2, 3])
    self.assertEqual(sweep['criterion'], 'digits_classifier.frechet_distance')
    # The sweep repeats checkpoint 3's report exactly (same keys, same
    # programs), and compiles exactly what one checkpoint compiles.
    self.assertEqual(sweep['rows'][-1]['test_dsm_loss'],
                     report['test_dsm_loss'])
    self.assertEqual(three, one)
    self.assertEqual(one[compiles.PMAP], 2)  # Test-loss step and sampler.
    losses = {r['step']: r['test_dsm_loss'] for r in sweep['rows']}
    self.assertLen(set(losses.values()), 3)  # Different parameters.
    self.assertTrue(os.path.exists(os.path.join(workdir, 'eval',
                                                'report_1.json')))

  def test_sweep_without_samples_ranks_by_the_test_loss(self):
    config = digits_config()
    config.eval.num_samples = 0
    config.eval.begin_ckpt = 1
    workdir = self.create_tempdir().full_path
    save_checkpoints(config, workdir, (2, 4))
    evaluate.evaluate(config, workdir)
    with open(os.path.join(workdir, 'eval', 'sweep.json')) as f:
      sweep = json.load(f)
    self.assertEqual([r['step'] for r in sweep['rows']], [2, 4])
    self.assertEqual(sweep['criterion'], 'test_dsm_loss')
    losses = {r['step']: r['test_dsm_loss'] for r in sweep['rows']}
    self.assertEqual(sweep['best_step'], min(losses, key=losses.get))
    with open(os.path.join(workdir, 'eval', 'sweep.csv')) as f:
      self.assertTrue(f.readline().startswith('step,'))

  def test_best_step(self):
    rows = [{'step': 1, 'fid': 3.0, 'test_dsm_loss': 1.0},
            {'step': 2, 'fid': 2.0, 'test_dsm_loss': 2.0}]
    self.assertEqual(evaluate.best_step(rows), (2, 'fid'))
    rows = [{'step': 1, 'test_dsm_loss': 1.0},
            {'step': 2, 'test_dsm_loss': 2.0}]
    self.assertEqual(evaluate.best_step(rows), (1, 'test_dsm_loss'))
    with self.assertRaisesRegex(ValueError, 'no common metric'):
      evaluate.best_step([{'step': 1}])


if __name__ == '__main__':
  absltest.main()
