"""Tests of the pure train step, inside and outside pmap, and its donation.

What depends on the network (one device against four, bfloat16 compute)
runs the tiny RefineNet, as do the tests that reuse its programs (non-finite
steps, donation). The step's own rules (the EMA, k steps per call, gradient
accumulation, injected draws) run the per-pixel network of
`tests/score_models.py`: its programs compile in about a second, the
RefineNet's in about ten.
"""

import functools

from absl.testing import absltest
from configs import tiny
import jax
import jax.numpy as jnp
import numpy as np
from tests import score_models

from ncsn_jax import config_checks
from ncsn_jax import models
from ncsn_jax import parallel
from ncsn_jax import train_state
from ncsn_jax.models import score
from ncsn_jax.training import loop
from ncsn_jax.training import losses
from ncsn_jax.training import step as step_lib


def assert_trees_close(test, a, b, rtol=1e-5, atol=1e-6):
  flat_a, tree_a = jax.tree.flatten(a)
  flat_b, tree_b = jax.tree.flatten(b)
  test.assertEqual(tree_a, tree_b)
  for x, y in zip(flat_a, flat_b):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol,
                               atol=atol)


def setup(config, model=None, **loss_kwargs):
  """(state, the step's kwargs) for `model` (default: the config's)."""
  model = model or models.create_model(config)
  tx = train_state.create_optimizer(config)
  loss_fn = losses.get_loss_fn(config, model, **loss_kwargs)
  state = train_state.create_train_state(config, model, tx, jax.random.key(0))
  kwargs = dict(config=config, loss_fn=loss_fn, tx=tx)
  return state, kwargs


def batches(config, k, n):
  shape = (k, n, config.data.image_size, config.data.image_size,
           config.data.channels)
  return np.asarray(jax.random.uniform(jax.random.key(5), shape))


_PROGRAMS = {}


def pmapped_step(kwargs, state, devices=None):
  """The pmapped multi-step of `setup`'s kwargs (no injected draws), built
  once per config, network (the structure of `state`) and devices in this
  module: equal ones give equal programs, which are then neither traced
  nor looked up again.

  The program holds a copy of the config: it is traced again for each new
  number of steps per call, after the tests have changed their config."""
  key = (kwargs['config'].to_json(), jax.tree.structure(state),
         None if devices is None else tuple(d.id for d in devices))
  if key not in _PROGRAMS:
    config = kwargs['config'].copy_and_resolve_references()
    _PROGRAMS[key] = parallel.pmap_train_step(functools.partial(
        step_lib.multi_train_step, axis_name=parallel.AXIS,
        **dict(kwargs, config=config)), devices=devices)
  return _PROGRAMS[key]


def run_pmapped(kwargs, state, images, devices=None):
  """k steps `[k, B, ...]` of the pmapped multi-step from a host state.

  The train key is key(1): step s draws from fold_in(fold_in(key, s), i).
  """
  key = jax.random.key(1)
  p_train = pmapped_step(kwargs, state, devices)
  k, n = images.shape[:2]
  keys = loop.train_keys(key, int(state.step), k, n)
  new, metrics = p_train(parallel.replicate(state, devices), images, keys)
  return jax.device_get(parallel.unreplicate(new)), metrics


ONE = jax.devices()[:1]


def tiny_config():
  """The tiny config with one EMA rate (the EMA test's, far from 1) and one
  batch of 8 for every pmapped step here: tests then share their compiled
  programs."""
  config = tiny.get_config()
  config.model.ema_rate = 0.9
  config.training.batch_size = 8
  return config


class TrainStepTest(absltest.TestCase):

  def test_ema_update_formula(self):
    config = tiny_config()
    config.model.ema_rate = 0.9
    state, kwargs = setup(config, score_models.pixel_model(config))
    images = batches(config, 1, 8)
    new, _ = run_pmapped(kwargs, state, images, devices=ONE)
    expected = jax.tree.map(lambda e, p: 0.9 * e + 0.1 * p, state.ema_params,
                            new.params)
    assert_trees_close(self, new.ema_params, expected)
    self.assertEqual(int(new.step), 1)
    config.model.ema = False
    state, kwargs = setup(config, score_models.pixel_model(config))
    new, _ = run_pmapped(kwargs, state, images, devices=ONE)
    assert_trees_close(self, new.ema_params, new.params, rtol=0, atol=0)

  def test_four_devices_equal_one_device_and_no_pmap(self):
    self.assertEqual(jax.local_device_count(), 4)
    config = tiny_config()
    state, kwargs = setup(config)
    # Two steps of B=8, a call each: the one-step programs of the other
    # tests (test_jitted_steps_equal_single_steps checks calls of 2 steps).
    images = batches(config, 2, 8)
    s1, s4, m1, m4 = state, state, [], []
    for i in range(2):
      s1, m = run_pmapped(kwargs, s1, images[i:i + 1], devices=ONE)
      m1.append(m)
      s4, m = run_pmapped(kwargs, s4, images[i:i + 1])
      m4.append(m)
    assert_trees_close(self, s4, s1, rtol=1e-4, atol=1e-6)
    for a, b in zip(m4, m1):
      np.testing.assert_allclose(a['loss'], b['loss'], rtol=1e-5)
      np.testing.assert_array_equal(a['group_counts'], b['group_counts'])
    # The same step outside pmap (axis_name=None), step by step.
    plain = jax.jit(functools.partial(step_lib.train_step, **kwargs))
    s0 = state
    for i in range(2):
      keys = parallel.per_example_keys(
          jax.random.fold_in(jax.random.key(1), i), 8)
      s0, m0 = plain(s0, images[i], keys)
      np.testing.assert_allclose(m0['loss'], m1[i]['loss'][0], rtol=1e-5)
    assert_trees_close(self, s0, s1, rtol=1e-4, atol=1e-6)

  def test_jitted_steps_equal_single_steps(self):
    # The shapes of the EMA and accumulation tests: their one-step program
    # is reused.
    config = tiny_config()
    state, kwargs = setup(config, score_models.pixel_model(config))
    images = batches(config, 2, 8)
    scanned, _ = run_pmapped(kwargs, state, images, devices=ONE)
    single = state
    for i in range(2):
      single, _ = run_pmapped(kwargs, single, images[i:i + 1], devices=ONE)
    assert_trees_close(self, scanned, single)
    self.assertEqual(int(scanned.step), 2)

  def test_gradient_accumulation_equals_full_batch(self):
    config = tiny_config()
    state, kwargs = setup(config, score_models.pixel_model(config))
    images = batches(config, 1, 8)
    full, m_full = run_pmapped(kwargs, state, images, devices=ONE)
    config.training.grad_accum_steps = 4
    _, accum_kwargs = setup(config, score_models.pixel_model(config))
    accum, m_accum = run_pmapped(accum_kwargs, state, images, devices=ONE)
    assert_trees_close(self, accum, full, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(m_accum['loss'], m_full['loss'], rtol=1e-5)
    config.training.grad_accum_steps = 3  # Checked with the config.
    with self.assertRaisesRegex(ValueError, 'grad_accum_steps=3'):
      config_checks.check_config(config, 'train')

  def test_bfloat16_compute_close_to_float32(self):
    config = tiny_config()
    state, kwargs = setup(config)
    images = batches(config, 1, 8)
    f32, m32 = run_pmapped(kwargs, state, images, devices=ONE)
    config.model.dtype = 'bfloat16'
    b16, m16 = run_pmapped(setup(config)[1], state, images, devices=ONE)
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
    config = tiny_config()
    state, kwargs = setup(config)
    images = batches(config, 1, 8).copy()
    images[0, 0, 0, 0, 0] = np.nan
    new, metrics = run_pmapped(kwargs, state, images, devices=ONE)
    self.assertEqual(int(metrics['nonfinite'][0]), 1)
    assert_trees_close(self, new.params, state.params, rtol=0, atol=0)
    self.assertEqual(int(new.step), 1)

  def test_loss_groups(self):
    losses_ = jnp.array([1.0, 2.0, 3.0, 4.0])
    labels = jnp.array([0, 1, 9, 5])
    sums, counts = step_lib.loss_group_metrics(losses_, labels, 10, 4)
    np.testing.assert_array_equal(sums, [3.0, 0.0, 4.0, 3.0])
    np.testing.assert_array_equal(counts, [2, 0, 1, 1])
    # Under pmap with the axis, summed over devices.
    f = jax.pmap(lambda l, y: step_lib.loss_group_metrics(
        l, y, 10, 4, parallel.AXIS), axis_name=parallel.AXIS)
    sums, counts = f(losses_.reshape(4, 1), labels.reshape(4, 1))
    np.testing.assert_array_equal(sums[0], [3.0, 0.0, 4.0, 3.0])
    np.testing.assert_array_equal(counts[2], [2, 0, 1, 1])


class InjectionTest(absltest.TestCase):

  def test_recorded_draws_through_the_real_train_step(self):
    # A perturb_fn returning given labels and noise drives the real loss and
    # train step: the step's loss is the DSM loss of exactly those draws.
    config = tiny_config()
    sigmas = np.asarray(score.get_sigmas(config))
    labels = jnp.array([0, 3, 1, 2], jnp.int32)
    z = jax.random.normal(jax.random.key(9), (4, 8, 8, 3))
    recorded = lambda keys, x, sigmas: (labels, z)
    model = score_models.pixel_model(config)
    state, kwargs = setup(config, model, perturb_fn=recorded)
    images = batches(config, 1, 4)
    _, metrics = jax.jit(functools.partial(step_lib.train_step, **kwargs))(
        state, images[0], parallel.per_example_keys(jax.random.key(0), 4))
    x = images[0] * 1.0  # tiny: no rescaling, no logit.
    s = sigmas[np.asarray(labels)][:, None, None, None]
    x_tilde = x + s * np.asarray(z)
    scores = model.apply({'params': state.params}, x_tilde, labels)
    expected = np.mean(0.5 * np.sum(
        (np.asarray(scores) + np.asarray(z) / s)**2, axis=(1, 2, 3)) *
                       s[:, 0, 0, 0]**2)
    np.testing.assert_allclose(metrics['loss'], expected, rtol=1e-4)
    np.testing.assert_array_equal(metrics['group_counts'], [1, 1, 1, 1])


class DonationTest(absltest.TestCase):

  def test_the_pmapped_step_donates_its_state(self):
    config = tiny_config()
    state, kwargs = setup(config)
    p_train = pmapped_step(kwargs, state)  # TrainStepTest's 4-device one.
    replicated = parallel.replicate(state)
    images = batches(config, 1, 8)
    new, _ = p_train(replicated, images, loop.train_keys(jax.random.key(1),
                                                         0, 1, 8))
    self.assertTrue(all(x.is_deleted() for x in jax.tree.leaves(replicated)))
    self.assertFalse(any(x.is_deleted() for x in jax.tree.leaves(new)))
    self.assertEqual(int(parallel.unreplicate(new).step), 1)


if __name__ == '__main__':
  absltest.main()
