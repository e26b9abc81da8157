"""Tests of the annealed Langevin core with exact scores (no training)."""

from absl.testing import absltest
from absl.testing import parameterized
from configs import tiny
import jax
import jax.numpy as jnp
import numpy as np
from tests import compiles
from tests import score_models

from ncsn_jax import models
from ncsn_jax import parallel
from ncsn_jax.models import score as score_lib
from ncsn_jax.sampling import langevin

MIX_WEIGHTS = jnp.array([0.2, 0.8])
MIX_MEANS = jnp.array([[-5.0, -5.0], [5.0, 5.0]])


def mixture_score(sigmas):
  """Exact score of 1/5 N((-5,-5), I) + 4/5 N((5,5), I) convolved with N(0, s^2)."""

  def log_density(x, var):
    sq = jnp.sum((x[None, :] - MIX_MEANS)**2, axis=-1)
    return jax.nn.logsumexp(jnp.log(MIX_WEIGHTS) - 0.5 * sq / var)

  def score_fn(x, y):
    var = 1.0 + sigmas[y]**2
    return jax.vmap(jax.grad(log_density))(x, var)

  return score_fn


def keys_of(key, n):
  return parallel.per_example_keys(key, n)


def fraction_in_upper_mode(x):
  return float(np.mean(np.asarray(x).sum(axis=-1) > 0))


class AnnealedLangevinTest(parameterized.TestCase):

  def test_step_rule_is_exact(self):
    # With a constant score of 1, increment t is alpha_c + sqrt(2 alpha_c) z
    # with z drawn from fold_in(fold_in(key, i), t) for example i.
    sigmas = jnp.array([4.0, 2.0, 1.0])
    key = jax.random.key(7)
    x0 = jnp.zeros((3, 2))
    ones = lambda x, y: jnp.ones_like(x)
    _, traj = langevin.annealed_langevin(ones, x0, keys_of(key, 3), sigmas, 2,
                                         0.01, record_every=1)
    states = np.concatenate([np.zeros((1, 3, 2)), np.asarray(traj)])
    for t in range(6):
      alpha = 0.01 * (float(sigmas[t // 2]) / 1.0)**2
      keys = parallel.per_example_keys(key, 3)
      z = np.stack([np.asarray(jax.random.normal(jax.random.fold_in(k, t),
                                                 (2,))) for k in keys])
      np.testing.assert_allclose(states[t + 1] - states[t],
                                 alpha + np.sqrt(2 * alpha) * z, rtol=1e-5,
                                 atol=1e-6)

  @parameterized.parameters((False, 12), (True, 13))
  def test_number_of_score_evaluations(self, denoise, expected):
    calls = []

    def score_fn(x, y):
      jax.debug.callback(lambda: calls.append(1))
      return -x

    run = jax.jit(lambda x0, keys: langevin.annealed_langevin(
        score_fn, x0, keys, jnp.array([3.0, 2.0, 1.0]), 4, 0.01, denoise))
    jax.block_until_ready(run(jnp.zeros((2, 2)), keys_of(jax.random.key(0),
                                                         2)))
    self.assertLen(calls, expected)

  def test_denoising_step_and_labels(self):
    seen = []

    def score_fn(x, y):
      jax.debug.callback(lambda y: seen.append(int(y[0])), y)
      return jnp.full_like(x, 2.0)

    sigmas = jnp.array([3.0, 0.5])
    x0 = jnp.zeros((1, 1))
    run = lambda d: langevin.annealed_langevin(
        score_fn, x0, keys_of(jax.random.key(0), 1), sigmas, 2, 0.01,
        denoise=d)[0]
    undenoised = run(False)
    seen.clear()
    denoised = run(True)
    jax.effects_barrier()
    self.assertEqual(seen, [0, 0, 1, 1, 1])
    np.testing.assert_allclose(denoised, undenoised + 0.25 * 2.0, rtol=1e-6)

  def test_no_clipping_inside_the_chain(self):
    x0 = jnp.full((4, 3), 5.0)
    x, _ = langevin.annealed_langevin(lambda x, y: jnp.zeros_like(x), x0,
                                      keys_of(jax.random.key(0), 4),
                                      jnp.array([1.0]), 3, 1e-4)
    self.assertGreater(float(x.min()), 4.5)

  def test_thinned_trajectory(self):
    sigmas = jnp.array([3.0, 2.0, 1.0])
    x0 = jnp.zeros((2, 2))
    score = lambda x, y: -x
    keys = keys_of(jax.random.key(0), 2)
    final, _ = langevin.annealed_langevin(score, x0, keys, sigmas, 5, 0.01)
    full_final, full = langevin.annealed_langevin(
        score, x0, keys, sigmas, 5, 0.01, record_every=1)
    _, thin = langevin.annealed_langevin(score, x0, keys, sigmas, 5, 0.01,
                                         record_every=4)
    self.assertEqual(full.shape, (15, 2, 2))
    self.assertEqual(thin.shape, (3, 2, 2))
    np.testing.assert_allclose(thin, full[3::4][:3], rtol=1e-6)
    np.testing.assert_allclose(full[-1], final, rtol=1e-6)
    np.testing.assert_allclose(full_final, final, rtol=1e-6)
    _, with_denoise = langevin.annealed_langevin(
        score, x0, keys, sigmas, 5, 0.01, denoise=True, record_every=5)
    self.assertEqual(with_denoise.shape, (4, 2, 2))

  def test_program_size_does_not_grow_with_levels_and_steps(self):
    def n_eqns(levels, steps):
      fn = lambda x0, keys, sigmas: langevin.annealed_langevin(
          lambda x, y: -x, x0, keys, sigmas, steps, 0.01, denoise=True)
      jaxpr = jax.make_jaxpr(fn)(jnp.zeros((2, 2)),
                                 keys_of(jax.random.key(0), 2),
                                 jnp.ones(levels))
      return len(str(jaxpr).splitlines())

    self.assertEqual(n_eqns(2, 1), n_eqns(1000, 50))

  def test_gaussian_mean_and_variance(self):
    mu, s2 = jnp.array([2.0, -1.0]), jnp.array([0.5, 2.0])
    sigmas = jnp.asarray(score_lib.make_sigmas(5.0, 0.01, 10))
    score = lambda x, y: -(x - mu) / (s2 + sigmas[y][:, None]**2)
    x0 = jax.random.uniform(jax.random.key(1), (8000, 2), minval=-8,
                            maxval=8)
    x, _ = jax.jit(lambda x0: langevin.annealed_langevin(
        score, x0, keys_of(jax.random.key(2), 8000), sigmas, 100, 2e-4))(x0)
    np.testing.assert_allclose(x.mean(0), mu, atol=0.06)
    np.testing.assert_allclose(x.var(0), s2, rtol=0.08)

  def test_annealing_recovers_mixture_weights_plain_langevin_does_not(self):
    # The paper's toy levels (10 -> 0.1, eps 0.1) diverge; 20 -> 0.7 works.
    # eps = 0.1 in the paper's x + eps/2 s + sqrt(eps) z form is
    # step_lr = 0.05 in ours.
    sigmas = jnp.asarray(score_lib.make_sigmas(20.0, 0.7, 10))
    score = mixture_score(sigmas)
    x0 = jax.random.uniform(jax.random.key(0), (3000, 2), minval=-8,
                            maxval=8)
    annealed, _ = jax.jit(lambda x0: langevin.annealed_langevin(
        score, x0, keys_of(jax.random.key(1), 3000), sigmas, 100, 0.05))(x0)
    plain = jax.jit(lambda x0: langevin.langevin(
        mixture_score(jnp.zeros(1)), x0, keys_of(jax.random.key(2), 3000),
        0.1, 1000))(x0)
    self.assertAlmostEqual(fraction_in_upper_mode(annealed), 0.8, delta=0.05)
    self.assertGreater(abs(fraction_in_upper_mode(plain) - 0.8), 0.1)


class CrossPaperSamplerTest(parameterized.TestCase):
  """Either paper's network runs under either paper's sampler settings."""

  @parameterized.product(model_name=('ncsn', 'ncsnv2'),
                         settings=((3, 2e-5, False), (2, 6.2e-6, True)))
  def test_sampler_settings_from_config(self, model_name, settings):
    steps, step_lr, denoise = settings
    config = tiny.get_config()
    config.model.name = model_name
    config.sampling.n_steps_each = steps
    config.sampling.step_lr = step_lr
    config.sampling.denoise = denoise
    model = models.create_model(config)
    s = config.data.image_size
    x0 = jnp.full((2, s, s, config.data.channels), 0.5)
    params = model.init(jax.random.key(0), x0,
                        jnp.zeros((2,), jnp.int32))['params']
    calls = []

    class Counting:  # Counts traced score calls (one per scan body + final).

      def apply(self, variables, x, y):
        calls.append(y)
        return model.apply(variables, x, y)

    sample_fn = langevin.get_sampler(config, Counting())
    keys = keys_of(jax.random.key(1), 2)
    x, _ = jax.jit(sample_fn)(params, x0, keys)
    self.assertEqual(x.shape, x0.shape)
    self.assertTrue(np.isfinite(np.asarray(x)).all())
    self.assertLen(calls, 2 if denoise else 1)
    # The chain really used the config's step size: a smaller eps moves less.
    config.sampling.step_lr = step_lr / 100
    y, _ = jax.jit(langevin.get_sampler(config, model))(params, x0, keys)
    self.assertLess(float(jnp.abs(y - x0).mean()),
                    float(jnp.abs(x - x0).mean()))


class HookTest(absltest.TestCase):

  def test_recorded_noise_through_the_noise_hook(self):
    # Recorded draws z[t] fed through `noise_fn` give exactly the update
    # x + alpha_c s(x, c) + sqrt(2 alpha_c) z[t], then the denoising step.
    sigmas = jnp.array([3.0, 1.5, 0.5])
    b, steps, eps = 3, 2, 0.01
    z = jax.random.normal(jax.random.key(4), (3 * steps, b, 2))
    x0 = jax.random.normal(jax.random.key(5), (b, 2))
    score = lambda x, y: -x / (1.0 + sigmas[y][:, None]**2)
    x, traj = langevin.annealed_langevin(
        score, x0, keys_of(jax.random.key(0), b), sigmas, steps, eps,
        denoise=True, record_every=1, noise_fn=lambda keys, t, x: z[t])
    expected, s2 = np.asarray(x0, np.float64), np.asarray(sigmas)**2
    for t in range(3 * steps):
      c = t // steps
      alpha = eps * s2[c] / s2[-1]
      expected = (expected - alpha * expected / (1 + s2[c]) +
                  np.sqrt(2 * alpha) * np.asarray(z[t]))
      np.testing.assert_allclose(traj[t], expected, rtol=1e-5, atol=1e-6)
    expected = expected - s2[-1] * expected / (1 + s2[-1])
    np.testing.assert_allclose(x, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(traj[-1], x, rtol=0, atol=0)

  def test_default_noise_is_the_default_hook(self):
    keys = keys_of(jax.random.key(2), 4)
    run = lambda fn: langevin.annealed_langevin(
        lambda x, y: -x, jnp.zeros((4, 3)), keys, jnp.array([2.0, 1.0]), 3,
        0.1, noise_fn=fn)[0]
    np.testing.assert_array_equal(run(None), run(langevin.default_noise))

  def test_projection_runs_before_every_update_with_its_sigma(self):
    # With zero score and zero noise the state after step t is what the
    # projection made of it: sigma_c of that step's level.
    sigmas = jnp.array([4.0, 2.0, 1.0])
    zero = lambda *args: jnp.zeros_like(args[-1])
    _, traj = langevin.annealed_langevin(
        lambda x, y: jnp.zeros_like(x), jnp.zeros((2, 1)),
        keys_of(jax.random.key(0), 2), sigmas, 2, 0.1, record_every=1,
        noise_fn=zero, project_fn=lambda keys, t, sigma, x: x * 0 + sigma)
    np.testing.assert_allclose(traj[:, 0, 0], [4, 4, 2, 2, 1, 1])


class ParallelSamplerTest(absltest.TestCase):

  def test_pmap_over_4_devices_matches_one_device(self):
    self.assertEqual(jax.local_device_count(), 4)
    config = tiny.get_config()
    model = models.create_model(config)
    keys = keys_of(jax.random.key(3), 8)
    x0 = langevin.init_samples(keys_of(jax.random.key(0), 8), config)
    params = model.init(jax.random.key(1), x0, jnp.zeros(8, jnp.int32))[
        'params']
    sample_fn = langevin.get_sampler(config, model)
    single, _ = jax.jit(sample_fn)(params, x0, keys)
    p_sample = parallel.pmap_sampler(sample_fn)
    multi, _ = p_sample(params, x0, keys)
    np.testing.assert_allclose(multi, single, rtol=1e-5, atol=1e-5)
    config.sampling.record_every = 3
    sample_fn = langevin.get_sampler(config, model)
    _, traj_single = jax.jit(sample_fn)(params, x0, keys)
    _, traj_multi = parallel.pmap_sampler(sample_fn)(params, x0, keys)
    self.assertEqual(traj_multi.shape, traj_single.shape)
    np.testing.assert_allclose(traj_multi, traj_single, rtol=1e-5, atol=1e-5)

  def test_a_built_sampler_compiles_once(self):
    config = tiny.get_config()
    model = score_models.PixelModel(config.model.num_classes)
    x0 = langevin.init_samples(keys_of(jax.random.key(0), 4), config)
    params = model.init(jax.random.key(1), x0, jnp.zeros(4, jnp.int32))[
        'params']
    with compiles.counting() as counts:
      p_sample = parallel.pmap_sampler(langevin.get_sampler(config, model))
      for i in range(3):
        p_sample(params, x0, keys_of(jax.random.key(i), 4))
    self.assertEqual(counts[compiles.PMAP], 1)
    with compiles.counting() as counts:
      for i in range(2):  # Built anew: compiled anew.
        parallel.pmap_sampler(langevin.get_sampler(config, model))(
            params, x0, keys_of(jax.random.key(i), 4))
    self.assertEqual(counts[compiles.PMAP], 2)

  def test_init_samples(self):
    config = tiny.get_config()
    keys = keys_of(jax.random.key(0), 6)
    x0 = langevin.init_samples(keys, config)
    self.assertEqual(x0.shape, (6, 8, 8, 3))
    self.assertTrue(((x0 >= 0) & (x0 < 1)).all())
    # Example i's start depends on its key only.
    np.testing.assert_array_equal(x0[3:],
                                  langevin.init_samples(keys[3:], config))
    data = jnp.full((6, 8, 8, 3), 0.5)
    noised = langevin.init_samples(keys, config, data=data)
    self.assertAlmostEqual(float(jnp.std(noised)), 1.0, delta=0.1)


if __name__ == '__main__':
  absltest.main()
