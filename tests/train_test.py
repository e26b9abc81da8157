"""Tests of the optimiser, the pure train step and the training loop."""

import functools
import json
import os

from absl.testing import absltest
import jax
import jax.numpy as jnp
import numpy as np

from configs import tiny
from ncsn_jax import errors
from ncsn_jax import models
from ncsn_jax import parallel
from ncsn_jax.training import checkpointing
from ncsn_jax.training import losses
from ncsn_jax.training import train


def assert_trees_close(test, a, b, rtol=1e-5, atol=1e-6):
  flat_a, tree_a = jax.tree.flatten(a)
  flat_b, tree_b = jax.tree.flatten(b)
  test.assertEqual(tree_a, tree_b)
  for x, y in zip(flat_a, flat_b):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol,
                               atol=atol)


def setup(config):
  model = models.create_model(config)
  tx = train.create_optimizer(config)
  loss_fn = losses.get_loss_fn(config, model)
  state = train.create_train_state(config, model, tx, jax.random.key(0))
  step = functools.partial(train.multi_train_step, config=config,
                           loss_fn=loss_fn, tx=tx)
  return state, step


def batches(config, k, n):
  shape = (k, n, config.data.image_size, config.data.image_size,
           config.data.channels)
  return np.asarray(jax.random.uniform(jax.random.key(5), shape))


class OptimizerTest(absltest.TestCase):

  def test_adam_matches_formula_and_warmup(self):
    config = tiny.get_config()
    config.optim.lr, config.optim.warmup = 0.1, 4
    tx = train.create_optimizer(config)
    params = {'w': jnp.array([1.0, -2.0])}
    grads = {'w': jnp.array([0.5, 0.25])}
    state = tx.init(params)
    updates, state = tx.update(grads, state, params)
    np.testing.assert_allclose(updates['w'], 0.0)  # lr(0) = 0 in warmup
    updates, state = tx.update(grads, state, params)
    # Second Adam step with constant grads: m/(sqrt(v)+eps) = sign(g).
    np.testing.assert_allclose(updates["w"], -0.025 * np.sign([0.5, 0.25]),
                               rtol=1e-4)
    fn = train.create_learning_rate_fn(config)
    self.assertAlmostEqual(float(fn(2)), 0.05)
    self.assertAlmostEqual(float(fn(100)), 0.1)

  def test_gradient_clipping(self):
    config = tiny.get_config()
    config.optim.grad_clip = 1.0
    config.optim.lr = 1.0
    tx = train.create_optimizer(config)
    self.assertLen(tx.init({'w': jnp.zeros(2)}), 3)
    config.optim.optimizer = 'SGD'
    with self.assertRaisesRegex(ValueError, r'config\.optim\.optimizer'):
      train.create_optimizer(config)


class TrainStepTest(absltest.TestCase):

  def test_ema_update_formula(self):
    config = tiny.get_config()
    config.model.ema_rate = 0.9
    state, step = setup(config)
    p_step = parallel.pmap_train_step(step, devices=jax.devices()[:1])
    images = batches(config, 1, 4)[None]
    new, _ = p_step(state, images, jax.random.key(1))
    expected = jax.tree.map(lambda e, p: 0.9 * e + 0.1 * p, state.ema_params,
                            new.params)
    assert_trees_close(self, new.ema_params, expected)
    self.assertEqual(int(new.step), 1)
    config.model.ema = False
    state, step = setup(config)
    new, _ = parallel.pmap_train_step(step, devices=jax.devices()[:1])(
        state, images, jax.random.key(1))
    assert_trees_close(self, new.ema_params, new.params, rtol=0, atol=0)

  def test_four_devices_equal_one_device(self):
    self.assertEqual(jax.local_device_count(), 4)
    config = tiny.get_config()
    config.training.batch_size = 8
    state, step = setup(config)
    images = batches(config, 2, 8)  # [k=2, B=8, ...]
    one = parallel.pmap_train_step(step, devices=jax.devices()[:1])
    four = parallel.pmap_train_step(step)
    s1, m1 = one(state, images[None], jax.random.key(1))
    s4, m4 = four(state, np.swapaxes(images.reshape(2, 4, 2, 8, 8, 3), 0, 1),
                  jax.random.key(1))
    assert_trees_close(self, s4, s1, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(m4['loss'], m1['loss'], rtol=1e-5)
    np.testing.assert_array_equal(m4['group_counts'], m1['group_counts'])

  def test_jitted_steps_equal_single_steps(self):
    config = tiny.get_config()
    state, step = setup(config)
    p_step = parallel.pmap_train_step(step, devices=jax.devices()[:1])
    images = batches(config, 3, 4)
    scanned, _ = p_step(state, images[None], jax.random.key(1))
    single = state
    for i in range(3):
      single, _ = p_step(single, images[None, i:i + 1], jax.random.key(1))
    assert_trees_close(self, scanned, single)
    self.assertEqual(int(scanned.step), 3)

  def test_gradient_accumulation_equals_full_batch(self):
    config = tiny.get_config()
    config.training.batch_size = 8
    state, step = setup(config)
    images = batches(config, 1, 8)[None]
    p_step = lambda c: parallel.pmap_train_step(
        setup(c)[1], devices=jax.devices()[:1])
    full, m_full = p_step(config)(state, images, jax.random.key(1))
    config.training.grad_accum_steps = 4
    accum, m_accum = p_step(config)(state, images, jax.random.key(1))
    assert_trees_close(self, accum, full, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(m_accum['loss'], m_full['loss'], rtol=1e-5)
    config.training.grad_accum_steps = 3
    with self.assertRaisesRegex(ValueError, 'grad_accum_steps=3'):
      p_step(config)(state, images, jax.random.key(1))

  def test_bfloat16_compute_close_to_float32(self):
    config = tiny.get_config()
    state, step = setup(config)
    images = batches(config, 1, 4)[None]
    run = lambda c: parallel.pmap_train_step(
        setup(c)[1], devices=jax.devices()[:1])(state, images,
                                                 jax.random.key(1))
    f32, m32 = run(config)
    config.model.dtype = 'bfloat16'
    b16, m16 = run(config)
    for leaf in jax.tree.leaves((b16.params, b16.opt_state, b16.ema_params)):
      if jnp.issubdtype(leaf.dtype, jnp.floating):  # not Adam's step count
        self.assertEqual(leaf.dtype, jnp.float32)
    np.testing.assert_allclose(m16['loss'], m32['loss'], rtol=0.05)
    delta32 = jax.tree.leaves(jax.tree.map(jnp.subtract, f32.params,
                                           state.params))
    delta16 = jax.tree.leaves(jax.tree.map(jnp.subtract, b16.params,
                                           state.params))
    cos = lambda a, b: float(jnp.vdot(a, b) / (jnp.linalg.norm(a) *
                                              jnp.linalg.norm(b) + 1e-30))
    flat32 = jnp.concatenate([d.ravel() for d in delta32])
    flat16 = jnp.concatenate([d.ravel() for d in delta16])
    self.assertGreater(cos(flat32, flat16), 0.9)

  def test_nonfinite_step_keeps_state(self):
    config = tiny.get_config()
    state, step = setup(config)
    images = batches(config, 1, 4)[None].copy()
    images[0, 0, 0, 0, 0, 0] = np.nan
    new, metrics = parallel.pmap_train_step(step, devices=jax.devices()[:1])(
        state, images, jax.random.key(1))
    self.assertEqual(int(metrics['nonfinite'][0]), 1)
    assert_trees_close(self, new.params, state.params, rtol=0, atol=0)
    self.assertEqual(int(new.step), 1)

  def test_loss_groups(self):
    losses_ = jnp.array([1.0, 2.0, 3.0, 4.0])
    labels = jnp.array([0, 1, 9, 5])
    f = jax.pmap(lambda l, y: train.loss_group_metrics(l, y, 10, 4),
                 axis_name=parallel.AXIS, devices=jax.devices()[:1])
    sums, counts = f(losses_[None], labels[None])
    np.testing.assert_array_equal(sums[0], [3.0, 0.0, 4.0, 3.0])
    np.testing.assert_array_equal(counts[0], [2, 0, 1, 1])


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
    full = train.train_and_evaluate(config, os.path.join(root, 'full'))
    config.training.n_iters = 2
    part = os.path.join(root, 'part')
    train.train_and_evaluate(config, part)
    config.training.n_iters = 4
    resumed = train.train_and_evaluate(config, part)
    self.assertEqual(int(resumed.step), 4)
    assert_trees_close(self, resumed, full, rtol=0, atol=0)
    manager = checkpointing.create_manager(part, create=False)
    self.assertEqual(sorted(manager.all_steps()), [2, 4])
    self.assertTrue(os.path.isdir(os.path.join(
        part, 'data_state', 'process_0', 'step_2')))
    # Different data after the restart would give different parameters.
    self.assertFalse(np.allclose(
        jax.tree.leaves(resumed.params)[0],
        jax.tree.leaves(train.create_train_state(
            config, models.create_model(config),
            train.create_optimizer(config), jax.random.key(0)).params)[0]))


class DivergenceTest(absltest.TestCase):

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
      train.train_and_evaluate(self._config(), workdir)
    manager = checkpointing.create_manager(workdir, create=False)
    self.assertEqual(manager.all_steps(), [1])

  def test_skip_nonfinite_counts_and_continues(self):
    config = self._config()
    config.training.skip_nonfinite = True
    workdir = self.create_tempdir().full_path
    state = train.train_and_evaluate(config, workdir)
    self.assertEqual(int(state.step), 4)
    with open(os.path.join(workdir, 'metrics.jsonl')) as f:
      last = [json.loads(l) for l in f][-1]
    self.assertEqual(last['skipped_steps'], 3)


if __name__ == '__main__':
  absltest.main()
