"""Sample-quality metrics (FID, IS, KID) from precomputed features.

Pure NumPy/SciPy on the host, in float64 unless a function says otherwise. The
feature extractor (Inception or a small classifier) is injected by the caller;
this module never sees images.

* FID (Heusel et al., 2017, "GANs trained by a two time-scale update rule"):
  ||mu1 - mu2||^2 + tr(S1 + S2 - 2 sqrtm(S1 S2)) of the Gaussian fits
  (`mean_and_covariance`), with `scipy.linalg.sqrtm` and the eps * I retry of
  the TTUR code (or a faster, equivalent symmetric eigendecomposition,
  `method='eigh'`).
* IS (Salimans et al., 2016, "Improved techniques for training GANs"):
  exp(E KL(p(y|x) || p(y))), mean and population std over 10 contiguous
  splits (one split for small sets, `splits=1`).
* KID (Binkowski et al., 2018, "Demystifying MMD GANs"): the unbiased MMD^2
  with the cubic polynomial kernel k(x, y) = (x.y / d + 1)^3, averaged over
  contiguous, unshuffled blocks of at most 1024 (the tf-gan scheme).
"""

import math
from typing import Optional
import warnings

from absl import logging
import numpy as np
import scipy.linalg
import scipy.special


def _as_features(features) -> np.ndarray:
  """Checks `features` is [N,D]; returns float64."""
  x = np.asarray(features, dtype=np.float64)
  if x.ndim != 2:
    raise ValueError(f'Features must be 2-D [N,D], got shape {x.shape}.')
  return x


def mean_and_covariance(features) -> tuple[np.ndarray, np.ndarray]:
  """Mean [D] and unbiased covariance [D,D] (ddof=1, as `np.cov`), float64.

  The products are taken about the mean (`x - mean`), which avoids the
  cancellation of `sum x x^T - N mean mean^T` for features with a large
  mean; the result is symmetrised.
  """
  x = _as_features(features)
  n = x.shape[0]
  if n < 2:
    raise ValueError(
        f'Need at least 2 feature vectors for a covariance, got {n}.')
  shift = x.mean(axis=0)
  centred = x - shift
  mean_shifted = centred.sum(axis=0) / n
  sigma = (centred.T @ centred -
           n * np.outer(mean_shifted, mean_shifted)) / (n - 1)
  return shift + mean_shifted, 0.5 * (sigma + sigma.T)


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
