"""A network with its parameters, seen as a score function.

Losses, samplers, the toy experiment and evaluation all call the network
through `ScoreFn`: `score_fn(x [B,...], labels [B]) -> scores [B,...]`, the
labels indexing the noise levels (label 0 = the largest sigma). Plain
(unconditional) networks are called without labels.
"""

from typing import Any, Callable, Optional
import flax.linen as nn
import jax
import numpy as np
from ncsn_jax import errors
import jax.numpy as jnp

# score_fn(x [B,...], labels [B] or None) -> scores [B,...].
ScoreFn = Callable[[jax.Array, Optional[jax.Array]], jax.Array]


def make_score_fn(model: nn.Module, params: Any) -> ScoreFn:
  """`score_fn(x, labels=None)` of `model` with `params`.

  Args:
    model: a flax score network `model(x [B,...], labels [B]) -> [B,...]`
      (or `model(x)` for an unconditional one).
    params: its parameters (the `'params'` collection).

  Returns:
    The score function; with `labels=None` the network gets `x` only.
  """

  def score_fn(x: jax.Array, labels: Optional[jax.Array] = None):
    if labels is None:
      return model.apply({'params': params}, x)
    return model.apply({'params': params}, x, labels)

  return score_fn


# ----------------------------------------------------------------- noise
# Noise-level schedules sigma_1 > ... > sigma_L.


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


# ------------------------------------------------------------ transforms
# Maps between data space ([0, 1] images) and the model's input space.


LOGIT_LAMBDA = 1e-6


def check_config(config) -> None:
  """Raises ConfigError when `config.data` asks for two input spaces."""
  if config.data.rescaled and config.data.logit_transform:
    raise errors.ConfigError(
        'config.data.rescaled and config.data.logit_transform are both set; '
        'choose one input space (set the other to False).')


def data_transform(x, config):
  """Data `[B,H,W,C]` in [0, 1] -> model input space."""
  check_config(config)
  if config.data.rescaled:
    return 2.0 * x - 1.0
  if config.data.logit_transform:
    p = LOGIT_LAMBDA + (1.0 - 2.0 * LOGIT_LAMBDA) * x
    return jnp.log(p) - jnp.log1p(-p)
  return x


def inverse_data_transform(x, config):
  """Model space -> data space, clipped to [0, 1] (for images and metrics)."""
  check_config(config)
  if config.data.logit_transform:
    x = 1.0 / (1.0 + jnp.exp(-x))
  elif config.data.rescaled:
    x = (x + 1.0) / 2.0
  return jnp.clip(x, 0.0, 1.0)
