"""A network seen as a score function: noise levels, input space, `ScoreFn`.

Losses, samplers, the toy experiment and evaluation all call the network
through `ScoreFn`: `score_fn(x [B,...], labels [B]) -> scores [B,...]`, the
labels indexing the noise levels (label 0 = the largest sigma). Plain
(unconditional) networks are called without labels.

The noise levels sigma_1 > ... > sigma_L are computed in float64 and cast
once to float32, as the reference stores them (so sigma_L of a 0.01 schedule
is 0.0099999998).

The network sees images in its input space: data ([0, 1] images) mapped by
`data_transform` (logit or [-1, 1] rescaling; dequantisation happens in the
input pipeline), and `inverse_data_transform` maps back for display and
metrics. With neither option the model space is [0, 1] and the network
rescales to [-1, 1] itself, as the reference configs do.
"""

from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# score_fn(x [B,...], labels [B] or None) -> scores [B,...].
ScoreFn = Callable[[jax.Array, Optional[jax.Array]], jax.Array]
LOGIT_LAMBDA = 1e-6


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


def make_sigmas(sigma_begin: float, sigma_end: float, num_classes: int,
                dist: str = 'geometric') -> np.ndarray:
  """Descending noise levels, float32 `[num_classes]`.

  Args:
    sigma_begin: the largest level sigma_1.
    sigma_end: the smallest level sigma_L, 0 < sigma_end < sigma_begin.
    num_classes: the number of levels L >= 1.
    dist: 'geometric' (constant ratio) or 'uniform' (constant difference).

  Returns:
    The levels, float32, descending.
  """
  if dist == 'geometric':
    sigmas = np.exp(np.linspace(np.log(sigma_begin), np.log(sigma_end),
                                num_classes, dtype=np.float64))
  else:  # 'uniform' (config_checks.SIGMA_DISTS)
    sigmas = np.linspace(sigma_begin, sigma_end, num_classes, dtype=np.float64)
  return sigmas.astype(np.float32)


def get_sigmas(config) -> np.ndarray:
  """The noise levels of `config.model`, float32 `[L]`."""
  m = config.model
  return make_sigmas(m.sigma_begin, m.sigma_end, m.num_classes, m.sigma_dist)


def data_transform(x, config):
  """Data `[B,H,W,C]` in [0, 1] -> model input space."""
  if config.data.rescaled:
    return 2.0 * x - 1.0
  if config.data.logit_transform:
    p = LOGIT_LAMBDA + (1.0 - 2.0 * LOGIT_LAMBDA) * x
    return jnp.log(p) - jnp.log1p(-p)
  return x


def inverse_data_transform(x, config):
  """Model space -> data space, clipped to [0, 1] (for images and metrics)."""
  if config.data.logit_transform:
    x = 1.0 / (1.0 + jnp.exp(-x))
  elif config.data.rescaled:
    x = (x + 1.0) / 2.0
  return jnp.clip(x, 0.0, 1.0)
