"""Annealed Langevin dynamics as one `lax.scan`.

Levels and steps are flattened into L*T scan iterations: the noise levels are
a traced array, so the compiled program (and its compile time) does not grow
with L or T. Conventions follow NCSNv2: at level c the step size is
alpha_c = eps (sigma_c / sigma_L)^2 and one step is
x <- x + alpha_c s(x, c) + sqrt(2 alpha_c) z. (The NCSN paper writes the same
update as x + eps'/2 s + sqrt(eps') z, i.e. eps' = 2 eps.) Nothing is clipped
inside the chain. Langevin noise of example i at step t is drawn from
fold_in(key_i, t), key_i = fold_in(key, global index of i), so results do not
depend on how a batch is split over devices.
"""

from typing import Callable, Optional

import jax
import jax.numpy as jnp

from ncsn_jax import noise
from ncsn_jax import random_utils
from ncsn_jax import transforms

ScoreFn = Callable[[jax.Array, jax.Array], jax.Array]


def _langevin_step(score_fn, keys, sigmas, n_steps_each, step_lr):
  """One Langevin update as a scan body `(x, t) -> (x, None)`."""

  def step(x, t):
    level = t // n_steps_each
    alpha = step_lr * (sigmas[level] / sigmas[-1])**2
    labels = jnp.full((x.shape[0],), level, jnp.int32)
    grad = score_fn(x, labels)
    step_keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, t)
    z = random_utils.per_example_normal(step_keys, x.shape[1:], x.dtype)
    return x + alpha * grad + jnp.sqrt(2.0 * alpha) * z, None

  return step


def annealed_langevin(score_fn: ScoreFn,
                      x0: jax.Array,
                      key: jax.Array,
                      sigmas: jax.Array,
                      n_steps_each: int,
                      step_lr: float,
                      denoise: bool = False,
                      record_every: int = 0,
                      example_offset=0):
  """Runs annealed Langevin dynamics from `x0`.

  Args:
    score_fn: `score_fn(x [B,...], labels [B]) -> [B,...]`.
    x0: initial states `[B,...]` in the model's input space.
    key: root key of the chain's noise.
    sigmas: noise levels `[L]`, descending (traced, any length).
    n_steps_each: Langevin steps T per level (static).
    step_lr: eps of the step-size rule.
    denoise: finish with x + sigma_L^2 s(x, L-1) (one extra evaluation).
    record_every: if k > 0, also return every k-th chain state.
    example_offset: global index of `x0[0]` (per-device offset under pmap).

  Returns:
    (final states `[B,...]`, trajectory `[L*T//k (+1), B,...]` or None).
    With denoising the trajectory ends with the denoised state.
  """
  total = sigmas.shape[0] * n_steps_each
  keys = random_utils.per_example_keys(key, x0.shape[0], example_offset)
  step = _langevin_step(score_fn, keys, sigmas, n_steps_each, step_lr)
  steps = jnp.arange(total, dtype=jnp.int32)
  trajectory = None
  if record_every > 0:
    n_rec = total // record_every
    chunks = steps[:n_rec * record_every].reshape(n_rec, record_every)

    def chunk(x, ts):
      x, _ = jax.lax.scan(step, x, ts)
      return x, x

    x, trajectory = jax.lax.scan(chunk, x0, chunks)
    x, _ = jax.lax.scan(step, x, steps[n_rec * record_every:])
  else:
    x, _ = jax.lax.scan(step, x0, steps)
  if denoise:
    last = jnp.full((x.shape[0],), sigmas.shape[0] - 1, jnp.int32)
    x = x + sigmas[-1]**2 * score_fn(x, last)
    if trajectory is not None:
      trajectory = jnp.concatenate([trajectory, x[None]], axis=0)
  return x, trajectory


def langevin(score_fn: ScoreFn, x0: jax.Array, key: jax.Array, step_size,
             n_steps: int, example_offset=0) -> jax.Array:
  """Plain Langevin, x <- x + step/2 s(x) + sqrt(step) z (paper convention).

  It is annealed Langevin with a single level; `score_fn` gets label 0.
  """
  x, _ = annealed_langevin(score_fn, x0, key, jnp.ones((1,)), n_steps,
                           step_size / 2.0, example_offset=example_offset)
  return x


def init_samples(key: jax.Array, config, batch_size: int,
                 data: Optional[jax.Array] = None, example_offset=0):
  """Initial chain states in the model's input space `[B,H,W,C]`.

  Uniform U[0, 1) images mapped by the data transform, or, when `data`
  (data-space images `[B,H,W,C]`) is given, data + sigma_1 z (NCSNv2's
  `data_init`).
  """
  shape = (config.data.image_size, config.data.image_size,
           config.data.channels)
  keys = random_utils.per_example_keys(key, batch_size, example_offset)
  if data is None:
    return transforms.data_transform(
        random_utils.per_example_uniform(keys, shape), config)
  sigma_1 = float(noise.get_sigmas(config)[0])
  z = random_utils.per_example_normal(keys, shape)
  return transforms.data_transform(data, config) + sigma_1 * z


def get_sampler(config, model):
  """Builds `sample_fn(params, x0, key, example_offset) -> (x, trajectory)`.

  The settings (T, eps, denoising, thinning) come from `config.sampling`;
  the function is pure and can be jitted or pmapped (see `parallel`).
  """
  sigmas = jnp.asarray(noise.get_sigmas(config))
  s = config.sampling

  def sample_fn(params, x0, key, example_offset=0):
    score_fn = lambda x, y: model.apply({'params': params}, x, y)
    return annealed_langevin(score_fn, x0, key, sigmas, s.n_steps_each,
                             s.step_lr, s.denoise, s.record_every,
                             example_offset)

  return sample_fn
