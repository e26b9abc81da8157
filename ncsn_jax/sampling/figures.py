"""Inpainting, interpolation and nearest-neighbour figures of sample mode.

The samplers follow NCSNv2 (`anneal_Langevin_dynamics_inpainting` and
`..._interpolation`) with the conventions of `langevin.annealed_langevin`:
alpha_c = eps (sigma_c / sigma_L)^2, one update x + alpha_c s + sqrt(2
alpha_c) noise, levels and steps flattened into one `lax.scan`, and the
randomness of example (or row) i at step t drawn from fold_in(key_i, t),
key_i = fold_in(key, global index of i), so that splitting a batch over
devices does not change the result.

* Inpainting: before every update the known pixels (mask = 1) are replaced
  by reference + sigma_c z', with fresh z' at every step, as NCSNv2 does; the
  output carries the reference's known pixels exactly.
* Interpolation: each row of the grid starts from one initial state; at every
  step the row draws two noises p, q and chain k of the row uses
  cos(theta_k) p + sin(theta_k) q, theta_k = linspace(0, pi/2, n)_k, so the
  first chain of a row is driven by p alone and the last by q alone.

`write_figures` is the sample-mode entry point (called by
`evaluate.sample`).
"""

import json
import os
from typing import Callable

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from ncsn_jax import distances
from ncsn_jax import errors
from ncsn_jax import files
from ncsn_jax import image_io
from ncsn_jax import noise
from ncsn_jax import parallel
from ncsn_jax import random_utils
from ncsn_jax import transforms
from ncsn_jax.data import input_pipeline
from ncsn_jax.sampling import langevin

ScoreFn = Callable[[jax.Array, jax.Array], jax.Array]
MASKS = ('right_half', 'left_half', 'top_half', 'bottom_half', 'center',
         'random')


def _scan_chain(step, x0, total: int, record_every: int):
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


def _denoise(score_fn, x, sigmas, trajectory):
  """NCSNv2's final step x + sigma_L^2 s(x, L - 1), appended to trajectory."""
  last = jnp.full((x.shape[0],), sigmas.shape[0] - 1, jnp.int32)
  x = x + sigmas[-1]**2 * score_fn(x, last)
  if trajectory is not None:
    trajectory = jnp.concatenate([trajectory, x[None]], axis=0)
  return x, trajectory


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
    raise errors.ConfigError(
        f'config.sampling.inpainting_mask={kind!r} is unknown; '
        f'use one of {", ".join(MASKS)}.')
  return np.repeat(known[..., None], c, axis=-1)


def annealed_langevin_inpainting(score_fn: ScoreFn,
                                 x0: jax.Array,
                                 key: jax.Array,
                                 sigmas: jax.Array,
                                 n_steps_each: int,
                                 step_lr: float,
                                 reference: jax.Array,
                                 mask: jax.Array,
                                 denoise: bool = False,
                                 record_every: int = 0,
                                 example_offset=0):
  """Annealed Langevin dynamics that fills in the unknown pixels.

  At every step of level c the known pixels are first set to
  reference + sigma_c z' (fresh z'), then x <- x + alpha_c s(x, c) +
  sqrt(2 alpha_c) z. After the last step (and the optional denoising step)
  the known pixels are set to the reference exactly.

  Args:
    score_fn: `score_fn(x [B,...], labels [B]) -> [B,...]`.
    x0: initial states `[B,...]` (model space).
    key: root key.
    sigmas: noise levels `[L]`, descending.
    n_steps_each: steps T per level (static).
    step_lr: eps of the step-size rule.
    reference: images to complete `[B,...]` (model space).
    mask: 1 = known; `[B,...]` or broadcastable to it (e.g. `[H,W,C]`).
    denoise: NCSNv2's final Tweedie step before imposing the known pixels.
    record_every: if k > 0, also return every k-th chain state.
    example_offset: global index of `x0[0]`.

  Returns:
    (completed states `[B,...]`, trajectory `[n,B,...]` or None).
  """
  keys = random_utils.per_example_keys(key, x0.shape[0], example_offset)
  mask = jnp.broadcast_to(jnp.asarray(mask, x0.dtype), x0.shape)

  def step(x, t):
    level = t // n_steps_each
    sigma = sigmas[level]
    alpha = step_lr * (sigma / sigmas[-1])**2
    step_keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, t)
    known_keys, langevin_keys = jax.vmap(jax.random.split, out_axes=1)(
        step_keys)
    z_known = random_utils.per_example_normal(known_keys, x.shape[1:],
                                              x.dtype)
    x = mask * (reference + sigma * z_known) + (1.0 - mask) * x
    grad = score_fn(x, jnp.full((x.shape[0],), level, jnp.int32))
    z = random_utils.per_example_normal(langevin_keys, x.shape[1:], x.dtype)
    return x + alpha * grad + jnp.sqrt(2.0 * alpha) * z, None

  x, trajectory = _scan_chain(step, x0, sigmas.shape[0] * n_steps_each,
                              record_every)
  if denoise:
    x, trajectory = _denoise(score_fn, x, sigmas, trajectory)
  return mask * reference + (1.0 - mask) * x, trajectory


def annealed_langevin_interpolation(score_fn: ScoreFn,
                                    x0: jax.Array,
                                    key: jax.Array,
                                    sigmas: jax.Array,
                                    n_steps_each: int,
                                    step_lr: float,
                                    n_interpolations: int,
                                    denoise: bool = False,
                                    record_every: int = 0,
                                    example_offset=0):
  """Annealed Langevin chains whose noises interpolate on a circle.

  Every row r starts all its `n_interpolations` chains at x0[r]; at step t
  the row draws p, q ~ N(0, I) and chain k uses cos(theta_k) p +
  sin(theta_k) q, theta_k = linspace(0, pi/2, n_interpolations)_k (unit
  variance for every k).

  Args:
    score_fn: `score_fn(x [N,...], labels [N]) -> [N,...]`.
    x0: one initial state per row `[R,...]`.
    key: root key.
    sigmas: noise levels `[L]`, descending.
    n_steps_each: steps T per level (static).
    step_lr: eps of the step-size rule.
    n_interpolations: chains per row (static).
    denoise: NCSNv2's final Tweedie step.
    record_every: if k > 0, also return every k-th chain state.
    example_offset: global index of row `x0[0]`.

  Returns:
    (states `[R * n,...]` row-major, trajectory `[m, R * n,...]` or None).
  """
  rows, n = x0.shape[0], n_interpolations
  shape = x0.shape[1:]
  keys = random_utils.per_example_keys(key, rows, example_offset)
  theta = jnp.linspace(0.0, jnp.pi / 2, n)
  cos = jnp.cos(theta).reshape((1, n) + (1,) * len(shape))
  sin = jnp.sin(theta).reshape((1, n) + (1,) * len(shape))
  # sin(pi/2) etc. are exact up to rounding; pin the endpoints exactly.
  cos, sin = cos.at[:, 0].set(1.0), sin.at[:, 0].set(0.0)
  if n > 1:
    cos, sin = cos.at[:, -1].set(0.0), sin.at[:, -1].set(1.0)

  def step(x, t):
    level = t // n_steps_each
    alpha = step_lr * (sigmas[level] / sigmas[-1])**2
    step_keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, t)
    p_keys, q_keys = jax.vmap(jax.random.split, out_axes=1)(step_keys)
    p = random_utils.per_example_normal(p_keys, shape, x.dtype)[:, None]
    q = random_utils.per_example_normal(q_keys, shape, x.dtype)[:, None]
    z = (cos * p + sin * q).reshape(x.shape)
    grad = score_fn(x, jnp.full((x.shape[0],), level, jnp.int32))
    return x + alpha * grad + jnp.sqrt(2.0 * alpha) * z, None

  x, trajectory = _scan_chain(step, jnp.repeat(x0, n, axis=0),
                              sigmas.shape[0] * n_steps_each, record_every)
  if denoise:
    x, trajectory = _denoise(score_fn, x, sigmas, trajectory)
  return x, trajectory


def get_inpainting_sampler(config, model, reference, mask):
  """Builds `sample_fn(params, x0, key, example_offset) -> (x, trajectory)`.

  Args:
    config: the run config (`config.sampling` settings).
    model: the score network.
    reference: the images to complete, one per chain `[B,...]`, model space.
    mask: known-pixel mask `[H,W,C]` or `[B,H,W,C]`.

  Returns:
    A pure sampler for `parallel.p_sample`: a device's chains
    x0[offset:offset + n] complete reference[offset:offset + n].
  """
  sigmas = jnp.asarray(noise.get_sigmas(config))
  s = config.sampling
  reference = jnp.asarray(reference)
  mask = jnp.asarray(mask, jnp.float32)

  def sample_fn(params, x0, key, example_offset=0):
    score_fn = lambda x, y: model.apply({'params': params}, x, y)
    n = x0.shape[0]
    ref = jax.lax.dynamic_slice_in_dim(reference, example_offset, n)
    m = mask
    if mask.ndim == x0.ndim:
      m = jax.lax.dynamic_slice_in_dim(mask, example_offset, n)
    return annealed_langevin_inpainting(score_fn, x0, key, sigmas,
                                        s.n_steps_each, s.step_lr, ref, m,
                                        s.denoise, s.record_every,
                                        example_offset)

  return sample_fn


def get_interpolation_sampler(config, model):
  """Builds `sample_fn(params, x0 [R,...], key, row_offset)` -> `[R*n,...]`."""
  sigmas = jnp.asarray(noise.get_sigmas(config))
  s = config.sampling

  def sample_fn(params, x0, key, example_offset=0):
    score_fn = lambda x, y: model.apply({'params': params}, x, y)
    return annealed_langevin_interpolation(score_fn, x0, key, sigmas,
                                           s.n_steps_each, s.step_lr,
                                           s.n_interpolations, s.denoise,
                                           s.record_every, example_offset)

  return sample_fn


# ------------------------------------------------------------ host figures


def _rows(config, per_row: int, field: str) -> int:
  """Grid rows of `sampling.batch_size` chains with `per_row` per row."""
  batch = config.sampling.batch_size
  if per_row < 1 or batch % per_row or batch < per_row:
    raise errors.ConfigError(
        f'config.sampling.{field}={per_row} must divide '
        f'config.sampling.batch_size={batch}.')
  return batch // per_row


def _scale(images: np.ndarray) -> int:
  return max(1, 64 // images.shape[1])


def _save_process(path, trajectory, config, ncol):
  frames = np.asarray(transforms.inverse_data_transform(trajectory, config))
  grids = [image_io.make_grid(f, ncol=ncol) for f in frames]
  image_io.save_gif(path, np.stack(grids), scale=_scale(frames[0]))


def inpaint(config, model, params, key, root: str) -> dict[str, str]:
  """Completes test images; writes `<tag>_inpainting.png` (and `.gif`).

  Grid row r: the masked test image r (unknown pixels black), its
  `sampling.completions` completions, then the original.
  """
  s = config.sampling
  n_refs = _rows(config, s.completions, 'completions')
  parallel.check_divisible_local(s.batch_size, 'config.sampling.batch_size')
  refs = input_pipeline.load_split_arrays(config, 'test', n_refs)
  if len(refs) < n_refs:
    raise errors.ConfigError(
        f'inpainting needs {n_refs} test images, the test split '
        f'has {len(refs)}.')
  shape = refs.shape[1:]
  mask_key, init_key, chain_key = jax.random.split(key, 3)
  mask = make_mask(s.inpainting_mask, shape, mask_key)
  reference = jnp.repeat(transforms.data_transform(jnp.asarray(refs), config),
                         s.completions, axis=0)
  x0 = langevin.init_samples(init_key, config, s.batch_size)
  sample_fn = get_inpainting_sampler(config, model, reference, mask)
  x, trajectory = parallel.p_sample(sample_fn, params, x0, chain_key)
  filled = np.asarray(transforms.inverse_data_transform(x, config))
  filled = filled.reshape((n_refs, s.completions) + shape)
  rows = np.concatenate([(refs * mask)[:, None], filled, refs[:, None]],
                        axis=1)
  paths = {'inpainting': os.path.join(root, f'{s.tag}_inpainting.png')}
  image_io.save_image_grid(paths['inpainting'],
                              rows.reshape((-1,) + shape),
                              ncol=s.completions + 2, scale=_scale(refs))
  if trajectory is not None:
    paths['inpainting_gif'] = os.path.join(root, f'{s.tag}_inpainting.gif')
    _save_process(paths['inpainting_gif'], trajectory, config, s.completions)
  return paths


def interpolate(config, model, params, key, root: str) -> dict[str, str]:
  """Interpolation grid `<tag>_interpolation.png` (and `.gif`).

  Each row starts from one initial state (uniform, or a noised test image
  with `sampling.data_init`) and runs `sampling.n_interpolations` chains
  whose noises rotate from p (left) to q (right).
  """
  s = config.sampling
  rows = _rows(config, s.n_interpolations, 'n_interpolations')
  parallel.check_divisible_local(rows, 'config.sampling.batch_size / '
                                 'config.sampling.n_interpolations')
  init_key, chain_key = jax.random.split(key)
  data = None
  if s.data_init:
    data = input_pipeline.load_split_arrays(config, 'test', rows)
  x0 = langevin.init_samples(init_key, config, rows, data=data)
  x, trajectory = parallel.p_sample(get_interpolation_sampler(config, model),
                                    params, x0, chain_key)
  images = np.asarray(transforms.inverse_data_transform(x, config))
  paths = {'interpolation': os.path.join(root,
                                         f'{s.tag}_interpolation.png')}
  image_io.save_image_grid(paths['interpolation'], images,
                              ncol=s.n_interpolations, scale=_scale(images))
  if trajectory is not None:
    paths['interpolation_gif'] = os.path.join(root,
                                              f'{s.tag}_interpolation.gif')
    _save_process(paths['interpolation_gif'], trajectory, config,
                  s.n_interpolations)
  return paths


def nearest_neighbor_figure(config, samples: np.ndarray, root: str,
                            max_rows: int = 10) -> dict[str, str]:
  """Samples beside their closest training images (pixel L2, data space).

  Writes `<tag>_nearest.png` (row r: sample r, then its k nearest training
  images, closest first) and `<tag>_nearest.json` (indices into the
  training split in `input_pipeline.load_split_arrays` order, distances).
  """
  s = config.sampling
  k = s.nearest_neighbors
  train = input_pipeline.load_split_arrays(config, 'train')
  queries = samples[:max_rows]
  dist, idx = distances.nearest_neighbors(queries, train, k)
  rows = np.concatenate([queries[:, None], train[idx]], axis=1)
  paths = {'nearest': os.path.join(root, f'{s.tag}_nearest.png'),
           'nearest_json': os.path.join(root, f'{s.tag}_nearest.json')}
  image_io.save_image_grid(paths['nearest'],
                              rows.reshape((-1,) + samples.shape[1:]),
                              ncol=k + 1, scale=_scale(samples))
  report = {'metric': 'L2 distance of [0, 1] pixels',
            'indices': idx.tolist(), 'distances': dist.tolist()}
  files.save_text(paths['nearest_json'], json.dumps(report))
  return paths


def write_figures(config, model, params, key, samples: np.ndarray,
                  root: str) -> dict[str, str]:
  """The optional sample-mode figures selected in `config.sampling`.

  Args:
    config: run config (`sampling.inpainting`, `sampling.interpolation`,
      `sampling.nearest_neighbors`).
    model: the score network.
    params: its (EMA) parameters.
    key: the sample-mode key (each figure folds in its own constant).
    samples: the plain samples of sample mode, data space `[B,H,W,C]`.
    root: output folder.

  Returns:
    {name: path} of the files written.
  """
  s = config.sampling
  paths = {}
  if s.inpainting:
    paths.update(inpaint(config, model, params, jax.random.fold_in(key, 1),
                         root))
  if s.interpolation:
    paths.update(interpolate(config, model, params,
                             jax.random.fold_in(key, 2), root))
  if s.nearest_neighbors > 0:
    paths.update(nearest_neighbor_figure(config, samples, root))
  if paths:
    logging.info('Sample-mode figures: %s', paths)
  return paths
