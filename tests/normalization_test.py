"""Tests of the instance normalisations against NumPy oracles."""

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np

from ncsn_jax.models import normalization


def np_instance_norm(x):
  """[B,H,W,C] float64: biased spatial variance, eps inside the sqrt."""
  mu = x.mean(axis=(1, 2), keepdims=True)
  var = ((x - mu)**2).mean(axis=(1, 2), keepdims=True)
  return (x - mu) / np.sqrt(var + 1e-5), mu[:, 0, 0, :]


def np_plus_plus(x, gamma, alpha, beta):
  """InstanceNorm++ oracle; gamma/alpha/beta [B,C] or [C]."""
  normed, mu = np_instance_norm(x)
  m = mu.mean(axis=-1, keepdims=True)
  v = ((mu - m)**2).sum(axis=-1, keepdims=True) / (mu.shape[-1] - 1)
  mu_tilde = (mu - m) / np.sqrt(v + 1e-5)
  b = lambda p: np.broadcast_to(p, mu.shape)[:, None, None, :]
  out = b(gamma) * (normed + b(alpha) * mu_tilde[:, None, None, :])
  return out + (b(beta) if beta is not None else 0.0)


class NormalizationTest(parameterized.TestCase):

  def setUp(self):
    super().setUp()
    rng = np.random.RandomState(0)
    # Channel-dependent offsets and scales make every statistic matter.
    self.x = (rng.randn(3, 5, 6, 4) * rng.uniform(0.5, 3, 4) +
              rng.randn(4) * 2).astype(np.float32)
    self.y = np.array([2, 0, 2], np.int32)

  def test_instance_norm_plus_plus_matches_oracle(self):
    layer = normalization.InstanceNormPlusPlus()
    variables = layer.init(jax.random.key(0), self.x)
    p = variables['params']
    self.assertEqual(set(p), {'alpha', 'gamma', 'beta'})
    out = layer.apply(variables, self.x)
    expected = np_plus_plus(self.x.astype(np.float64), np.asarray(p['gamma']),
                            np.asarray(p['alpha']), np.asarray(p['beta']))
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)

  def test_unbiased_cross_channel_variance_matters(self):
    # With ddof=0 the result differs: guards against the score_sde variant.
    layer = normalization.InstanceNormPlusPlus()
    variables = layer.init(jax.random.key(0), self.x)
    p = jax.tree.map(np.asarray, variables['params'])
    out = np.asarray(layer.apply(variables, self.x))
    normed, mu = np_instance_norm(self.x.astype(np.float64))
    mu_t = (mu - mu.mean(-1, keepdims=True)) / np.sqrt(
        mu.var(-1, keepdims=True) + 1e-5)
    biased = p['gamma'] * (normed + p['alpha'] * mu_t[:, None, None, :])
    self.assertGreater(np.abs(out - biased).max(), 1e-3)

  def test_no_bias_variant_has_no_beta(self):
    layer = normalization.InstanceNormPlusPlus(use_bias=False)
    p = layer.init(jax.random.key(0), self.x)['params']
    self.assertEqual(set(p), {'alpha', 'gamma'})

  def test_init_distribution(self):
    layer = normalization.InstanceNormPlusPlus()
    x = jnp.zeros((1, 2, 2, 20000))
    p = layer.init(jax.random.key(1), x)['params']
    for name in ('alpha', 'gamma'):
      self.assertAlmostEqual(float(p[name].mean()), 1.0, delta=0.002)
      self.assertAlmostEqual(float(p[name].std()), 0.02, delta=0.002)
    np.testing.assert_array_equal(p['beta'], 0.0)
    self.assertFalse(np.allclose(p['alpha'], p['gamma']))

  def test_cond_plus_plus_matches_oracle_per_class(self):
    layer = normalization.CondInstanceNormPlusPlus(num_classes=3)
    variables = layer.init(jax.random.key(0), self.x, self.y)
    embed = np.asarray(variables['params']['embed'])
    self.assertEqual(embed.shape, (3, 12))
    # Make beta non-zero so the column order is fully tested.
    embed = embed.copy()
    embed[:, 8:] = np.random.RandomState(1).randn(3, 4)
    out = layer.apply({'params': {'embed': embed}}, self.x, self.y)
    rows = embed[self.y]
    expected = np_plus_plus(self.x.astype(np.float64), rows[:, :4],
                            rows[:, 4:8], rows[:, 8:])
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)

  def test_cond_plus_plus_init_and_label_dependence(self):
    layer = normalization.CondInstanceNormPlusPlus(num_classes=10)
    x = jnp.zeros((1, 2, 2, 5000))
    embed = layer.init(jax.random.key(2), x, jnp.zeros(1, jnp.int32))
    embed = np.asarray(embed['params']['embed'])
    self.assertAlmostEqual(embed[:, :10000].mean(), 1.0, delta=0.002)
    self.assertAlmostEqual(embed[:, :10000].std(), 0.02, delta=0.002)
    np.testing.assert_array_equal(embed[:, 10000:], 0.0)
    # Same input, different labels -> different outputs.
    variables = layer.init(jax.random.key(0), self.x, self.y)
    a = layer.apply(variables, self.x, jnp.zeros(3, jnp.int32))
    b = layer.apply(variables, self.x, jnp.ones(3, jnp.int32))
    self.assertGreater(float(jnp.abs(a - b).max()), 1e-3)

  def test_cond_plus_plus_without_bias(self):
    layer = normalization.CondInstanceNormPlusPlus(num_classes=3,
                                                   use_bias=False)
    variables = layer.init(jax.random.key(0), self.x, self.y)
    embed = np.asarray(variables['params']['embed'])
    self.assertEqual(embed.shape, (3, 8))
    out = layer.apply(variables, self.x, self.y)
    rows = embed[self.y]
    expected = np_plus_plus(self.x.astype(np.float64), rows[:, :4],
                            rows[:, 4:], None)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


if __name__ == '__main__':
  absltest.main()
