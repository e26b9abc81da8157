"""Score-matching losses as pure functions.

A score function here is `score_fn(x, labels) -> scores` with `x` `[B,...]`
and integer noise labels `[B]`; `keys` `[B]` are per-example keys (see
`random_utils.per_example_keys`), so each example's draws depend only on its
own key.
"""

from typing import Callable

import jax
import jax.numpy as jnp

from ncsn_jax import noise
from ncsn_jax import random_utils

ScoreFn = Callable[[jax.Array, jax.Array], jax.Array]


def _sum_except_batch(x: jax.Array) -> jax.Array:
  return jnp.sum(x.reshape(x.shape[0], -1), axis=-1)


def perturb(keys: jax.Array, x: jax.Array, sigmas: jax.Array):
  """Draws a noise label and Gaussian noise per example.

  Args:
    keys: per-example keys `[B]`.
    x: clean data `[B,...]`.
    sigmas: noise levels `[L]`, descending.

  Returns:
    (labels int32 `[B]`, noise z `[B,...]` ~ N(0, I)).
  """
  label_keys, noise_keys = jax.vmap(jax.random.split, out_axes=1)(keys)
  labels = jax.vmap(
      lambda k: jax.random.randint(k, (), 0, sigmas.shape[0]))(label_keys)
  z = random_utils.per_example_normal(noise_keys, x.shape[1:], x.dtype)
  return labels.astype(jnp.int32), z


def annealed_dsm_loss(score_fn: ScoreFn, x: jax.Array, keys: jax.Array,
                      sigmas: jax.Array, anneal_power: float = 2.0):
  """Annealed denoising score matching (NCSN eq. 6 with lambda = sigma^p).

  One noise level per example: x~ = x + sigma_y z; the per-example loss is
  1/2 sum_pixels (s(x~, y) + (x~ - x) / sigma_y^2)^2 sigma_y^p.

  Args:
    score_fn: the score model.
    x: data in the model's input space `[B,H,W,C]`.
    keys: per-example keys `[B]`.
    sigmas: noise levels `[L]`.
    anneal_power: the exponent p of the weighting sigma^p.

  Returns:
    (mean loss over the batch, {'losses': `[B]`, 'labels': `[B]`}).
  """
  labels, z = perturb(keys, x, sigmas)
  sigma = sigmas[labels].reshape((-1,) + (1,) * (x.ndim - 1))
  x_tilde = x + sigma * z
  target = -(x_tilde - x) / sigma**2
  scores = score_fn(x_tilde, labels)
  losses = 0.5 * _sum_except_batch((scores - target)**2)
  losses = losses * sigmas[labels]**anneal_power
  return jnp.mean(losses), {'losses': losses, 'labels': labels}


def get_loss_fn(config, model):
  """Builds `loss_fn(params, x, keys) -> (loss, aux)` for a config.

  Args:
    config: experiment config (`training.loss`, `training.anneal_power`,
      model noise levels).
    model: the flax score network.

  Returns:
    The pure loss function of the config's `training.loss`.
  """
  sigmas = jnp.asarray(noise.get_sigmas(config))
  name = config.training.loss
  if name != 'dsm':
    raise ValueError(f"config.training.loss={name!r} is unknown; use 'dsm'.")
  power = config.training.anneal_power

  def loss_fn(params, x, keys):
    score_fn = lambda x, y: model.apply({'params': params}, x, y)
    return annealed_dsm_loss(score_fn, x, keys, sigmas, power)

  return loss_fn
