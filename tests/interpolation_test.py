"""Tests of interpolation: chains of a row driven by rotated noises."""

from absl.testing import absltest
from configs import tiny
import jax
import jax.numpy as jnp
import numpy as np
from tests import score_models

from ncsn_jax import parallel
from ncsn_jax.sampling import interpolation
from ncsn_jax.sampling import langevin

zero_score = lambda x, y: jnp.zeros_like(x)


def keys_of(key, n):
  return parallel.per_example_keys(key, n)


class InterpolationTest(absltest.TestCase):

  def test_noise_interpolates_between_the_end_chains(self):
    sigmas = jnp.array([2.0, 1.0, 0.5])
    rows, n = 3, 5
    x0 = jax.random.normal(jax.random.key(0), (rows, 2, 2, 1))
    x, traj = interpolation.annealed_langevin_interpolation(
        zero_score, x0, keys_of(jax.random.key(1), rows), sigmas, 4, 0.01, n,
        record_every=4)
    self.assertEqual(x.shape, (rows * n, 2, 2, 1))
    self.assertEqual(traj.shape, (3, rows * n, 2, 2, 1))
    drift = np.asarray(x).reshape(rows, n, -1) - np.asarray(x0).reshape(
        rows, 1, -1)
    theta = np.linspace(0, np.pi / 2, n)
    for k in range(n):
      np.testing.assert_allclose(
          drift[:, k], np.cos(theta[k]) * drift[:, 0] +
          np.sin(theta[k]) * drift[:, -1], atol=1e-5)
    self.assertGreater(np.abs(drift[0, 0] - drift[1, 0]).min(), 0)
    # theta = 0 is chain p alone: the same as a single-chain row.
    alone, _ = interpolation.annealed_langevin_interpolation(
        zero_score, x0, keys_of(jax.random.key(1), rows), sigmas, 4, 0.01, 1)
    np.testing.assert_array_equal(np.asarray(x).reshape(rows, n, 2, 2, 1)[
        :, 0], alone)

  def test_every_chain_has_unit_variance_noise(self):
    x0 = jnp.zeros((4000, 1))
    x, _ = interpolation.annealed_langevin_interpolation(
        zero_score, x0, keys_of(jax.random.key(0), 4000), jnp.array([1.0]), 1,
        0.5, 4)
    per_chain = np.asarray(x).reshape(4000, 4)
    np.testing.assert_allclose(per_chain.var(axis=0), 1.0, atol=0.07)

  def test_pmap_matches_one_device(self):
    config = tiny.get_config()
    config.sampling.n_interpolations = 3
    config.sampling.record_every = 4
    model = score_models.PixelModel(config.model.num_classes)
    x0 = langevin.init_samples(keys_of(jax.random.key(0), 4), config)
    params = model.init(jax.random.key(1), x0, jnp.zeros(4, jnp.int32))[
        'params']
    sample_fn = interpolation.get_interpolation_sampler(config, model)
    keys = keys_of(jax.random.key(3), 4)
    single, traj_single = jax.jit(sample_fn)(params, x0, keys)
    multi, traj_multi = parallel.pmap_sampler(sample_fn)(params, x0, keys)
    self.assertEqual(multi.shape, (12, 8, 8, 3))
    np.testing.assert_allclose(multi, single, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(traj_multi, traj_single, rtol=1e-5, atol=1e-5)



if __name__ == '__main__':
  absltest.main()
