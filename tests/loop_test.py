"""Tests of the training loop: resume, divergence, programs built once.

The resume test trains the tiny RefineNet. The divergence and build-once
tests check what the loop does with any network, on the per-pixel one of
`tests/score_models.py` (its programs compile in about a second, the
RefineNet's in ten).
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
from ncsn_jax import errors
from ncsn_jax import models
from ncsn_jax import train_state
from ncsn_jax.training import loop


def assert_trees_close(test, a, b, rtol=1e-5, atol=1e-6):
  flat_a, tree_a = jax.tree.flatten(a)
  flat_b, tree_b = jax.tree.flatten(b)
  test.assertEqual(tree_a, tree_b)
  for x, y in zip(flat_a, flat_b):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol,
                               atol=atol)


def digits_config():
  config = tiny.get_config()
  config.data.dataset = 'digits'
  config.data.channels = 1
  return config


class TrainLoopTest(absltest.TestCase):

  def test_resume_equals_uninterrupted_run(self):
    # Digits (tf.data from memory) has a checkpointable input pipeline, as
    # real tfds data sets do; the tfds mocks are Python generators.
    config = tiny.get_config()
    config.data.dataset = 'digits'
    config.data.channels = 1
    config.training.snapshot_sampling = False
    config.training.n_iters = 4
    config.training.snapshot_freq = 2
    root = self.create_tempdir().full_path
    full = loop.train(config, os.path.join(root, 'full')).state
    config.training.n_iters = 2
    part = os.path.join(root, 'part')
    loop.train(config, part).state
    config.training.n_iters = 4
    resumed = loop.train(config, part).state
    self.assertEqual(int(resumed.step), 4)
    assert_trees_close(self, resumed, full, rtol=0, atol=0)
    manager = checkpoints.create_manager(part, create=False)
    self.assertEqual(sorted(manager.all_steps()), [2, 4])
    for step in (2, 4):
      self.assertTrue(os.path.isfile(os.path.join(
          part, 'checkpoints', str(step), 'data', 'process_0',
          'position.json')))
    # Different data after the restart would give different parameters.
    self.assertFalse(np.allclose(
        jax.tree.leaves(resumed.params)[0],
        jax.tree.leaves(train_state.create_train_state(
            config, models.create_model(config),
            train_state.create_optimizer(config), jax.random.key(0)).params)[0]))


class DivergenceTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.enter_context(score_models.pixel_networks())

  def _config(self):
    config = tiny.get_config()
    config.data.dataset = 'digits'
    config.data.channels = 1
    config.training.snapshot_sampling = False
    config.training.snapshot_freq = 1
    config.training.n_iters = 4
    config.optim.lr = 1e38  # The first update overflows the next forward.
    return config

  def test_divergence_stops_with_error_and_keeps_checkpoint(self):
    workdir = self.create_tempdir().full_path
    with self.assertRaisesRegex(errors.NonFiniteLossError, 'at step 2'):
      loop.train(self._config(), workdir)
    manager = checkpoints.create_manager(workdir, create=False)
    self.assertEqual(manager.all_steps(), [1])

  def test_skip_nonfinite_counts_and_continues(self):
    config = self._config()
    config.training.skip_nonfinite = True
    workdir = self.create_tempdir().full_path
    state = loop.train(config, workdir).state
    self.assertEqual(int(state.step), 4)
    with open(os.path.join(workdir, 'metrics.jsonl')) as f:
      last = [json.loads(l) for l in f][-1]
    self.assertEqual(last['skipped_steps'], 3)


class BuildOnceTest(absltest.TestCase):

  def test_three_snapshots_compile_what_one_snapshot_compiles(self):
    # Each snapshot samples a grid and each step logs a test loss: with the
    # sampler, eval step and train step built once, three of each compile
    # the same programs as one.
    config = digits_config()
    config.training.snapshot_freq = 1
    config.training.eval_freq = 1
    runs = []
    for n in (1, 3):
      config.training.n_iters = n
      workdir = self.create_tempdir().full_path
      with score_models.pixel_networks(), compiles.counting() as counts:
        loop.train(config, workdir).state
      self.assertLen(os.listdir(os.path.join(workdir, 'samples')), n)
      runs.append(counts)
    self.assertEqual(runs[1], runs[0])
    # Three pmapped programs: train step, test-loss step, sampler.
    self.assertEqual(runs[1][compiles.PMAP], 3)


if __name__ == '__main__':
  absltest.main()
