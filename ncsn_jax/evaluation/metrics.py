"""Sample-quality metrics (FID, IS, KID) from precomputed features.

Pure NumPy/SciPy on the host, in float64 unless a function says otherwise. The
feature extractor (Inception or a small classifier) is injected by the caller;
this module never sees images. Formulas follow EVALUATION.md §2.4:

* FID: TTUR / pytorch-fid, ||mu1 - mu2||^2 + tr(S1 + S2 - 2 sqrtm(S1 S2)) with
  `scipy.linalg.sqrtm` and TTUR's eps * I retry (or a faster, equivalent
  symmetric eigendecomposition, `method='eigh'`).
* IS: improved-gan (10 contiguous splits, mean and population std of
  exp(E KL(p(y|x) || p(y)))) and tf-gan (one split over all rows, from logits).
* KID: tf-gan's block scheme (score_sde default, `max_block_size=1024`, ordered
  contiguous blocks, no shuffling) in `kernel_inception_distance`, and the
  MMD-GAN/StyleGAN random-subset scheme in `kid_subsets`. Both use the cubic
  polynomial kernel k(x, y) = (x.y / d + 1)^3 and the unbiased MMD^2 estimator.
"""

import dataclasses
import math
import warnings
from typing import Optional

from absl import logging
import numpy as np
import scipy.linalg
import scipy.special


@dataclasses.dataclass(frozen=True, eq=False)
class FeatureStats:
  """Streaming first and second moments of features, float64.

  To avoid cancellation in `sum_outer - sum sum^T / n` when features have a
  large mean, the sums are taken over `x - shift`, where `shift` is the mean of
  the first non-empty batch (a fixed reference point; any value is exact).

  Attributes:
    count: number of feature vectors seen.
    shift: [D] reference point subtracted before accumulation.
    sum: [D] sum of (x - shift).
    sum_outer: [D,D] sum of (x - shift)(x - shift)^T.
  """
  count: int
  shift: np.ndarray
  sum: np.ndarray
  sum_outer: np.ndarray

  @property
  def dim(self) -> int:
    return self.shift.shape[0]


def init_stats(dim: int) -> FeatureStats:
  """Empty statistics for features of dimension `dim`."""
  if dim < 1:
    raise ValueError(f'Feature dimension must be >= 1, got {dim}.')
  return FeatureStats(
      count=0,
      shift=np.zeros([dim], np.float64),
      sum=np.zeros([dim], np.float64),
      sum_outer=np.zeros([dim, dim], np.float64))


def _as_features(features, dim=None) -> np.ndarray:
  """Checks `features` is [B,D] (D == dim if given); returns float64."""
  x = np.asarray(features, dtype=np.float64)
  if x.ndim != 2:
    raise ValueError(f'Features must be 2-D [B,D], got shape {x.shape}.')
  if dim is not None and x.shape[1] != dim:
    raise ValueError(
        f'Feature dimension mismatch: expected {dim}, got {x.shape[1]}.')
  return x


def _shifted_stats(stats: FeatureStats, shift: np.ndarray) -> FeatureStats:
  """Re-expresses `stats` around a new `shift` (exact up to rounding)."""
  delta = stats.shift - shift
  s = stats.sum + stats.count * delta
  outer = (stats.sum_outer + np.outer(stats.sum, delta) +
           np.outer(delta, stats.sum) + stats.count * np.outer(delta, delta))
  return FeatureStats(stats.count, shift, s, outer)


def update_stats(stats: FeatureStats, features) -> FeatureStats:
  """Returns `stats` updated with a batch of `features` [B,D]."""
  x = _as_features(features, stats.dim)
  if x.shape[0] == 0:
    return stats
  if stats.count == 0:
    shift = x.mean(axis=0)
    centred = x - shift
    return FeatureStats(x.shape[0], shift, centred.sum(axis=0),
                        centred.T @ centred)
  centred = x - stats.shift
  return FeatureStats(stats.count + x.shape[0], stats.shift,
                      stats.sum + centred.sum(axis=0),
                      stats.sum_outer + centred.T @ centred)


def merge_stats(a: FeatureStats, b: FeatureStats) -> FeatureStats:
  """Statistics of the union of the two feature sets behind `a` and `b`."""
  if a.dim != b.dim:
    raise ValueError(f'Cannot merge stats of dimensions {a.dim} and {b.dim}.')
  if b.count == 0:
    return a
  if a.count == 0:
    return b
  b = _shifted_stats(b, a.shift)
  return FeatureStats(a.count + b.count, a.shift, a.sum + b.sum,
                      a.sum_outer + b.sum_outer)


def compute_stats(features) -> FeatureStats:
  """Statistics of one feature array [N,D]."""
  x = _as_features(features)
  return update_stats(init_stats(x.shape[1]), x)


def finalize_stats(stats: FeatureStats) -> tuple[np.ndarray, np.ndarray]:
  """Mean [D] and unbiased covariance [D,D] (ddof=1, as `np.cov`)."""
  n = stats.count
  if n < 2:
    raise ValueError(
        f'Need at least 2 feature vectors for a covariance, got {n}.')
  mean_shifted = stats.sum / n
  sigma = (stats.sum_outer - n * np.outer(mean_shifted, mean_shifted)) / (n - 1)
  sigma = 0.5 * (sigma + sigma.T)
  return stats.shift + mean_shifted, sigma


def _check_gaussian(mu, sigma, name):
  mu = np.atleast_1d(np.asarray(mu, dtype=np.float64))
  sigma = np.atleast_2d(np.asarray(sigma, dtype=np.float64))
  if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
    raise ValueError(f'{name}: expected mu [D] and sigma [D,D], got shapes '
                     f'{mu.shape} and {sigma.shape}.')
  return mu, sigma


def _trace_sqrt_product_sqrtm(sigma1, sigma2, eps):
  """tr sqrtm(S1 S2) the TTUR way: scipy sqrtm, eps * I retry, real part."""
  with warnings.catch_warnings():
    warnings.simplefilter('ignore', scipy.linalg.LinAlgWarning)
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
    if not np.all(np.isfinite(covmean)):
      logging.warning('FID: sqrtm(S1 S2) is not finite (singular product); '
                      'adding %g to the covariance diagonals.', eps)
      offset = eps * np.eye(sigma1.shape[0])
      covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
  if not np.all(np.isfinite(covmean)):
    raise ValueError('FID: sqrtm(S1 S2) is not finite even after adding '
                     f'{eps} * I to the covariances.')
  if np.iscomplexobj(covmean):
    if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
      raise ValueError('FID: sqrtm(S1 S2) has a significant imaginary part '
                       f'(max |imag| {np.max(np.abs(covmean.imag)):.3g}).')
    covmean = covmean.real
  return float(np.trace(covmean))


def _psd_sqrt(sigma):
  """Symmetric square root of a symmetric PSD matrix via eigh."""
  w, v = np.linalg.eigh(sigma)
  return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def _trace_sqrt_product_eigh(sigma1, sigma2):
  """tr sqrt(S1 S2) = tr sqrt(A S2 A), A = sqrt(S1); for symmetric PSD S."""
  a = _psd_sqrt(0.5 * (sigma1 + sigma1.T))
  m = a @ (0.5 * (sigma2 + sigma2.T)) @ a
  w = np.linalg.eigvalsh(0.5 * (m + m.T))
  return float(np.sum(np.sqrt(np.clip(w, 0.0, None))))


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6,
                     method: str = 'sqrtm') -> float:
  """Fréchet distance between Gaussians N(mu1, sigma1) and N(mu2, sigma2).

  ||mu1 - mu2||^2 + tr(sigma1) + tr(sigma2) - 2 tr sqrtm(sigma1 sigma2).

  Args:
    mu1: [D] mean of the first set.
    sigma1: [D,D] covariance of the first set.
    mu2: [D] mean of the second set.
    sigma2: [D,D] covariance of the second set.
    eps: diagonal offset for TTUR's retry when sqrtm is not finite.
    method: 'sqrtm' (TTUR/pytorch-fid: `scipy.linalg.sqrtm`, retry with
      eps * I, reject a significant imaginary diagonal, atol 1e-3) or 'eigh'
      (symmetric eigendecompositions, tf-gan style; several times faster at
      D = 2048, agrees with 'sqrtm' to ~1e-12 relative for PSD inputs).

  Returns:
    The distance as a Python float.
  """
  mu1, sigma1 = _check_gaussian(mu1, sigma1, 'first')
  mu2, sigma2 = _check_gaussian(mu2, sigma2, 'second')
  if mu1.shape != mu2.shape:
    raise ValueError(
        f'Dimension mismatch: {mu1.shape[0]} vs {mu2.shape[0]} features.')
  if method == 'sqrtm':
    tr_covmean = _trace_sqrt_product_sqrtm(sigma1, sigma2, eps)
  elif method == 'eigh':
    tr_covmean = _trace_sqrt_product_eigh(sigma1, sigma2)
  else:
    raise ValueError(f"Unknown method {method!r}; use 'sqrtm' or 'eigh'.")
  diff = mu1 - mu2
  return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) -
               2.0 * tr_covmean)


def finite_or_none(x) -> Optional[float]:
  """A float for a JSON report; None (null) where it is NaN or infinite."""
  return float(x) if np.isfinite(x) else None


def fid_from_features(features1, features2, **kwargs) -> float:
  """Fréchet distance between the Gaussian fits of two feature sets [N,D]."""
  mu1, sigma1 = finalize_stats(compute_stats(features1))
  mu2, sigma2 = finalize_stats(compute_stats(features2))
  return frechet_distance(mu1, sigma1, mu2, sigma2, **kwargs)


def _log_probs(probs_or_logits, from_logits: bool) -> np.ndarray:
  """Returns log p(y|x) [N,K] in float64 from logits or probabilities."""
  x = np.asarray(probs_or_logits, dtype=np.float64)
  if x.ndim != 2 or x.shape[1] < 1:
    raise ValueError(
        f'Predictions must be 2-D [N,K] with K >= 1, got shape {x.shape}.')
  if not np.all(np.isfinite(x)):
    raise ValueError('Predictions contain NaN or Inf.')
  if from_logits:
    return scipy.special.log_softmax(x, axis=1)
  if np.any(x < 0):
    raise ValueError('Probabilities must be non-negative; pass '
                     'from_logits=True for logits.')
  row_sums = x.sum(axis=1)
  if not np.allclose(row_sums, 1.0, atol=1e-3):
    raise ValueError('Probability rows must sum to 1 (max deviation '
                     f'{np.max(np.abs(row_sums - 1)):.3g}); pass '
                     'from_logits=True for logits.')
  with np.errstate(divide='ignore'):
    return np.log(x)


def _split_score(log_p: np.ndarray) -> float:
  """exp(mean_x KL(p(y|x) || mean_x p(y|x))) of one split [n,K]."""
  p = np.exp(log_p)
  # 0 * log 0 = 0: zero-probability classes contribute nothing.
  with np.errstate(divide='ignore', invalid='ignore'):
    log_marginal = np.log(p.mean(axis=0))
    terms = np.where(p > 0, p * (log_p - log_marginal), 0.0)
  return float(np.exp(terms.sum(axis=1).mean()))


def inception_score(probs_or_logits, splits: int = 10,
                    from_logits: bool = False) -> tuple[float, float]:
  """Inception Score (improved-gan scheme) of class predictions.

  The N rows are cut, in order, into `splits` contiguous parts, part i being
  rows floor(i N / splits) ... floor((i + 1) N / splits) - 1. Each part scores
  exp(mean_x KL(p(y|x) || p_i(y))) with p_i its own marginal.

  Args:
    probs_or_logits: [N,K] class probabilities, or logits if `from_logits`.
    splits: number of parts; 10 is improved-gan's, 1 is tf-gan's form.
    from_logits: whether the input is logits (log-softmax taken in float64).

  Returns:
    (mean, std) over parts; std is the population std (ddof=0), 0 for one part.
  """
  log_p = _log_probs(probs_or_logits, from_logits)
  n = log_p.shape[0]
  if splits < 1:
    raise ValueError(f'splits must be >= 1, got {splits}.')
  if n < splits:
    raise ValueError(f'Need at least one row per split: {n} rows for '
                     f'{splits} splits.')
  scores = np.array([
      _split_score(log_p[i * n // splits:(i + 1) * n // splits])
      for i in range(splits)
  ])
  return float(scores.mean()), float(scores.std())


def inception_score_improved_gan(probs_or_logits,
                                 from_logits: bool = False
                                ) -> tuple[float, float]:
  """OpenAI improved-gan IS: 10 contiguous splits (as the NCSN paper)."""
  return inception_score(probs_or_logits, splits=10, from_logits=from_logits)


def inception_score_tfgan(logits) -> float:
  """tf-gan / score_sde IS: one split over all rows, from logits."""
  return inception_score(logits, splits=1, from_logits=True)[0]


def _polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
  """k(x, y) = (x.y / d + 1)^3 for x [n,D], y [m,D]; returns [n,m]."""
  return (x @ y.T / x.shape[1] + 1.0)**3


def mmd2_unbiased(x, y, dtype=np.float64) -> float:
  """Unbiased MMD^2 between samples x [m,D] and y [n,D], cubic kernel.

  sum_{i!=j} k(x_i, x_j) / (m (m-1)) + sum_{i!=j} k(y_i, y_j) / (n (n-1))
  - 2 mean_{i,j} k(x_i, y_j).
  """
  x = np.asarray(x, dtype=dtype)
  y = np.asarray(y, dtype=dtype)
  m, n = x.shape[0], y.shape[0]
  if m < 2 or n < 2:
    raise ValueError(f'Unbiased MMD^2 needs >= 2 samples per set, got {m} '
                     f'and {n}.')
  k_xx = _polynomial_kernel(x, x)
  k_yy = _polynomial_kernel(y, y)
  k_xy = _polynomial_kernel(x, y)
  return float((k_xx.sum() - np.trace(k_xx)) / (m * (m - 1)) +
               (k_yy.sum() - np.trace(k_yy)) / (n * (n - 1)) -
               2.0 * k_xy.mean())


def _check_feature_pair(f_real, f_fake, dtype):
  x = np.asarray(f_real, dtype=dtype)
  y = np.asarray(f_fake, dtype=dtype)
  if x.ndim != 2 or y.ndim != 2:
    raise ValueError(f'Features must be 2-D [N,D], got shapes {x.shape} and '
                     f'{y.shape}.')
  if x.shape[1] != y.shape[1]:
    raise ValueError(f'Feature dimension mismatch: {x.shape[1]} vs '
                     f'{y.shape[1]}.')
  return x, y


def kid_block_sizes(n: int, n_blocks: int) -> np.ndarray:
  """tf-gan block sizes: floor(n / n_blocks), the last n % n_blocks one more."""
  base, plus_one = divmod(n, n_blocks)
  return np.array([base] * (n_blocks - plus_one) + [base + 1] * plus_one)


def kernel_inception_distance(f_real, f_fake, max_block_size: int = 1024,
                              dtype=np.float64) -> tuple[float, float]:
  """KID with tf-gan's block scheme (score_sde's default).

  n_blocks = ceil(max(N_real, N_fake) / max_block_size). Each set is cut in
  order, without shuffling, into n_blocks contiguous blocks (see
  `kid_block_sizes`); block b of the real set is paired with block b of the
  fake set and scores the unbiased MMD^2 (`mmd2_unbiased`).

  Args:
    f_real: [N_real,D] features of real data.
    f_fake: [N_fake,D] features of samples.
    max_block_size: the largest block of the larger set.
    dtype: arithmetic dtype; score_sde computes in float32.

  Returns:
    (mean over blocks, sqrt(var_ddof1 / n_blocks)); std is NaN for one block.
  """
  x, y = _check_feature_pair(f_real, f_fake, dtype)
  if max_block_size < 2:
    raise ValueError(f'max_block_size must be >= 2, got {max_block_size}.')
  n_blocks = math.ceil(max(x.shape[0], y.shape[0]) / max_block_size)
  if min(x.shape[0], y.shape[0]) < 2 * max(n_blocks, 1):
    raise ValueError(
        f'KID needs >= 2 samples per block: {x.shape[0]} real and '
        f'{y.shape[0]} fake features in {n_blocks} blocks.')
  bounds_x = np.concatenate([[0], np.cumsum(kid_block_sizes(x.shape[0],
                                                            n_blocks))])
  bounds_y = np.concatenate([[0], np.cumsum(kid_block_sizes(y.shape[0],
                                                            n_blocks))])
  ests = np.array([
      mmd2_unbiased(x[bounds_x[b]:bounds_x[b + 1]],
                    y[bounds_y[b]:bounds_y[b + 1]], dtype)
      for b in range(n_blocks)
  ])
  std = (float(np.sqrt(ests.var(ddof=1) / n_blocks))
         if n_blocks > 1 else float('nan'))
  return float(ests.mean()), std


def kid_subsets(f_real, f_fake, num_subsets: int = 100,
                max_subset_size: int = 1000, seed: int = 0,
                dtype=np.float64) -> tuple[float, float]:
  """KID with the MMD-GAN/StyleGAN random-subset scheme.

  Draws `num_subsets` pairs of subsets of size m = min(N_real, N_fake,
  max_subset_size), each without replacement (NumPy `default_rng(seed)`), and
  averages their unbiased MMD^2.

  Returns:
    (mean, std) over subsets; std has ddof=1 (NaN for one subset).
  """
  x, y = _check_feature_pair(f_real, f_fake, dtype)
  m = min(x.shape[0], y.shape[0], max_subset_size)
  if m < 2:
    raise ValueError(f'KID needs >= 2 samples per set, got {x.shape[0]} and '
                     f'{y.shape[0]}.')
  if num_subsets < 1:
    raise ValueError(f'num_subsets must be >= 1, got {num_subsets}.')
  rng = np.random.default_rng(seed)
  ests = np.array([
      mmd2_unbiased(x[rng.choice(x.shape[0], m, replace=False)],
                    y[rng.choice(y.shape[0], m, replace=False)], dtype)
      for _ in range(num_subsets)
  ])
  std = float(ests.std(ddof=1)) if num_subsets > 1 else float('nan')
  return float(ests.mean()), std
