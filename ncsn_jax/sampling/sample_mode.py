"""Sample mode: samples of a checkpoint, their process, and the figures.

`sample` writes an image grid and a uint8 `.npz` of samples drawn with the
EMA parameters, plus the generation process (`sampling.record_every`) and
the inpainting, interpolation and nearest-neighbour figures when
`config.sampling` asks for them. Every sampler is pmapped once
(`build_samplers`) and handed to the figure that runs it; the chains
themselves are in `langevin.py`, `inpainting.py` and `interpolation.py`.
"""

import json
import os
import shutil

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from ncsn_jax import checkpoints
from ncsn_jax import config_checks
from ncsn_jax import console
from ncsn_jax import errors
from ncsn_jax import outputs
from ncsn_jax import parallel
from ncsn_jax.data import distances
from ncsn_jax.models import score
from ncsn_jax.sampling import inpainting
from ncsn_jax.sampling import interpolation
from ncsn_jax.sampling import langevin


def _split_arrays(config, split: str, max_examples=None) -> np.ndarray:
  """`input_pipeline.load_split_arrays`, imported here: TensorFlow (seconds to
  import) is needed only by the figures that show data, never to sample."""
  from ncsn_jax.data import input_pipeline  # pylint: disable=g-import-not-at-top
  return input_pipeline.load_split_arrays(config, split, max_examples)


def build_samplers(config, model):
  """The pmapped samplers sample mode needs, each built once.

  Args:
    config: run config (`config.sampling` selects the figures).
    model: the score network.

  Returns:
    {'plain': p_sample, and 'inpainting' / 'interpolation' when asked}.
  """
  s = config.sampling
  samplers = {'plain': parallel.pmap_sampler(
      langevin.get_sampler(config, model))}
  if s.inpainting:
    samplers['inpainting'] = parallel.pmap_sampler(
        inpainting.get_inpainting_sampler(config, model))
  if s.interpolation:
    samplers['interpolation'] = parallel.pmap_sampler(
        interpolation.get_interpolation_sampler(config, model))
  return samplers


def _write_process(config, frames: np.ndarray, root: str) -> dict[str, str]:
  """The kept chain states: a PNG (row = sample, column = state) and a GIF."""
  tag = config.sampling.tag
  n_show = min(8, frames.shape[1])
  process = frames[:, :n_show].swapaxes(0, 1).reshape((-1,) +
                                                      frames.shape[2:])
  paths = {'process': os.path.join(root, f'{tag}_process.png'),
           'gif': os.path.join(root, f'{tag}_process.gif')}
  outputs.save_image_grid(paths['process'], process, ncol=frames.shape[0])
  outputs.save_grid_gif(paths['gif'], frames)
  return paths


def sample(config, workdir: str) -> dict[str, str]:
  """Sample mode: grid PNG and uint8 npz under `WORKDIR/samples/`.

  Returns:
    {name: path} of every file written.
  """
  config_checks.check_config(config, 'sample')
  s = config.sampling
  root = os.path.join(workdir, 'samples')
  outputs.check_writable(root, '--workdir')
  model, params, step = checkpoints.load_params(config, workdir, s.ckpt_id)
  samplers = build_samplers(config, model)
  key = jax.random.fold_in(jax.random.key(config.seed), step)
  data = None
  if s.data_init:
    data = _split_arrays(config, 'test', s.batch_size)
  parts = os.path.join(root, f'.{s.tag}_parts')
  record = {'checkpoint_step': int(step), 'seed': int(config.seed),
            'sampling': {k: s[k] for k in ('batch_size', 'n_steps_each',
                                           'step_lr', 'denoise', 'data_init',
                                           'record_every')},
            'dtype': s.get('dtype') or config.model.dtype}
  images, frames = _draw(config, samplers['plain'], params, key, data, parts,
                         record)
  paths = {'grid': os.path.join(root, f'{s.tag}.png'),
           'npz': os.path.join(root, f'{s.tag}.npz')}
  outputs.save_image_grid(paths['grid'], images)
  outputs.save_npz_images(paths['npz'], images)
  if frames is not None:
    paths.update(_write_process(config, frames, root))
  paths.update(write_figures(config, samplers, params, key, images, root))
  shutil.rmtree(parts, ignore_errors=True)
  logging.info('Sampled checkpoint %d: %s', step, paths)
  return paths


def _draw(config, p_sample, params, key, data, folder: str, record: dict):
  """The sample-mode batch, one device call at a time, each call's chains
  kept in `folder` until the outputs are written.

  A run stopped by SIGTERM / SIGINT (or killed) continues from the calls
  kept there; calls made with other settings are refused (`outputs`).

  Returns:
    (samples float `[B,H,W,C]`, trajectory `[m, B,H,W,C]` or None).
  """
  n, m = config.sampling.batch_size, langevin.chains_per_call(config)
  images, frames = [], []
  with console.StopRequest() as stop, console.Progress(
      n, 'sampling', unit='samples') as bar:
    for part, first in enumerate(range(0, n, m)):
      path = os.path.join(folder, f'part_{part}.npz')
      last = min(first + m, n)
      meta = dict(record, first_chain=first, last_chain=last)
      if os.path.exists(path):
        arrays = outputs.load_shard(path, meta)
        bar.update(last - first)
      else:
        x, trajectory = langevin.sample_batch(config, p_sample, params, key,
                                              last, data, start=first,
                                              bar=bar)
        arrays = {'x': x}
        if trajectory is not None:
          arrays['trajectory'] = trajectory
        outputs.save_shard(path, arrays, meta)
      images.append(arrays['x'])
      frames.append(arrays.get('trajectory'))
      if stop() and last < n:
        raise errors.Interrupted(
            f'stopped on request after {last} of {n} samples (kept in '
            f'{folder}); rerun the same command to continue.')
  frames = None if frames[0] is None else np.concatenate(frames, axis=1)
  return np.concatenate(images), frames


# --------------------------------------------------------------------------
# Inpainting, interpolation and nearest-neighbour figures of sample mode
#
# Each figure gets its sampler already pmapped (`build_samplers`
# builds every program of sample mode once); the chains are in
# `inpainting.py` and `interpolation.py`.


def _trajectory_images(trajectory, config):
  return np.asarray(score.inverse_data_transform(trajectory, config))


def inpaint(config, p_inpaint, params, key, root: str) -> dict[str, str]:
  """Completes test images; writes `<tag>_inpainting.png` (and `.gif`).

  `p_inpaint(params, x0, keys, reference, mask)` is the pmapped
  `inpainting.get_inpainting_sampler`. Grid row r: the masked test image r
  (unknown pixels black), its `sampling.completions` completions, then the
  original.
  """
  s = config.sampling
  n_refs = s.batch_size // s.completions
  refs = _split_arrays(config, 'test', n_refs)
  if len(refs) < n_refs:
    raise errors.InputError(
        f'inpainting needs {n_refs} test images, the test split '
        f'has {len(refs)}; lower config.sampling.batch_size or raise '
        'config.sampling.completions.')
  shape = refs.shape[1:]
  mask_key, init_key, chain_key = jax.random.split(key, 3)
  mask = inpainting.make_mask(s.inpainting_mask, shape, mask_key)
  reference = jnp.repeat(score.data_transform(jnp.asarray(refs), config),
                         s.completions, axis=0)
  x0 = langevin.init_samples(
      parallel.per_example_keys(init_key, s.batch_size), config)
  x, trajectory = p_inpaint(
      params, x0, parallel.per_example_keys(chain_key, s.batch_size),
      reference, jnp.broadcast_to(mask, reference.shape))
  filled = np.asarray(score.inverse_data_transform(x, config))
  filled = filled.reshape((n_refs, s.completions) + shape)
  rows = np.concatenate([(refs * mask)[:, None], filled, refs[:, None]],
                        axis=1)
  paths = {'inpainting': os.path.join(root, f'{s.tag}_inpainting.png')}
  outputs.save_image_grid(paths['inpainting'], rows.reshape((-1,) + shape),
                          ncol=s.completions + 2)
  if trajectory is not None:
    paths['inpainting_gif'] = os.path.join(root, f'{s.tag}_inpainting.gif')
    outputs.save_grid_gif(paths['inpainting_gif'],
                          _trajectory_images(trajectory, config),
                          s.completions)
  return paths


def interpolate(config, p_interpolate, params, key,
                root: str) -> dict[str, str]:
  """Interpolation grid `<tag>_interpolation.png` (and `.gif`).

  `p_interpolate(params, x0 [R,...], keys [R])` is the pmapped
  `interpolation.get_interpolation_sampler`. Each row starts from one
  initial state (uniform, or a noised test image with `sampling.data_init`)
  and runs `sampling.n_interpolations` chains whose noises rotate from p
  (left) to q (right).
  """
  s = config.sampling
  rows = s.batch_size // s.n_interpolations
  init_key, chain_key = jax.random.split(key)
  data = None
  if s.data_init:
    data = _split_arrays(config, 'test', rows)
  x0 = langevin.init_samples(parallel.per_example_keys(init_key, rows),
                             config, data)
  x, trajectory = p_interpolate(params, x0,
                                parallel.per_example_keys(chain_key, rows))
  images = np.asarray(score.inverse_data_transform(x, config))
  paths = {'interpolation': os.path.join(root,
                                         f'{s.tag}_interpolation.png')}
  outputs.save_image_grid(paths['interpolation'], images,
                          ncol=s.n_interpolations)
  if trajectory is not None:
    paths['interpolation_gif'] = os.path.join(root,
                                              f'{s.tag}_interpolation.gif')
    outputs.save_grid_gif(paths['interpolation_gif'],
                          _trajectory_images(trajectory, config),
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
  train = _split_arrays(config, 'train')
  queries = samples[:max_rows]
  dist, idx = distances.nearest_neighbors(queries, train, k)
  rows = np.concatenate([queries[:, None], train[idx]], axis=1)
  paths = {'nearest': os.path.join(root, f'{s.tag}_nearest.png'),
           'nearest_json': os.path.join(root, f'{s.tag}_nearest.json')}
  outputs.save_image_grid(paths['nearest'],
                          rows.reshape((-1,) + samples.shape[1:]),
                          ncol=k + 1)
  report = {'metric': 'L2 distance of [0, 1] pixels',
            'indices': idx.tolist(), 'distances': dist.tolist()}
  outputs.save_text(paths['nearest_json'], json.dumps(report))
  return paths


def write_figures(config, samplers: dict, params, key, samples: np.ndarray,
                  root: str) -> dict[str, str]:
  """The optional sample-mode figures selected in `config.sampling`.

  Args:
    config: run config (`sampling.inpainting`, `sampling.interpolation`,
      `sampling.nearest_neighbors`).
    samplers: the pmapped samplers of `sample_mode.build_samplers`
      ('inpainting', 'interpolation' where the config asks for them).
    params: the (EMA) parameters.
    key: the sample-mode key (each figure folds in its own constant).
    samples: the plain samples of sample mode, data space `[B,H,W,C]`.
    root: output folder.

  Returns:
    {name: path} of the files written.
  """
  s = config.sampling
  paths = {}
  if s.inpainting:
    paths.update(inpaint(config, samplers['inpainting'], params,
                         jax.random.fold_in(key, 1), root))
  if s.interpolation:
    paths.update(interpolate(config, samplers['interpolation'], params,
                             jax.random.fold_in(key, 2), root))
  if s.nearest_neighbors > 0:
    paths.update(nearest_neighbor_figure(config, samples, root))
  if paths:
    logging.info('Sample-mode figures: %s', paths)
  return paths
