"""The official annealed Langevin runs, state for state, through our samplers.

The fixture holds tiny official models (ngf 2, L = 3 levels 1 .. 0.01,
T = 2 steps each) and runs of the official samplers with every draw and
state: NCSN v1's `anneal_Langevin_dynamics` (step eps (sigma_i /
sigma_L)^2, no denoising, returns the clamped states before each update),
NCSNv2's with `final_only` and the denoising step, and NCSNv2's inpainting
(right half missing). We import the models with the checkpoint importer,
build our samplers with `get_sampler` / `get_inpainting_sampler` from the
project's config files (sizes and T from the fixture), pass the recorded
noise through the `noise_fn` / `known_noise_fn` hooks and compare.

The score network is wrapped to record its inputs and labels (the
official NCSNv2 and inpainting fixtures record exactly those), so every
official state is compared with the state our sampler really evaluated.

Our trajectory (`record_every=1`) holds the state after each update; the
official functions return other views of the same chain (noted per test).
Tolerance: float32 round-off, in ulps of each state's largest magnitude.
Round-off compounds over the L*T = 6 steps: the first level's step
alpha = 0.2 (v1) multiplies score differences of a few ulps.
"""


from absl.testing import absltest
from configs import cifar10_ncsn
from configs import cifar10_ncsnv2
import jax
import jax.numpy as jnp
import numpy as np
from tests import parity_common as pc

from ncsn_jax import models
from ncsn_jax.models import score
from ncsn_jax.sampling import inpainting
from ncsn_jax.sampling import langevin

STATE_ULPS = 16  # Of each state's largest magnitude (measured: <= 6).
HALF = 16  # Known columns of the right_half mask at 32 px.


class RecordingModel:
  """A flax model whose `apply` also records (x, labels) of every call."""

  def __init__(self, model):
    self.model, self.calls = model, []

  def _record(self, x, labels):
    self.calls.append((np.asarray(x), np.asarray(labels)))

  def apply(self, variables, x, labels):
    jax.debug.callback(self._record, x, labels, ordered=True)
    return self.model.apply(variables, x, labels)


def config_for(kind: str, ref: dict):
  """The project's sampling config at the fixture's sizes (L = 3, T)."""
  config = (cifar10_ncsn if kind == 'ncsn' else cifar10_ncsnv2).get_config()
  config.model.ngf, config.model.num_classes = 2, 3
  config.model.sigma_begin, config.model.sigma_end = 1.0, 0.01
  config.sampling.n_steps_each = int(ref['n_steps_each'])
  config.sampling.record_every = 1
  return config


def recorded(draws: np.ndarray, fill=None):
  """noise_fn giving draw t of `draws` `[L*T, B, ...]`.

  With `fill`, the draws cover the known left columns only and the rest
  is `fill` (the sampler must not use it).
  """
  draws = jnp.asarray(draws)
  if fill is not None:
    pad = [(0, 0)] * (draws.ndim - 2) + [(0, HALF), (0, 0)]
    draws = jnp.pad(draws, pad, constant_values=fill)

  def noise_fn(keys, t, x):
    del keys
    return draws[t].astype(x.dtype)

  return noise_fn


def imported_params(config, name: str):
  state, info = pc.import_official(config, name)
  assert info['format'] == config.model.name, info
  return state.ema_params if config.model.ema else state.params


def chain_keys(n: int) -> jax.Array:
  return jax.random.split(jax.random.key(0), n)


def assert_states(test, got, want, what: str):
  """Each state `[S, B, ...]` within STATE_ULPS of its own largest value."""
  got, want = np.asarray(got), np.asarray(want)
  test.assertEqual(got.shape, want.shape, what)
  for k in range(len(want)):
    pc.assert_ulps(test, got[k], want[k], STATE_ULPS, f'{what} {k}')


class SamplerParityTest(absltest.TestCase):

  def test_config_files_hold_the_official_sampler_settings(self):
    for kind, name in (('ncsn', 'sampler_ncsn.npz'),
                       ('ncsnv2', 'sampler_ncsnv2.npz')):
      ref = pc.load(name)
      config = config_for(kind, ref)
      self.assertEqual(config.sampling.step_lr, float(ref['step_lr']), kind)
      self.assertEqual(config.sampling.denoise, kind == 'ncsnv2', kind)
      np.testing.assert_allclose(score.get_sigmas(config), ref['sigmas'],
                                 rtol=pc.EPS32)
      # Data and model space coincide: x0 and the references need no map.
      self.assertFalse(config.data.rescaled or config.data.logit_transform)

  def test_ncsn_v1(self):
    ref = pc.load('sampler_ncsn.npz')
    config = config_for('ncsn', ref)
    model = RecordingModel(models.create_model(config))
    sample_fn = langevin.get_sampler(config, model, recorded(ref['noise']))
    x, trajectory = jax.jit(sample_fn)(
        imported_params(config, 'ncsn_sampler.pth'), jnp.asarray(ref['x0']),
        chain_keys(len(ref['x0'])))
    inputs = np.stack([c[0] for c in model.calls])
    labels = np.stack([c[1] for c in model.calls])
    # The official states are the chain before each update, unclamped:
    # exactly the score network's inputs.
    assert_states(self, inputs, ref['states'], 'state before step')
    np.testing.assert_array_equal(inputs[0], ref['x0'])
    np.testing.assert_array_equal(
        labels, np.repeat(np.arange(3), 2)[:, None] * np.ones((1, 2), int))
    # It returns them clamped; our trajectory holds the states after each
    # update, i.e. the official states shifted by one (plus the last).
    before = np.concatenate([ref['x0'][None], trajectory[:-1]])
    assert_states(self, np.clip(before, 0, 1), ref['returned'], 'returned')
    assert_states(self, trajectory[:-1], ref['states'][1:], 'state after')
    np.testing.assert_array_equal(x, trajectory[-1])
    self.assertGreater(np.abs(ref['states']).max(), 1.5)  # Clamping shows.

  def test_ncsnv2_final_only_with_denoising(self):
    ref = pc.load('sampler_ncsnv2.npz')
    config = config_for('ncsnv2', ref)
    model = RecordingModel(models.create_model(config))
    sample_fn = langevin.get_sampler(config, model, recorded(ref['noise']))
    x, trajectory = jax.jit(sample_fn)(
        imported_params(config, 'ncsnv2_sampler.pth'),
        jnp.asarray(ref['x0']), chain_keys(len(ref['x0'])))
    inputs = np.stack([c[0] for c in model.calls])
    labels = np.stack([c[1] for c in model.calls])
    # L*T Langevin calls and one denoising call at label L - 1.
    np.testing.assert_array_equal(labels, ref['score_labels'])
    assert_states(self, inputs, ref['score_inputs'], 'score input')
    # final_only returns the denoised state only: our sample, and the last
    # entry of our trajectory (the states after each update, then it).
    assert_states(self, x[None], ref['returned'], 'denoised')
    assert_states(self, trajectory[:-1], ref['score_inputs'][1:], 'state')
    np.testing.assert_array_equal(trajectory[-1], x)
    self.assertGreater(np.abs(ref['returned'][0] -
                              ref['score_inputs'][-1]).max(), 1e-3)

  def test_ncsnv2_inpainting(self):
    ref = pc.load('inpainting_ncsnv2.npz')
    config = config_for('ncsnv2', ref)
    config.sampling.denoise = False  # The official inpainting has none.
    self.assertEqual(config.sampling.inpainting_mask, 'right_half')
    mask = inpainting.make_mask(config.sampling.inpainting_mask,
                                ref['x0'].shape[1:])
    np.testing.assert_array_equal(mask[:, :HALF], 1)
    np.testing.assert_array_equal(mask[:, HALF:], 0)
    model = RecordingModel(models.create_model(config))
    sample_fn = inpainting.get_inpainting_sampler(
        config, model, recorded(ref['noise']),
        recorded(ref['known_noise'], fill=1e3))
    n = len(ref['x0'])  # One completion per reference: chain r = image r.
    reference = score.data_transform(jnp.asarray(ref['refer']), config)
    x, trajectory = jax.jit(sample_fn)(
        imported_params(config, 'ncsnv2_sampler.pth'),
        jnp.asarray(ref['x0']), chain_keys(n), reference,
        jnp.broadcast_to(mask, ref['x0'].shape))
    inputs = np.stack([c[0] for c in model.calls])
    # The official returns, per step, the state with the known half
    # re-noised: the score network's input.
    assert_states(self, inputs, ref['returned'], 'score input')
    # Our trajectory is the state after each update, before the next
    # re-noising: its missing half is the next official state's.
    assert_states(self, trajectory[:-1, :, :, HALF:],
                  ref['returned'][1:, :, :, HALF:], 'missing half')
    # Our result carries the reference exactly in the known half (the
    # official returns no state after the last update).
    np.testing.assert_array_equal(x[:, :, :HALF], ref['refer'][:, :, :HALF])
    np.testing.assert_array_equal(x[:, :, HALF:], trajectory[-1, :, :, HALF:])


if __name__ == '__main__':
  absltest.main()
