"""The recorded official training and sampling runs fit our models.

testdata/torch_checkpoints/ holds three official training steps and three
official Langevin runs recorded by tools/make_torch_fixture.py (see
parity_notes.json there). These tests need only our networks: the initial
checkpoints import, our forward pass reproduces the official losses from the
recorded draws, the recorded states unflatten onto our parameter trees, and
each recorded sampler step is one Langevin update with our score (each step
from the official state before it, so errors do not compound).
"""

import os

from absl.testing import absltest
from absl.testing import parameterized
import jax.numpy as jnp
import numpy as np

from configs import tiny
from ncsn_jax import models
from ncsn_jax.interop import official_checkpoint
from ncsn_jax.interop import param_mapping
from ncsn_jax.interop import torch_pickle

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'testdata',
                    'torch_checkpoints')


def load(name: str) -> dict:
  return dict(np.load(os.path.join(DATA, name)))


def config_for(kind: str, ref: dict):
  config = tiny.get_config()
  config.model.name, config.model.ema = kind, kind == 'ncsnv2'
  config.data.image_size = 32
  for field in ('ngf', 'num_classes'):
    setattr(config.model, field, int(ref[field]))
  for field in ('sigma_begin', 'sigma_end'):
    setattr(config.model, field, float(ref[field]))
  return config


def imported(kind: str, name: str, ref: dict):
  config = config_for(kind, ref)
  states = torch_pickle.load_pth(os.path.join(DATA, name), 1 << 24)
  state, info = official_checkpoint.convert(config, states)
  model = models.create_model(config)

  def score(params, x, y):
    y = jnp.broadcast_to(jnp.asarray(y, jnp.int32), (x.shape[0],))
    return np.asarray(model.apply({'params': params}, jnp.asarray(x), y),
                      np.float64)

  return config, state, info, score


def unflatten(row, states):
  sizes = [int(np.prod(s[:n])) for s, n in zip(states['shapes'],
                                               states['ndims'])]
  parts = np.split(row, np.cumsum(sizes)[:-1])
  return {k: p.reshape(s[:n]) for k, p, s, n in zip(
      states['keys'], parts, states['shapes'], states['ndims'])}


def assert_close(got, want, rel=1e-5):
  scale = np.abs(want).max()
  np.testing.assert_allclose(got, want, rtol=0, atol=rel * scale)


class TrainFixtureTest(parameterized.TestCase):

  @parameterized.parameters('ncsn', 'ncsnv2')
  def test_init_imports_and_states_fit_the_model(self, kind):
    draws = load(f'{kind}_train_draws.npz')
    states = load(f'{kind}_train_states.npz')
    config, state, info, _ = imported(kind, f'{kind}_train_init.pth', draws)
    self.assertEqual(info['adam'], 'imported')
    self.assertEqual(int(state.opt_state[0].count), 2)
    self.assertEqual(list(states['adam_step']), [3.0, 4.0, 5.0])
    names = ['params', 'exp_avg', 'exp_avg_sq'] + (['ema'] if kind ==
                                                    'ncsnv2' else [])
    for name in names:
      tree = param_mapping.torch_to_flax_params(
          unflatten(states[name][-1], states), state.params)
      self.assertEqual(tree['begin_conv']['kernel'].shape,
                       (3, 3, 3, config.model.ngf))
    after = unflatten(states['params'][0], states)['begin_conv.weight']
    before = np.asarray(state.params['begin_conv']['kernel'])
    self.assertGreater(np.abs(after.transpose(2, 3, 1, 0) - before).max(),
                       0.5 * float(draws['lr']))
    if kind == 'ncsnv2':
      gap = np.abs(np.asarray(state.ema_params['end_conv']['bias']) -
                   np.asarray(state.params['end_conv']['bias'])).max()
      self.assertGreater(gap, 1e-3)

  @parameterized.parameters('ncsn', 'ncsnv2')
  def test_official_first_loss_from_our_model(self, kind):
    draws = load(f'{kind}_train_draws.npz')
    _, state, _, score = imported(kind, f'{kind}_train_init.pth', draws)
    x = draws['dequantized' if kind == 'ncsn' else 'batch'][0]
    labels, z = draws['labels'][0], draws['noise'][0]
    sigma = draws['sigmas'][labels][:, None, None, None]
    s = score(state.params, x + sigma * z, labels)
    per_example = 0.5 * np.sum((sigma * s + z)**2, axis=(1, 2, 3))
    np.testing.assert_allclose(per_example.mean(), draws['losses'][0],
                               rtol=1e-5)
    if kind == 'ncsn':
      np.testing.assert_array_equal(
          draws['batch'] / np.float32(256) * np.float32(255) +
          draws['dequant_u'] / np.float32(256), draws['dequantized'])


class SamplerFixtureTest(absltest.TestCase):

  def test_ncsn_steps(self):
    ref = load('sampler_ncsn.npz')
    _, state, _, score = imported('ncsn', 'ncsn_sampler.pth', dict(
        ngf=2, num_classes=3, sigma_begin=1.0, sigma_end=0.01))
    x, t = ref['states'], int(ref['n_steps_each'])
    np.testing.assert_array_equal(x[0], ref['x0'])
    np.testing.assert_array_equal(np.clip(x, 0, 1), ref['returned'])
    for k in range(len(x) - 1):
      a = ref['step_sizes'][k // t]
      want = x[k] + a * score(state.params, x[k], k // t) + np.sqrt(
          2 * a) * ref['noise'][k]
      assert_close(want, x[k + 1])

  def test_ncsnv2_steps_and_denoising(self):
    ref = load('sampler_ncsnv2.npz')
    _, state, _, score = imported('ncsnv2', 'ncsnv2_sampler.pth', dict(
        ngf=2, num_classes=3, sigma_begin=1.0, sigma_end=0.01))
    x, t = ref['score_inputs'], int(ref['n_steps_each'])
    np.testing.assert_array_equal(x[0], ref['x0'])
    for k in range(len(x) - 1):
      a = ref['step_sizes'][k // t]
      want = x[k] + a * score(state.params, x[k], k // t) + np.sqrt(
          2 * a) * ref['noise'][k]
      assert_close(want, x[k + 1])
    final = x[-1] + ref['sigmas'][-1]**2 * score(state.params, x[-1], 2)
    assert_close(final, ref['returned'][0])

  def test_inpainting_steps(self):
    ref = load('inpainting_ncsnv2.npz')
    _, state, _, score = imported('ncsnv2', 'ncsnv2_sampler.pth', dict(
        ngf=2, num_classes=3, sigma_begin=1.0, sigma_end=0.01))
    x, t, half = ref['returned'], int(ref['n_steps_each']), 16
    for k in range(len(x)):
      level = k // t
      known = ref['refer'][..., :half, :] + ref['sigmas'][level] * ref[
          'known_noise'][k]
      assert_close(x[k][..., :half, :], known)
      if k == 0:
        np.testing.assert_array_equal(x[0][..., half:, :],
                                      ref['x0'][..., half:, :])
      else:
        a = ref['step_sizes'][(k - 1) // t]
        prev = x[k - 1] + a * score(state.params, x[k - 1], (k - 1) // t) + (
            np.sqrt(2 * a) * ref['noise'][k - 1])
        assert_close(x[k][..., half:, :], prev[..., half:, :])


if __name__ == '__main__':
  absltest.main()
