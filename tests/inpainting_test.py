"""Tests of inpainting: masks, the known-pixel projection, its hooks."""

from absl.testing import absltest
from absl.testing import parameterized
from configs import tiny
import jax
import jax.numpy as jnp
import numpy as np
from tests import score_models

from ncsn_jax import parallel
from ncsn_jax.models import score as score_lib
from ncsn_jax.sampling import inpainting
from ncsn_jax.sampling import langevin

zero_score = lambda x, y: jnp.zeros_like(x)


def keys_of(key, n):
  return parallel.per_example_keys(key, n)


def small_model(config, batch):
  model = score_models.PixelModel(config.model.num_classes)
  x0 = langevin.init_samples(keys_of(jax.random.key(0), batch), config)
  params = model.init(jax.random.key(1), x0, jnp.zeros(batch, jnp.int32))[
      'params']
  return model, params, x0


class MaskTest(parameterized.TestCase):

  @parameterized.parameters(('right_half', 32), ('left_half', 32),
                            ('top_half', 32), ('bottom_half', 32),
                            ('center', 48))
  def test_masks(self, kind, known):
    mask = inpainting.make_mask(kind, (8, 8, 3))
    self.assertEqual(mask.shape, (8, 8, 3))
    self.assertEqual(int(mask[..., 0].sum()), known)
    np.testing.assert_array_equal(mask[..., 0], mask[..., 2])
    if kind == 'right_half':  # NCSNv2: the left half columns are known.
      self.assertTrue((mask[:, :4] == 1).all() and (mask[:, 4:] == 0).all())

  def test_random_mask_and_errors(self):
    mask = inpainting.make_mask('random', (32, 32, 1), jax.random.key(0))
    self.assertAlmostEqual(float(mask.mean()), 0.5, delta=0.05)
    with self.assertRaisesRegex(ValueError, 'config_checks.MASKS'):
      inpainting.make_mask('square', (8, 8, 1))


class InpaintingTest(absltest.TestCase):

  def test_known_pixels_get_fresh_noise_and_end_exact(self):
    # With a zero score, the known pixels after update t are
    # ref + sigma_c z'_t + sqrt(2 alpha_c) z_t with fresh z'_t every step.
    sigmas = jnp.array([2.0, 1.0])
    b, shape = 2000, (1, 4, 1)
    ref = jnp.full((b,) + shape, 0.3)
    mask = inpainting.make_mask('right_half', (1, 4, 1))
    x0 = jnp.full((b,) + shape, 5.0)
    x, traj = inpainting.annealed_langevin_inpainting(
        zero_score, x0, keys_of(jax.random.key(0), b), sigmas, 3, 0.01, ref,
        mask, record_every=1)
    self.assertEqual(traj.shape, (6, b) + shape)
    residual = np.asarray(traj[:, :, 0, :2, 0] - 0.3).reshape(6, -1)
    for t in range(6):
      sigma = float(sigmas[t // 3])
      alpha = 0.01 * sigma**2
      self.assertAlmostEqual(residual[t].var() / (sigma**2 + 2 * alpha), 1.0,
                             delta=0.06)
    for t in range(5):
      self.assertLess(abs(np.corrcoef(residual[t], residual[t + 1])[0, 1]),
                      0.05)
    np.testing.assert_array_equal(x[:, :, :2], ref[:, :, :2])
    # The unknown pixels only saw Langevin noise (zero score).
    unknown = np.asarray(x[:, 0, 2:, 0]).ravel() - 5.0
    self.assertAlmostEqual(unknown.var() / (2 * 0.01 * (12 + 3)), 1.0,
                           delta=0.06)

  def test_fills_in_the_gaussian_conditional(self):
    # Two correlated pixels, rho = 0.8; the known one is a = 1.5, so the
    # unknown one must follow N(rho a, 1 - rho^2) (+ sigma_L^2).
    rho, a = 0.8, 1.5
    cov = jnp.array([[1.0, rho], [rho, 1.0]])
    sigmas = jnp.asarray(score_lib.make_sigmas(3.0, 0.05, 10))

    def score(x, y):
      flat = x.reshape(x.shape[0], 2)
      precision = jnp.linalg.inv(cov[None] + sigmas[y][:, None, None]**2 *
                                 jnp.eye(2))
      return -jnp.einsum('bij,bj->bi', precision, flat).reshape(x.shape)

    b = 4000
    ref = jnp.full((b, 1, 2, 1), a)
    mask = inpainting.make_mask('right_half', (1, 2, 1))
    x0 = jax.random.uniform(jax.random.key(0), (b, 1, 2, 1))
    x, _ = jax.jit(lambda x0: inpainting.annealed_langevin_inpainting(
        score, x0, keys_of(jax.random.key(1), b), sigmas, 100, 2e-3, ref,
        mask))(x0)
    filled = np.asarray(x[:, 0, 1, 0])
    np.testing.assert_array_equal(x[:, 0, 0, 0], a)
    self.assertAlmostEqual(filled.mean(), rho * a, delta=0.04)
    self.assertAlmostEqual(filled.var(), 1 - rho**2 + 0.05**2, delta=0.04)

  def test_devices_complete_their_own_references(self):
    config = tiny.get_config()
    model, params, x0 = small_model(config, 8)
    ref = jax.random.uniform(jax.random.key(5), x0.shape)
    # A different mask per chain: devices must slice masks and references.
    mask = jax.random.bernoulli(jax.random.key(6), 0.5, x0.shape).astype(
        jnp.float32)
    sample_fn = inpainting.get_inpainting_sampler(config, model)
    keys = keys_of(jax.random.key(3), 8)
    single, _ = jax.jit(sample_fn)(params, x0, keys, ref, mask)
    multi, _ = parallel.pmap_sampler(sample_fn)(params, x0, keys, ref, mask)
    np.testing.assert_allclose(multi, single, rtol=1e-5, atol=1e-5)
    m = np.asarray(mask) == 1
    np.testing.assert_array_equal(multi[m], np.asarray(ref)[m])
    self.assertGreater(np.abs(multi[~m] - np.asarray(ref)[~m]).min(), 0)


class InpaintingHookTest(absltest.TestCase):

  def test_recorded_draws_through_both_hooks(self):
    # Recorded z'[t] and z[t]: before step t the known pixels are
    # ref + sigma_c z'[t], then x + alpha_c s(x) + sqrt(2 alpha_c) z[t].
    sigmas = jnp.array([2.0, 1.0])
    b, shape, steps, eps = 2, (1, 4, 1), 2, 0.05
    ref = jax.random.normal(jax.random.key(1), (b,) + shape)
    mask = inpainting.make_mask('right_half', shape)
    z_known = jax.random.normal(jax.random.key(2), (2 * steps, b) + shape)
    z = jax.random.normal(jax.random.key(3), (2 * steps, b) + shape)
    x0 = jax.random.normal(jax.random.key(4), (b,) + shape)
    score = lambda x, y: -x
    x, traj = inpainting.annealed_langevin_inpainting(
        score, x0, keys_of(jax.random.key(0), b), sigmas, steps, eps, ref,
        mask, record_every=1, noise_fn=lambda keys, t, x: z[t],
        known_noise_fn=lambda keys, t, x: z_known[t])
    expected, s2 = np.asarray(x0, np.float64), np.asarray(sigmas)**2
    for t in range(2 * steps):
      c = t // steps
      alpha = eps * s2[c] / s2[-1]
      expected = np.where(mask == 1, np.asarray(ref) + np.sqrt(s2[c]) *
                          np.asarray(z_known[t]), expected)
      expected = (expected - alpha * expected +
                  np.sqrt(2 * alpha) * np.asarray(z[t]))
      np.testing.assert_allclose(traj[t], expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(x, np.where(mask == 1, ref, expected),
                               rtol=1e-5, atol=1e-6)

  def test_default_hooks(self):
    sigmas = jnp.array([2.0, 1.0])
    ref = jnp.zeros((3, 2, 2, 1))
    mask = inpainting.make_mask('top_half', (2, 2, 1))
    run = lambda **hooks: inpainting.annealed_langevin_inpainting(
        zero_score, jnp.ones_like(ref), keys_of(jax.random.key(0), 3),
        sigmas, 2, 0.1, ref, mask, **hooks)[0]
    np.testing.assert_array_equal(
        run(), run(noise_fn=inpainting.default_noise,
                   known_noise_fn=inpainting.default_known_noise))


if __name__ == '__main__':
  absltest.main()
