"""Tests of sliced score matching (plain, variance-reduced and annealed)."""

from absl.testing import absltest
from absl.testing import parameterized
from configs import tiny
import jax
import jax.numpy as jnp
import numpy as np
from tests import score_models

from ncsn_jax import config_checks
from ncsn_jax import models
from ncsn_jax import parallel
from ncsn_jax.models import score as score_lib
from ncsn_jax.training import losses

DIM = 4
A = np.array([[1.5, 0.3, -0.2, 0.0],
              [0.1, -0.7, 0.4, 0.2],
              [0.0, 0.5, 0.9, -0.3],
              [-0.4, 0.0, 0.2, -1.1]], np.float32)
B = np.array([0.5, -1.0, 0.2, 0.3], np.float32)


def linear_score(x):
  return x @ jnp.asarray(A).T + jnp.asarray(B)


def optax_norm(tree):
  return np.sqrt(sum(np.sum(np.square(g)) for g in jax.tree.leaves(tree)))


def trace_form(x):
  """The exact objective tr(ds/dx) + 1/2 ||s(x)||^2 per example."""
  return np.trace(A) + 0.5 * np.sum(np.asarray(linear_score(x))**2, axis=-1)


class SlicedScoreMatchingTest(parameterized.TestCase):

  @parameterized.product(projection=('gaussian', 'rademacher'),
                         vr=(False, True))
  def test_linear_model_matches_trace_form(self, projection, vr):
    # Per example, the mean over many projections is tr(A) + 1/2 ||s||^2
    # within Monte-Carlo error.
    x = jax.random.normal(jax.random.key(0), (3, DIM))
    keys = parallel.per_example_keys(jax.random.key(1), 3)
    n = 20_000
    _, aux = losses.sliced_score_matching(linear_score, x, keys, n,
                                          projection, vr)
    s2 = np.sum(np.asarray(linear_score(x))**2, axis=-1)
    sym = 0.5 * (A + A.T)
    # Standard deviations of v^T A v and 1/2 (v^T s)^2 under N(0, I) bound
    # the Rademacher ones.
    sd = np.sqrt(2 * np.sum(sym**2)) + (0.0 if vr else np.sqrt(0.5) * s2)
    np.testing.assert_allclose(aux['losses'], trace_form(x),
                               atol=float(np.max(5 * sd / np.sqrt(n))))
    np.testing.assert_allclose(aux['loss2'], np.trace(A),
                               atol=float(5 * sd.max() / np.sqrt(n)))
    if vr:  # The norm term of SSM-VR is exact.
      np.testing.assert_allclose(aux['loss1'], 0.5 * s2, rtol=1e-5)

  def test_rademacher_diagonal_model_is_exact_for_one_projection(self):
    # v^T D v = tr(D) when v_i^2 = 1: SSM-VR is the trace form exactly.
    diag = jnp.array([1.0, -2.0, 0.5, 3.0])
    score = lambda x: x * diag + 1.0
    x = jax.random.normal(jax.random.key(0), (5, DIM))
    keys = parallel.per_example_keys(jax.random.key(1), 5)
    _, aux = losses.sliced_score_matching(score, x, keys, 1, 'rademacher',
                                          True)
    expected = float(jnp.sum(diag)) + 0.5 * np.sum(np.asarray(score(x))**2,
                                                   axis=-1)
    np.testing.assert_allclose(aux['losses'], expected, rtol=1e-5)

  @parameterized.parameters(False, True)
  def test_expectation_over_the_data(self, vr):
    # x ~ N(mu, I): E[tr(A) + 1/2 ||A x + b||^2] =
    # tr(A) + 1/2 (||A mu + b||^2 + ||A||_F^2), one projection per example.
    mu = np.array([1.0, -1.0, 0.5, 0.0], np.float32)
    n = 100_000
    x = mu + jax.random.normal(jax.random.key(2), (n, DIM))
    keys = parallel.per_example_keys(jax.random.key(3), n)
    loss, aux = losses.sliced_score_matching(linear_score, x, keys, 1,
                                             'gaussian', vr)
    analytic = np.trace(A) + 0.5 * (np.sum((A @ mu + B)**2) + np.sum(A**2))
    sd = float(np.std(np.asarray(aux['losses'])))
    self.assertAlmostEqual(float(loss), analytic, delta=5 * sd / np.sqrt(n))

  def test_per_example_keys(self):
    x = jax.random.normal(jax.random.key(0), (6, DIM))
    keys = parallel.per_example_keys(jax.random.key(1), 6)
    _, full = losses.sliced_score_matching(linear_score, x, keys, 3)
    _, tail = losses.sliced_score_matching(linear_score, x[4:], keys[4:], 3)
    np.testing.assert_allclose(full['losses'][4:], tail['losses'], rtol=1e-6)

  def test_projection_statistics(self):
    keys = parallel.per_example_keys(jax.random.key(0), 500)
    v = np.asarray(losses.projections(keys, (8,), 4, 'rademacher'))
    self.assertEqual(v.shape, (4, 500, 8))
    self.assertTrue(np.all(np.abs(v) == 1))
    g = np.asarray(losses.projections(keys, (8,), 4)).reshape(-1, 8)
    np.testing.assert_allclose(g.T @ g / len(g), np.eye(8), atol=0.06)

  def test_annealed_exact_gaussian_score_is_the_minimiser(self):
    # x ~ N(mu, s2 I); at level sigma the exact score of the perturbed data
    # has E[tr + 1/2 ||s||^2] = -D / (2 (s2 + sigma^2)).
    dim, s2, mu = 6, 0.5, 1.5
    sigmas = jnp.asarray(score_lib.make_sigmas(2.0, 0.1, 5))
    n = 100_000
    x = mu + np.sqrt(s2) * jax.random.normal(jax.random.key(0), (n, dim))
    keys = parallel.per_example_keys(jax.random.key(1), n)

    def loss(c):
      score = score_models.gaussian_score(mu, s2, sigmas, c)
      return float(losses.annealed_ssm_loss(score, x, keys, sigmas)[0])

    sig2 = np.asarray(sigmas)**2
    analytic = float(np.mean(-dim * sig2 / (2 * (s2 + sig2))))
    self.assertAlmostEqual(loss(1.0), analytic, delta=0.02 * abs(analytic))
    self.assertLess(loss(1.0), loss(0.9))
    self.assertLess(loss(1.0), loss(1.1))

  def test_get_loss_fn_with_the_model(self):
    config = tiny.get_config()
    config.training.loss = 'ssm'
    model = models.create_model(config)
    x = jax.random.uniform(jax.random.key(0), (4, 8, 8, 3))
    keys = parallel.per_example_keys(jax.random.key(1), 4)
    params = model.init(jax.random.key(2), x, jnp.zeros(4, jnp.int32))[
        'params']
    loss_fn = losses.get_loss_fn(config, model)
    (loss, aux), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(
        params, x, keys)
    self.assertTrue(np.isfinite(float(loss)))
    self.assertEqual(aux['losses'].shape, (4,))
    self.assertEqual(aux['labels'].shape, (4,))
    np.testing.assert_allclose(loss, aux['losses'].mean(), rtol=1e-5)
    self.assertTrue(all(np.isfinite(g).all() for g in jax.tree.leaves(grads)))
    self.assertGreater(float(optax_norm(grads)), 0)

  @parameterized.parameters(('ssm', 'rademacher', 3), ('ssm_vr', 'gaussian',
                                                       1))
  def test_get_loss_fn_passes_the_settings(self, name, projection, particles):
    config = tiny.get_config()
    config.training.loss = name
    config.training.projection = projection
    config.training.n_particles = particles
    model = score_models.PixelModel(config.model.num_classes)
    x = jax.random.uniform(jax.random.key(0), (4, 2, 2, 3))
    keys = parallel.per_example_keys(jax.random.key(1), 4)
    params = model.init(jax.random.key(2), x, jnp.zeros(4, jnp.int32))[
        'params']
    loss, aux = losses.get_loss_fn(config, model)(params, x, keys)
    score_fn = lambda u, y: model.apply({'params': params}, u, y)
    expected, expected_aux = losses.annealed_ssm_loss(
        score_fn, x, keys, jnp.asarray(score_lib.get_sigmas(config)), particles,
        projection, name == 'ssm_vr', config.training.anneal_power)
    np.testing.assert_allclose(loss, expected, rtol=1e-6)
    np.testing.assert_array_equal(aux['labels'], expected_aux['labels'])

  def test_bad_settings_name_the_field(self):
    config = tiny.get_config()
    config.training.loss = 'ssm'
    config.training.projection = 'sphere'
    with self.assertRaisesRegex(ValueError, r'config\.training\.projection'):
      config_checks.check_config(config, 'train')
    config.training.projection = 'gaussian'
    config.training.n_particles = 0
    with self.assertRaisesRegex(ValueError, r'config\.training\.n_particles'):
      config_checks.check_config(config, 'train')


if __name__ == '__main__':
  absltest.main()
