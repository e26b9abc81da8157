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

import os
from typing import Callable, Optional

import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import numpy as np

from ncsn_jax import backend
from ncsn_jax import console
from ncsn_jax import errors
from ncsn_jax import outputs
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


def init_shape(config) -> tuple[int, int, int]:
  """The `[H,W,C]` of one chain's state."""
  return (config.data.image_size, config.data.image_size,
          config.data.channels)


def init_samples(keys: jax.Array, config,
                 data: Optional[jax.Array] = None) -> jax.Array:
  """Initial chain states in the model's input space `[B,H,W,C]`.

  Uniform U[0, 1) images mapped by the data transform, or, when `data`
  (data-space images `[B,H,W,C]`) is given, data + sigma_1 z (NCSNv2's
  `data_init`); example i draws from its key `keys[i]` (`[B]`).
  """
  shape = init_shape(config)
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
# swept checkpoint, so the sampler compiles once. Chain j of a batch starts
# from the key fold_in(batch key, j), which also drives its Langevin noise;
# batch i of `generate` uses the batch key fold_in(key, i). A batch runs in
# device calls of at most `chains_per_call` chains (the last one padded, so
# one shape compiles), which bounds device memory and lets progress lines
# come every few seconds; how a batch is cut does not change its numbers.


def chains_per_call(config) -> int:
  """Chains per device call: `sampling.chains_per_call`, else the backend's
  default, a multiple of the local device count."""
  d = jax.local_device_count()
  m = config.sampling.get('chains_per_call') or backend.sampler_chains(d)
  return max(d, m // d * d)


def sample_batch(config, p_sample, params, key: jax.Array, n: int,
                 data: Optional[np.ndarray] = None, start: int = 0,
                 bar: Optional[console.Progress] = None,
                 stop: Optional[Callable[[], bool]] = None):
  """Chains `start .. n - 1` of the batch of `key`, in data space (NumPy).

  Args:
    config: run config (data transform, `sampling.data_init` handled by the
      caller through `data`).
    p_sample: `p_sample(params, x0, keys) -> (x, trajectory or None)`.
    params: the model parameters (usually the EMA ones).
    key: root key of the batch.
    n: chains in the batch.
    data: data-space images `[n,H,W,C]` to start from (NCSNv2's data_init).
    start: the first chain to draw (a resumed batch).
    bar: counts the chains drawn, call by call.
    stop: polled after each device call; when it returns True the chains
      drawn so far are returned.

  Returns:
    (samples float `[k,H,W,C]`, trajectory `[m, k,H,W,C]` or None) of the k
    chains drawn, k = n - start unless stopped.
  """
  m = chains_per_call(config)
  images, frames = [], []
  for first in range(start, n, m):
    idx = np.minimum(np.arange(first, first + m), n - 1)  # Pad with chain n-1.
    keys = parallel.keys_at(key, idx)
    x0 = init_samples(keys, config, None if data is None else data[idx])
    x, trajectory = p_sample(params, x0, keys)
    k = min(m, n - first)
    images.append(np.asarray(score.inverse_data_transform(x[:k], config)))
    if trajectory is not None:
      frames.append(np.asarray(
          score.inverse_data_transform(trajectory[:, :k], config)))
    if bar is not None:
      bar.update(k)
    if stop is not None and stop():
      break
  if not images:
    return np.zeros((0,) + init_shape(config), np.float32), None
  return (np.concatenate(images),
          np.concatenate(frames, axis=1) if frames else None)


def generate(config, p_sample, params, key: jax.Array, n: int,
             folder: Optional[str] = None, meta: Optional[dict] = None,
             stop: Optional[Callable[[], bool]] = None) -> np.ndarray:
  """`n` samples as uint8 `[n,H,W,C]`, in batches of `sampling.batch_size`.

  Batch i uses fold_in(key, i); the last one is drawn whole and cut. With
  `folder`, batch i is written to `folder/samples_<i>.npz` as it completes
  (atomically, with `meta` and the batch's own fields), and a rerun reuses
  every batch found there that `meta` matches; a file made otherwise is an
  `errors.InputError`, never mixed in. With several processes, process p
  draws the batches i with i % processes == p, and every process returns all
  `n` samples once all are written (the folder must be shared).

  Args:
    config: run config (`sampling.batch_size`).
    p_sample: the pmapped sampler (`parallel.pmap_sampler`).
    params: the model parameters.
    key: root key of the samples.
    n: number of samples.
    folder: where the batches are kept (None: in memory only).
    meta: what made the samples (checkpoint, seed, settings), JSON-ready.
    stop: polled after each device call; when it returns True the current
      batch is dropped and `errors.Interrupted` is raised.

  Returns:
    uint8 samples `[n,H,W,C]`.
  """
  batch = config.sampling.batch_size
  count = -(-n // batch)
  mine = [i for i in range(count)
          if i % jax.process_count() == jax.process_index()]
  shards = {}
  with console.Progress(n, 'sampling', unit='samples') as bar:
    for i in mine:
      path = folder and os.path.join(folder, f'samples_{i}.npz')
      record = dict(meta or {}, batch=i, batch_size=batch)
      if path and os.path.exists(path):
        shards[i] = outputs.load_shard(path, record)['images']
        bar.update(min(batch, n - i * batch))
        continue
      images, _ = sample_batch(config, p_sample, params,
                               jax.random.fold_in(key, i), batch, bar=bar,
                               stop=stop)
      if len(images) == batch:  # Else stopped: the batch is dropped.
        shards[i] = outputs.to_uint8(images)
        if path:
          outputs.save_shard(path, {'images': shards[i]}, record)
      if stop is not None and stop() and (i != mine[-1] or i not in shards):
        raise errors.Interrupted(
            f'stopped on request with {len(shards)} of {count} sample '
            'batches done; rerun the same command to continue.')
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices('ncsn_jax_generate')
    for i in range(count):
      if i not in shards:
        record = dict(meta or {}, batch=i, batch_size=batch)
        shards[i] = outputs.load_shard(
            os.path.join(folder, f'samples_{i}.npz'), record)['images']
  return np.concatenate([shards[i] for i in range(count)])[:n]
