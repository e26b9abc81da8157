"""Maps between data space ([0, 1] images) and the model's input space.

Dequantisation happens in the input pipeline; these pure functions apply the
deterministic part (logit or [-1, 1] rescaling) on the device, and undo it
for display and metrics. With neither option the model space is [0, 1] and
the network rescales to [-1, 1] itself, as the reference configs do.
"""

import jax.numpy as jnp

from ncsn_jax import errors

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
