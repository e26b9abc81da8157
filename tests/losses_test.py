"""Tests of the denoising score-matching loss."""

from absl.testing import absltest
from configs import tiny
import jax
import jax.numpy as jnp
import numpy as np
from tests import score_models

from ncsn_jax import config_checks
from ncsn_jax import models
from ncsn_jax import parallel
from ncsn_jax.models import score
from ncsn_jax.training import losses


class DsmLossTest(absltest.TestCase):

  def test_exact_gaussian_score_attains_analytic_minimum(self):
    dim, s2, mu = 6, 0.5, 1.5
    sigmas = jnp.asarray(score.make_sigmas(2.0, 0.1, 5))
    n = 200_000
    x = mu + np.sqrt(s2) * jax.random.normal(jax.random.key(0), (n, dim))
    keys = parallel.per_example_keys(jax.random.key(1), n)
    loss = lambda c: float(losses.annealed_dsm_loss(
        score_models.gaussian_score(mu, s2, sigmas, c), x, keys, sigmas)[0])
    # E over levels of D s2 / (2 (s2 + sigma^2)) with lambda = sigma^2.
    analytic = float(np.mean(dim * s2 / (2 * (s2 + np.asarray(sigmas)**2))))
    self.assertAlmostEqual(loss(1.0), analytic, delta=0.01 * analytic)
    # The exact score is the minimiser (same noise draws for every c).
    self.assertLess(loss(1.0), loss(0.9))
    self.assertLess(loss(1.0), loss(1.1))

  def test_labels_uniform_and_per_example(self):
    sigmas = jnp.asarray(score.make_sigmas(1.0, 0.01, 10))
    x = jnp.zeros((4000, 2))
    keys = parallel.per_example_keys(jax.random.key(3), 4000)
    _, aux = losses.annealed_dsm_loss(lambda x, y: x, x, keys, sigmas)
    counts = np.bincount(np.asarray(aux['labels']), minlength=10)
    self.assertTrue((np.abs(counts - 400) < 80).all(), counts)
    # The draws of example i depend only on its key.
    _, aux_half = losses.annealed_dsm_loss(lambda x, y: x, x[2000:],
                                           keys[2000:], sigmas)
    np.testing.assert_array_equal(aux['labels'][2000:], aux_half['labels'])
    np.testing.assert_allclose(aux['losses'][2000:], aux_half['losses'])

  def test_ncsnv2_loss_identity(self):
    # With s = f / sigma and p = 2 the loss is mean 1/2 ||f(x~, y) + z||^2.
    config = tiny.get_config()
    config.model.sigma_begin = 5.0
    model = models.create_model(config)
    x = jax.random.uniform(jax.random.key(0), (6, 8, 8, 3))
    keys = parallel.per_example_keys(jax.random.key(1), 6)
    params = model.init(jax.random.key(2), x, jnp.zeros(6, jnp.int32))[
        'params']
    loss_fn = losses.get_loss_fn(config, model)
    loss, aux = loss_fn(params, x, keys)
    sigmas = jnp.asarray(score.get_sigmas(config))
    labels, z = losses.perturb(keys, x, sigmas)
    np.testing.assert_array_equal(labels, aux['labels'])
    x_tilde = x + sigmas[labels][:, None, None, None] * z
    f = model.clone(scale_by_sigma=False).apply({'params': params}, x_tilde,
                                                labels)
    expected = 0.5 * jnp.sum((f + z)**2, axis=(1, 2, 3))
    np.testing.assert_allclose(aux['losses'], expected, rtol=1e-4)
    np.testing.assert_allclose(loss, expected.mean(), rtol=1e-4)

  def test_perturb_hook_feeds_given_draws_to_both_losses(self):
    # A recorded (labels, z) through `perturb_fn` is what the losses use:
    # with the exact-target score s = -z / sigma the DSM loss is zero.
    config = tiny.get_config()
    sigmas = jnp.asarray(score.get_sigmas(config))
    x = jax.random.uniform(jax.random.key(0), (4, 2, 2, 3))
    labels = jnp.array([3, 0, 2, 1], jnp.int32)
    z = jax.random.normal(jax.random.key(1), x.shape)
    seen = []

    def recorded(keys, x_in, sigmas_in):
      seen.append((keys.shape, x_in.shape, sigmas_in.shape))
      return labels, z

    def exact(x_tilde, y):
      s = sigmas[y][:, None, None, None]
      return -(x_tilde - x) / s**2

    keys = parallel.per_example_keys(jax.random.key(2), 4)
    loss, aux = losses.annealed_dsm_loss(exact, x, keys, sigmas,
                                         perturb_fn=recorded)
    self.assertAlmostEqual(float(loss), 0.0, places=6)
    np.testing.assert_array_equal(aux['labels'], labels)
    self.assertEqual(seen, [((4,), x.shape, sigmas.shape)])
    # The same hook reaches the loss of a config (DSM and SSM).
    model = score_models.PixelModel(config.model.num_classes)
    params = model.init(jax.random.key(3), x, labels)['params']
    for name in ('dsm', 'ssm_vr'):
      config.training.loss = name
      _, aux = losses.get_loss_fn(config, model, perturb_fn=recorded)(
          params, x, keys)
      np.testing.assert_array_equal(aux['labels'], labels)
    default = losses.get_loss_fn(config, model)(params, x, keys)[0]
    explicit = losses.get_loss_fn(config, model, losses.perturb)(params, x,
                                                                 keys)[0]
    self.assertEqual(float(default), float(explicit))

  def test_unknown_loss_names_field(self):
    config = tiny.get_config()
    config.training.loss = 'nce'
    with self.assertRaisesRegex(ValueError, r'config\.training\.loss'):
      config_checks.check_config(config, 'train')


if __name__ == '__main__':
  absltest.main()
