"""Tests for ncsn_jax.evaluation.metrics against direct NumPy/SciPy oracles."""

import itertools

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np
import scipy.linalg

from ncsn_jax.evaluation import metrics


def _random_features(seed, n, d, scale=1.0, offset=0.0):
  rng = np.random.default_rng(seed)
  mixing = rng.normal(size=(d, d)) / np.sqrt(d)
  return offset + scale * np.maximum(rng.normal(size=(n, d)) @ mixing, 0.0)


def _fid_oracle(x, y):
  """FID straight from the definition with scipy.linalg.sqrtm."""
  mu1, mu2 = x.mean(0), y.mean(0)
  s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
  covmean = scipy.linalg.sqrtm(s1 @ s2).real
  return np.sum((mu1 - mu2)**2) + np.trace(s1 + s2 - 2 * covmean)


def _mmd2_oracle(x, y):
  """Unbiased MMD^2 with explicit loops over index pairs."""
  k = lambda a, b: (np.dot(a, b) / len(a) + 1.0)**3
  m, n = len(x), len(y)
  k_xx = sum(k(x[i], x[j]) for i, j in itertools.permutations(range(m), 2))
  k_yy = sum(k(y[i], y[j]) for i, j in itertools.permutations(range(n), 2))
  k_xy = sum(k(x[i], y[j]) for i in range(m) for j in range(n))
  return k_xx / (m * (m - 1)) + k_yy / (n * (n - 1)) - 2 * k_xy / (m * n)


def _one_hot(labels, k):
  return np.eye(k)[np.asarray(labels)]


def _fid(x, y, **kwargs):
  return metrics.frechet_distance(*metrics.mean_and_covariance(x),
                                  *metrics.mean_and_covariance(y), **kwargs)


class MeanAndCovarianceTest(parameterized.TestCase):

  @parameterized.parameters(0.0, 1e6)
  def test_equals_numpy(self, offset):
    x = _random_features(0, 103, 7, offset=offset)
    mu, sigma = metrics.mean_and_covariance(x)
    np.testing.assert_allclose(mu, x.mean(0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(x, rowvar=False), rtol=1e-9,
                               atol=1e-10)
    np.testing.assert_array_equal(sigma, sigma.T)

  def test_large_mean_does_not_cancel(self):
    # About the mean, not sum x x^T - N mu mu^T: exact for a large offset.
    x = _random_features(1, 50, 5)
    _, sigma = metrics.mean_and_covariance(x)
    _, shifted = metrics.mean_and_covariance(x + 1e8)
    np.testing.assert_allclose(shifted, sigma, rtol=1e-6, atol=1e-9)

  def test_float32_input_is_computed_in_float64(self):
    x = _random_features(3, 64, 4).astype(np.float32)
    mu, sigma = metrics.mean_and_covariance(x)
    self.assertEqual((mu.dtype, sigma.dtype), (np.float64, np.float64))
    np.testing.assert_allclose(
        sigma, np.cov(x.astype(np.float64), rowvar=False), rtol=1e-10)

  def test_errors(self):
    with self.assertRaisesRegex(ValueError, '2-D'):
      metrics.mean_and_covariance(np.zeros(3))
    with self.assertRaisesRegex(ValueError, 'at least 2'):
      metrics.mean_and_covariance(np.zeros((1, 3)))


class FrechetDistanceTest(parameterized.TestCase):

  @parameterized.parameters('sqrtm', 'eigh')
  def test_matches_oracle(self, method):
    x = _random_features(0, 300, 16)
    y = _random_features(1, 200, 16, scale=1.3, offset=0.2)
    got = _fid(x, y, method=method)
    want = _fid_oracle(x, y)
    self.assertGreater(want, 0.1)
    np.testing.assert_allclose(got, want, rtol=1e-8)

  @parameterized.parameters('sqrtm', 'eigh')
  def test_identical_and_symmetric(self, method):
    x = _random_features(4, 200, 12)
    y = _random_features(5, 150, 12, scale=0.8)
    mx, sx = metrics.mean_and_covariance(x)
    my, sy = metrics.mean_and_covariance(y)
    self.assertAlmostEqual(
        metrics.frechet_distance(mx, sx, mx, sx, method=method), 0.0, places=8)
    np.testing.assert_allclose(
        metrics.frechet_distance(mx, sx, my, sy, method=method),
        metrics.frechet_distance(my, sy, mx, sx, method=method), rtol=1e-9)

  def test_diagonal_closed_form(self):
    a, b = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    want = 1.0 + 4.0 + np.sum((np.sqrt(a) - np.sqrt(b))**2)
    for method in ('sqrtm', 'eigh'):
      got = metrics.frechet_distance(mu1, np.diag(a), mu2, np.diag(b),
                                     method=method)
      self.assertAlmostEqual(got, want, places=10)

  def test_singular_covariances_stay_finite(self):
    # Fewer samples than dimensions: both covariances are rank deficient.
    x = _random_features(6, 10, 32)
    y = _random_features(7, 12, 32)
    for method in ('sqrtm', 'eigh'):
      fid = _fid(x, y, method=method)
      self.assertTrue(np.isfinite(fid))
      self.assertGreater(fid, 0.0)

  def test_nilpotent_product_uses_eps_fallback(self):
    # sqrtm of the nilpotent [[0, 1], [0, 0]] is not finite; TTUR's retry with
    # eps * I gives tr sqrtm = 2 sqrt(eps (1 + eps)). Not a covariance, but the
    # simplest way to reach the fallback path.
    s1 = np.array([[0.0, 1.0], [0.0, 0.0]])
    eps = 1e-6
    fid = metrics.frechet_distance(np.zeros(2), s1, np.zeros(2), np.eye(2),
                                   eps=eps)
    self.assertAlmostEqual(fid, 2.0 - 4 * np.sqrt(eps * (1 + eps)), places=8)

  def test_large_imaginary_part_raises(self):
    s1 = np.diag([-1.0, 1.0])  # Not PSD: sqrtm has an imaginary diagonal.
    with self.assertRaisesRegex(ValueError, 'imaginary'):
      metrics.frechet_distance(np.zeros(2), s1, np.zeros(2), np.eye(2))

  def test_errors(self):
    with self.assertRaisesRegex(ValueError, 'mismatch'):
      metrics.frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))
    with self.assertRaisesRegex(ValueError, 'shapes'):
      metrics.frechet_distance(np.zeros(2), np.eye(3), np.zeros(2), np.eye(2))
    with self.assertRaisesRegex(ValueError, 'method'):
      metrics.frechet_distance(np.zeros(2), np.eye(2), np.zeros(2), np.eye(2),
                               method='svd')


class InceptionScoreTest(parameterized.TestCase):

  @parameterized.parameters(1, 10)
  def test_uniform_is_one(self, splits):
    mean, std = metrics.inception_score(np.full((40, 7), 1 / 7), splits=splits)
    self.assertAlmostEqual(mean, 1.0, places=12)
    self.assertAlmostEqual(std, 0.0, places=12)
    mean, _ = metrics.inception_score(np.zeros((40, 7)), splits=splits,
                                      from_logits=True)
    self.assertAlmostEqual(mean, 1.0, places=12)

  @parameterized.parameters(1, 2, 5)
  def test_one_hot_spread_gives_num_classes(self, splits):
    k = 6
    probs = _one_hot(np.arange(60) % k, k)  # Every split holds each class.
    mean, std = metrics.inception_score(probs, splits=splits)
    self.assertAlmostEqual(mean, k, places=10)
    self.assertAlmostEqual(std, 0.0, places=10)
    logits = 50.0 * probs  # Near one-hot after softmax.
    mean, _ = metrics.inception_score(logits, splits=splits, from_logits=True)
    self.assertAlmostEqual(mean, k, places=5)

  def test_split_boundaries_are_floor_i_n_over_splits(self):
    # Parts are rows [0:1] and [1:3] (floor), not [0:2] and [2:3].
    probs = _one_hot([0, 0, 1], 2)
    mean, std = metrics.inception_score(probs, splits=2)
    self.assertAlmostEqual(mean, 1.5, places=12)
    self.assertAlmostEqual(std, 0.5, places=12)  # Population std.

  def test_logits_match_probabilities_and_oracle(self):
    rng = np.random.default_rng(0)
    logits = 3 * rng.normal(size=(97, 11))
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    want = []
    for i in range(10):
      part = probs[i * 97 // 10:(i + 1) * 97 // 10]
      kl = np.sum(part * (np.log(part) - np.log(part.mean(0))), axis=1)
      want.append(np.exp(kl.mean()))
    got = metrics.inception_score(logits, from_logits=True)
    np.testing.assert_allclose(got, (np.mean(want), np.std(want)), rtol=1e-10)
    np.testing.assert_allclose(metrics.inception_score(probs), got, rtol=1e-10)
    kl = np.sum(probs * (np.log(probs) - np.log(probs.mean(0))), axis=1)
    self.assertAlmostEqual(
        metrics.inception_score(logits, splits=1, from_logits=True)[0],
        np.exp(kl.mean()), places=10)

  def test_errors(self):
    with self.assertRaisesRegex(ValueError, 'one row per split'):
      metrics.inception_score(np.full((5, 3), 1 / 3), splits=10)
    with self.assertRaisesRegex(ValueError, 'non-negative'):
      metrics.inception_score(-np.ones((10, 3)), splits=1)
    with self.assertRaisesRegex(ValueError, 'sum to 1'):
      metrics.inception_score(np.ones((10, 3)), splits=1)
    with self.assertRaisesRegex(ValueError, '2-D'):
      metrics.inception_score(np.ones(10), splits=1)


class KernelInceptionDistanceTest(parameterized.TestCase):

  def test_block_sizes_score_sde_cifar10(self):
    sizes = metrics.kid_block_sizes(50000, 49)
    self.assertEqual(sizes.sum(), 50000)
    np.testing.assert_array_equal(sizes[:29], 1020)
    np.testing.assert_array_equal(sizes[29:], 1021)

  def test_mmd2_matches_loop_oracle(self):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(7, 5)), rng.normal(1.0, 1.0, size=(9, 5))
    self.assertAlmostEqual(metrics.mmd2_unbiased(x, y), _mmd2_oracle(x, y),
                           places=10)

  def test_single_block_matches_oracle(self):
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(8, 4)), rng.normal(0.5, 1.0, size=(6, 4))
    mean, std = metrics.kernel_inception_distance(x, y)
    self.assertAlmostEqual(mean, _mmd2_oracle(x, y), places=10)
    self.assertTrue(np.isnan(std))

  def test_blocks_are_contiguous_and_ordered(self):
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(10, 3)), rng.normal(0.3, 1.0, size=(8, 3))
    # ceil(10 / 4) = 3 blocks: x in 3, 3, 4 rows; y in 2, 3, 3 rows.
    ests = [_mmd2_oracle(x[0:3], y[0:2]), _mmd2_oracle(x[3:6], y[2:5]),
            _mmd2_oracle(x[6:10], y[5:8])]
    mean, std = metrics.kernel_inception_distance(x, y, max_block_size=4)
    self.assertAlmostEqual(mean, np.mean(ests), places=10)
    self.assertAlmostEqual(std, np.sqrt(np.var(ests, ddof=1) / 3), places=10)

  def test_identical_distributions_near_zero(self):
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(2000, 16)), rng.normal(size=(2000, 16))
    z = rng.normal(0.5, 1.0, size=(2000, 16))
    mean, std = metrics.kernel_inception_distance(x, y, max_block_size=500)
    self.assertLess(abs(mean), 4 * std)
    shifted, _ = metrics.kernel_inception_distance(x, z, max_block_size=500)
    self.assertGreater(shifted, 100 * abs(mean))

  def test_float32_close_to_float64(self):
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(300, 8)), rng.normal(0.2, 1.0, size=(200, 8))
    m64, _ = metrics.kernel_inception_distance(x, y, max_block_size=100)
    m32, _ = metrics.kernel_inception_distance(x, y, max_block_size=100,
                                               dtype=np.float32)
    self.assertAlmostEqual(m32, m64, delta=1e-4 * max(1.0, abs(m64)))

  def test_errors(self):
    with self.assertRaisesRegex(ValueError, 'mismatch'):
      metrics.kernel_inception_distance(np.zeros((4, 2)), np.zeros((4, 3)))
    with self.assertRaisesRegex(ValueError, '>= 2 samples'):
      metrics.kernel_inception_distance(np.zeros((9, 2)), np.zeros((3, 2)),
                                        max_block_size=4)


if __name__ == '__main__':
  absltest.main()
