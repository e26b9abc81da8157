"""Interpolation as a noise hook on `langevin.annealed_langevin`.

As NCSNv2's `anneal_Langevin_dynamics_interpolation`: each row of the grid
starts all its chains from one initial state; at every step the row draws two
noises p, q and chain k of the row uses cos(theta_k) p + sin(theta_k) q,
theta_k = linspace(0, pi/2, n)_k, so the first chain of a row is driven by p
alone and the last by q alone (unit variance for every k). Row r's p and q
at step t come from the two halves of split(fold_in(key_r, t)).
"""

import jax
import jax.numpy as jnp

from ncsn_jax import parallel
from ncsn_jax.models import score
from ncsn_jax.sampling import langevin


def rotation(n: int, ndim: int):
  """(cos, sin) of theta = linspace(0, pi/2, n), shaped `[1, n, 1...]`."""
  theta = jnp.linspace(0.0, jnp.pi / 2, n)
  cos = jnp.cos(theta).reshape((1, n) + (1,) * ndim)
  sin = jnp.sin(theta).reshape((1, n) + (1,) * ndim)
  # sin(pi/2) etc. are exact up to rounding; pin the endpoints exactly.
  cos, sin = cos.at[:, 0].set(1.0), sin.at[:, 0].set(0.0)
  if n > 1:
    cos, sin = cos.at[:, -1].set(0.0), sin.at[:, -1].set(1.0)
  return cos, sin


def rotated_noise(n: int) -> langevin.NoiseFn:
  """`noise_fn(row keys [R], t, x [R*n,...])` of the interpolation."""

  def noise_fn(keys, t, x):
    shape = x.shape[1:]
    cos, sin = rotation(n, len(shape))
    p_keys, q_keys = parallel.split_each(parallel.step_keys(keys, t))
    p = parallel.per_example_normal(p_keys, shape, x.dtype)[:, None]
    q = parallel.per_example_normal(q_keys, shape, x.dtype)[:, None]
    return (cos * p + sin * q).reshape(x.shape)

  return noise_fn


def annealed_langevin_interpolation(score_fn: score.ScoreFn,
                                    x0: jax.Array,
                                    keys: jax.Array,
                                    sigmas: jax.Array,
                                    n_steps_each: int,
                                    step_lr: float,
                                    n_interpolations: int,
                                    denoise: bool = False,
                                    record_every: int = 0):
  """Annealed Langevin chains whose noises interpolate on a circle.

  Args:
    score_fn: `score_fn(x [N,...], labels [N]) -> [N,...]`.
    x0: one initial state per row `[R,...]`.
    keys: per-row keys `[R]`.
    sigmas: noise levels `[L]`, descending.
    n_steps_each: steps T per level (static).
    step_lr: eps of the step-size rule.
    n_interpolations: chains n per row (static).
    denoise: NCSNv2's final Tweedie step.
    record_every: if k > 0, also return every k-th chain state.

  Returns:
    (states `[R * n,...]` row-major, trajectory `[m, R * n,...]` or None).
  """
  n = n_interpolations
  return langevin.annealed_langevin(
      score_fn, jnp.repeat(x0, n, axis=0), keys, sigmas, n_steps_each,
      step_lr, denoise, record_every, rotated_noise(n))


def get_interpolation_sampler(config, model):
  """Builds `sample_fn(params, x0 [R,...], keys [R]) -> (x [R*n,...], traj)`.

  n = `config.sampling.n_interpolations`; the other settings come from
  `config.sampling` too.
  """
  sigmas = jnp.asarray(score.get_sigmas(config))
  s = config.sampling

  def sample_fn(params, x0, keys):
    return annealed_langevin_interpolation(
        langevin.sampler_score_fn(config, model, params), x0, keys, sigmas,
        s.n_steps_each, s.step_lr, s.n_interpolations, s.denoise,
        s.record_every)

  return sample_fn
