"""Noise-level schedules sigma_1 > ... > sigma_L.

The levels are computed in float64 and cast once to float32, as the reference
stores them (so sigma_L of a 0.01 schedule is 0.0099999998). Label 0 indexes
the largest sigma.
"""

import numpy as np

from ncsn_jax import errors

SIGMA_DISTS = ('geometric', 'uniform')  # Spacings of `make_sigmas`.


def make_sigmas(sigma_begin: float, sigma_end: float, num_classes: int,
                dist: str = 'geometric') -> np.ndarray:
  """Descending noise levels, float32 `[num_classes]`.

  Args:
    sigma_begin: the largest level sigma_1.
    sigma_end: the smallest level sigma_L.
    num_classes: the number of levels L.
    dist: 'geometric' (constant ratio) or 'uniform' (constant difference).

  Returns:
    The levels, float32, descending.
  """
  if num_classes < 1:
    raise errors.ConfigError(f'model.num_classes={num_classes} must be >= 1.')
  if not sigma_begin > sigma_end > 0:
    raise errors.ConfigError(f'need model.sigma_begin={sigma_begin} > '
                     f'model.sigma_end={sigma_end} > 0.')
  if dist == 'geometric':
    sigmas = np.exp(np.linspace(np.log(sigma_begin), np.log(sigma_end),
                                num_classes, dtype=np.float64))
  elif dist == 'uniform':
    sigmas = np.linspace(sigma_begin, sigma_end, num_classes, dtype=np.float64)
  else:
    raise errors.ConfigError(
        f"model.sigma_dist={dist!r} is unknown; use 'geometric' "
        "or 'uniform'.")
  return sigmas.astype(np.float32)


def get_sigmas(config) -> np.ndarray:
  """The noise levels of `config.model`, float32 `[L]`."""
  m = config.model
  return make_sigmas(m.sigma_begin, m.sigma_end, m.num_classes, m.sigma_dist)
