"""Annealed Langevin dynamics as one `lax.scan`: the one Langevin update.

Levels and steps are flattened into L*T scan iterations: the noise levels are
a traced array, so the compiled program (and its compile time) does not grow
with L or T. Conventions follow NCSNv2: at level c the step size is
alpha_c = eps (sigma_c / sigma_L)^2 and one step is
x <- x + alpha_c s(x, c) + sqrt(2 alpha_c) z. (The NCSN paper writes the same
update as x + eps'/2 s + sqrt(eps') z, i.e. eps' = 2 eps.) Nothing is clipped
inside the chain.

Randomness is data: the sampler gets per-example keys `[B]` (key_i =
fold_in(root, global index of i), see `parallel`), and by default the
Langevin noise of example i at step t is drawn from fold_in(key_i, t), so
results do not depend on how a batch is split over devices. Inpainting and
interpolation (`inpainting.py`, `interpolation.py`) are hooks on
`annealed_langevin`: a per-step noise function and a projection applied
before each update.
"""

from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from ncsn_jax import console
from ncsn_jax import parallel
from ncsn_jax.models import score

# noise_fn(keys [B], t, x [N,...]) -> z [N,...], the Langevin noise of step t.
NoiseFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]
# project_fn(keys [B], t, sigma_c, x [N,...]) -> x, applied before step t.
ProjectFn = Callable[[jax.Array, jax.Array, jax.Array, jax.Array], jax.Array]


def default_noise(keys: jax.Array, t: jax.Array, x: jax.Array) -> jax.Array:
  """N(0, I) per example from fold_in(key_i, t), shaped like `x`."""
  return parallel.per_example_normal(parallel.step_keys(keys, t),
                                     x.shape[1:], x.dtype)


def _run_scan(step, x0, total: int, record_every: int):
  """Runs `step(x, t) -> (x, None)` for t < total; optionally thinned states.

  Returns:
    (final state, every `record_every`-th state `[total // k, ...]` or None).
  """
  steps = jnp.arange(total, dtype=jnp.int32)
  if record_every <= 0:
    return jax.lax.scan(step, x0, steps)[0], None
  n_rec = total // record_every

  def chunk(x, ts):
    x, _ = jax.lax.scan(step, x, ts)
    return x, x

  x, trajectory = jax.lax.scan(
      chunk, x0, steps[:n_rec * record_every].reshape(n_rec, record_every))
  x, _ = jax.lax.scan(step, x, steps[n_rec * record_every:])
  return x, trajectory


def annealed_langevin(score_fn: score.ScoreFn,
                      x0: jax.Array,
                      keys: jax.Array,
                      sigmas: jax.Array,
                      n_steps_each: int,
                      step_lr: float,
                      denoise: bool = False,
                      record_every: int = 0,
                      noise_fn: Optional[NoiseFn] = None,
                      project_fn: Optional[ProjectFn] = None):
  """Runs annealed Langevin dynamics from `x0`.

  Step t (level c = t // T) computes alpha_c = eps (sigma_c / sigma_L)^2,
  optionally projects x <- project_fn(keys, t, sigma_c, x), then updates
  x <- x + alpha_c s(x, c) + sqrt(2 alpha_c) noise_fn(keys, t, x).

  Args:
    score_fn: `score_fn(x [N,...], labels [N]) -> [N,...]`.
    x0: initial states `[N,...]` in the model's input space.
    keys: per-example keys `[B]`, sharded with `x0` (B = N unless a hook
      maps one key to several chains, as interpolation does).
    sigmas: noise levels `[L]`, descending (traced, any length).
    n_steps_each: Langevin steps T per level (static).
    step_lr: eps of the step-size rule.
    denoise: finish with x + sigma_L^2 s(x, L-1) (one extra evaluation).
    record_every: if k > 0, also return every k-th chain state.
    noise_fn: hook `noise_fn(keys, t, x) -> z [N,...]` giving the Langevin
      noise of step t (int32 scalar); default `default_noise`. A test can
      feed recorded draws through it.
    project_fn: hook `project_fn(keys, t, sigma_c, x) -> x` applied before
      every update (inpainting imposes its known pixels with it).

  Returns:
    (final states `[N,...]`, trajectory `[L*T//k (+1), N,...]` or None).
    With denoising the trajectory ends with the denoised state.
  """
  noise_fn = noise_fn or default_noise

  def step(x, t):
    level = t // n_steps_each
    sigma = sigmas[level]
    alpha = step_lr * (sigma / sigmas[-1])**2
    if project_fn is not None:
      x = project_fn(keys, t, sigma, x)
    grad = score_fn(x, jnp.full((x.shape[0],), level, jnp.int32))
    z = noise_fn(keys, t, x)
    return x + alpha * grad + jnp.sqrt(2.0 * alpha) * z, None

  x, trajectory = _run_scan(step, x0, sigmas.shape[0] * n_steps_each,
                            record_every)
  if denoise:
    last = jnp.full((x.shape[0],), sigmas.shape[0] - 1, jnp.int32)
    x = x + sigmas[-1]**2 * score_fn(x, last)
    if trajectory is not None:
      trajectory = jnp.concatenate([trajectory, x[None]], axis=0)
  return x, trajectory


def langevin(score_fn: score.ScoreFn, x0: jax.Array, keys: jax.Array,
             step_size, n_steps: int,
             noise_fn: Optional[NoiseFn] = None) -> jax.Array:
  """Plain Langevin, x <- x + step/2 s(x) + sqrt(step) z (paper convention).

  It is annealed Langevin with a single level; `score_fn` gets label 0.
  """
  x, _ = annealed_langevin(score_fn, x0, keys, jnp.ones((1,)), n_steps,
                           step_size / 2.0, noise_fn=noise_fn)
  return x


def init_samples(keys: jax.Array, config,
                 data: Optional[jax.Array] = None) -> jax.Array:
  """Initial chain states in the model's input space `[B,H,W,C]`.

  Uniform U[0, 1) images mapped by the data transform, or, when `data`
  (data-space images `[B,H,W,C]`) is given, data + sigma_1 z (NCSNv2's
  `data_init`); example i draws from its key `keys[i]` (`[B]`).
  """
  shape = (config.data.image_size, config.data.image_size,
           config.data.channels)
  if data is None:
    return score.data_transform(
        parallel.per_example_uniform(keys, shape), config)
  sigma_1 = float(score.get_sigmas(config)[0])
  z = parallel.per_example_normal(keys, shape)
  return score.data_transform(data, config) + sigma_1 * z


def sampler_score_fn(config, model, params) -> score.ScoreFn:
  """The network as the sampler runs it: in `config.sampling.dtype` (the
  model's own dtype when empty; parameters stay float32)."""
  dtype = config.sampling.get('dtype')
  if dtype:
    model = model.clone(dtype=jnp.dtype(dtype))
  return score.make_score_fn(model, params)


def get_sampler(config, model, noise_fn: Optional[NoiseFn] = None):
  """Builds `sample_fn(params, x0 [B,...], keys [B]) -> (x, trajectory)`.

  The settings (T, eps, denoising, thinning) come from `config.sampling`;
  `noise_fn` is passed to `annealed_langevin`. The function is pure: jit it,
  or pmap it once with `parallel.pmap_sampler` and reuse the result.
  """
  sigmas = jnp.asarray(score.get_sigmas(config))
  s = config.sampling

  def sample_fn(params, x0, keys):
    return annealed_langevin(sampler_score_fn(config, model, params), x0, keys,
                             sigmas, s.n_steps_each, s.step_lr, s.denoise,
                             s.record_every, noise_fn)

  return sample_fn


# ------------------------ host side: samples drawn with a sampler pmapped once
#
# `p_sample` is `parallel.pmap_sampler(langevin.get_sampler(config, model))`,
# built once per process and passed to every snapshot, sample-mode call and
# swept checkpoint, so the sampler compiles once. Batch i of `generate` and
# the single batch of `sample_batch` start chain j from the key
# fold_in(batch key, j), which also drives its Langevin noise.


def sample_batch(config, p_sample, params, key: jax.Array, n: int,
                 data: Optional[np.ndarray] = None):
  """`n` chains from `key`: (samples, trajectory) in data space (NumPy).

  Args:
    config: run config (data transform, `sampling.data_init` handled by the
      caller through `data`).
    p_sample: `p_sample(params, x0, keys) -> (x, trajectory or None)`.
    params: the model parameters (usually the EMA ones).
    key: root key of the batch.
    n: number of chains (divisible by the local device count).
    data: data-space images `[n,H,W,C]` to start from (NCSNv2's data_init).

  Returns:
    (samples float `[n,H,W,C]`, trajectory `[m, n,H,W,C]` or None).
  """
  keys = parallel.per_example_keys(key, n)
  x0 = init_samples(keys, config, data)
  x, trajectory = p_sample(params, x0, keys)
  images = np.asarray(score.inverse_data_transform(x, config))
  if trajectory is not None:
    trajectory = np.asarray(
        score.inverse_data_transform(trajectory, config))
  return images, trajectory


def generate(config, p_sample, params, key: jax.Array, n: int) -> np.ndarray:
  """`n` samples in data space, float `[n,H,W,C]`, in sampler-sized batches.

  Every batch has `config.sampling.batch_size` chains (the last one padded),
  so the sampler runs one compiled shape; batch i uses fold_in(key, i).
  Reports progress per batch (`console.Progress`).
  """
  batch = config.sampling.batch_size
  out = []
  with console.Progress(n, 'sampling', unit='samples') as bar:
    for i in range(-(-n // batch)):
      out.append(sample_batch(config, p_sample, params,
                              jax.random.fold_in(key, i), batch)[0])
      bar.update(min(batch, n - i * batch))
  return np.concatenate(out)[:n]
