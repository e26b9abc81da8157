"""Inpainting as a projection hook on `langevin.annealed_langevin`.

As NCSNv2's `anneal_Langevin_dynamics_inpainting`: before every update of
level c the known pixels (mask = 1) are replaced by reference + sigma_c z',
with fresh z' at every step; the output carries the reference's known pixels
exactly. The draws of example i at step t come from fold_in(key_i, t), split
into the key of z' and the key of the Langevin noise.
"""

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from ncsn_jax import parallel
from ncsn_jax.models import score
from ncsn_jax.sampling import langevin



def make_mask(kind: str, shape, key=None) -> np.ndarray:
  """Known-pixel mask `[H, W, C]` (1 = known, 0 = to fill in).

  Args:
    kind: the region to fill: 'right_half' (NCSNv2's setting: the left half
      columns are known), 'left_half', 'top_half', 'bottom_half', 'center'
      (a centred square of half the side), or 'random' (each pixel, all its
      channels, with probability 1/2).
    shape: (H, W, C).
    key: JAX key of the 'random' mask.

  Returns:
    float32 mask `[H, W, C]`.
  """
  h, w, c = shape
  known = np.ones((h, w), np.float32)
  if kind == 'right_half':
    known[:, w // 2:] = 0
  elif kind == 'left_half':
    known[:, :w - w // 2] = 0
  elif kind == 'bottom_half':
    known[h // 2:] = 0
  elif kind == 'top_half':
    known[:h - h // 2] = 0
  elif kind == 'center':
    known[h // 4:h // 4 + h // 2, w // 4:w // 4 + w // 2] = 0
  elif kind == 'random':
    key = jax.random.key(0) if key is None else key
    known = np.asarray(jax.random.bernoulli(key, 0.5, (h, w)), np.float32)
  else:
    raise ValueError(f'unknown inpainting mask {kind!r} (config_checks.MASKS).')
  return np.repeat(known[..., None], c, axis=-1)


def default_known_noise(keys, t, x) -> jax.Array:
  """z' of step t: N(0, I) from the first half of split(fold_in(key_i, t))."""
  known_keys, _ = parallel.split_each(parallel.step_keys(keys, t))
  return parallel.per_example_normal(known_keys, x.shape[1:], x.dtype)


def default_noise(keys, t, x) -> jax.Array:
  """Langevin noise of step t: the second half of that split."""
  _, langevin_keys = parallel.split_each(parallel.step_keys(keys, t))
  return parallel.per_example_normal(langevin_keys, x.shape[1:], x.dtype)


def annealed_langevin_inpainting(
    score_fn: score.ScoreFn,
    x0: jax.Array,
    keys: jax.Array,
    sigmas: jax.Array,
    n_steps_each: int,
    step_lr: float,
    reference: jax.Array,
    mask: jax.Array,
    denoise: bool = False,
    record_every: int = 0,
    noise_fn: Optional[langevin.NoiseFn] = None,
    known_noise_fn: Optional[langevin.NoiseFn] = None):
  """Annealed Langevin dynamics that fills in the unknown pixels.

  At every step of level c the known pixels are first set to
  reference + sigma_c z' (fresh z'), then x <- x + alpha_c s(x, c) +
  sqrt(2 alpha_c) z. After the last step (and the optional denoising step)
  the known pixels are set to the reference exactly.

  Args:
    score_fn: `score_fn(x [B,...], labels [B]) -> [B,...]`.
    x0: initial states `[B,...]` (model space).
    keys: per-example keys `[B]`.
    sigmas: noise levels `[L]`, descending.
    n_steps_each: steps T per level (static).
    step_lr: eps of the step-size rule.
    reference: images to complete `[B,...]` (model space).
    mask: 1 = known; `[B,...]` or broadcastable to it (e.g. `[H,W,C]`).
    denoise: NCSNv2's final Tweedie step before imposing the known pixels.
    record_every: if k > 0, also return every k-th chain state.
    noise_fn: hook `noise_fn(keys, t, x) -> z [B,...]`, the Langevin noise
      of step t (default `default_noise`).
    known_noise_fn: hook `known_noise_fn(keys, t, x) -> z' [B,...]`, the
      known-pixel noise of step t (default `default_known_noise`; only the
      masked pixels are used).

  Returns:
    (completed states `[B,...]`, trajectory `[n,B,...]` or None).
  """
  mask = jnp.broadcast_to(jnp.asarray(mask, x0.dtype), x0.shape)
  known_noise_fn = known_noise_fn or default_known_noise

  def project(keys, t, sigma, x):
    z_known = known_noise_fn(keys, t, x)
    return mask * (reference + sigma * z_known) + (1.0 - mask) * x

  x, trajectory = langevin.annealed_langevin(
      score_fn, x0, keys, sigmas, n_steps_each, step_lr, denoise,
      record_every, noise_fn or default_noise, project)
  return mask * reference + (1.0 - mask) * x, trajectory


def get_inpainting_sampler(
    config, model, noise_fn: Optional[langevin.NoiseFn] = None,
    known_noise_fn: Optional[langevin.NoiseFn] = None):
  """Builds `sample_fn(params, x0, keys, reference, mask) -> (x, trajectory)`.

  Every argument but `params` is per chain and sharded with the batch: `x0`
  `[B,...]`, `keys` `[B]`, the images to complete `reference` `[B,...]`
  (model space) and the known-pixel `mask` `[B,...]`. The hooks are passed
  to `annealed_langevin_inpainting`; the settings come from
  `config.sampling`.
  """
  sigmas = jnp.asarray(score.get_sigmas(config))
  s = config.sampling

  def sample_fn(params, x0, keys, reference, mask):
    return annealed_langevin_inpainting(
        langevin.sampler_score_fn(config, model, params), x0, keys, sigmas,
        s.n_steps_each, s.step_lr, reference, mask, s.denoise, s.record_every, noise_fn,
        known_noise_fn)

  return sample_fn
