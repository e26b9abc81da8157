"""Inpainting, interpolation and nearest-neighbour figures of sample mode.

Each figure gets its sampler already pmapped (`sample_mode.build_samplers`
builds every program of sample mode once); the chains are in
`inpainting.py` and `interpolation.py`.
"""

import json
import os
from typing import Optional

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from ncsn_jax import distances
from ncsn_jax import errors
from ncsn_jax import files
from ncsn_jax import image_io
from ncsn_jax import parallel
from ncsn_jax import random_utils
from ncsn_jax import transforms
from ncsn_jax.data import input_pipeline
from ncsn_jax.sampling import inpainting
from ncsn_jax.sampling import langevin


def _rows(config, per_row: int, field: str) -> int:
  """Grid rows of `sampling.batch_size` chains with `per_row` per row."""
  batch = config.sampling.batch_size
  if per_row < 1 or batch % per_row or batch < per_row:
    raise errors.ConfigError(
        f'config.sampling.{field}={per_row} must divide '
        f'config.sampling.batch_size={batch}.')
  return batch // per_row


def scale(images: np.ndarray) -> int:
  """Upscaling factor that shows `[N,H,W,C]` images at least 64 px wide."""
  return max(1, 64 // images.shape[1])


def save_process_gif(path: str, frames: np.ndarray,
                     ncol: Optional[int] = None) -> None:
  """GIF of the chain states `[m, N,H,W,C]` (data space), one grid a frame."""
  grids = [image_io.make_grid(f, ncol=ncol) for f in frames]
  image_io.save_gif(path, np.stack(grids), scale=scale(frames[0]))


def _trajectory_images(trajectory, config):
  return np.asarray(transforms.inverse_data_transform(trajectory, config))


def inpaint(config, p_inpaint, params, key, root: str) -> dict[str, str]:
  """Completes test images; writes `<tag>_inpainting.png` (and `.gif`).

  `p_inpaint(params, x0, keys, reference, mask)` is the pmapped
  `inpainting.get_inpainting_sampler`. Grid row r: the masked test image r
  (unknown pixels black), its `sampling.completions` completions, then the
  original.
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
  mask = inpainting.make_mask(s.inpainting_mask, shape, mask_key)
  reference = jnp.repeat(transforms.data_transform(jnp.asarray(refs), config),
                         s.completions, axis=0)
  x0 = langevin.init_samples(
      random_utils.per_example_keys(init_key, s.batch_size), config)
  x, trajectory = p_inpaint(
      params, x0, random_utils.per_example_keys(chain_key, s.batch_size),
      reference, jnp.broadcast_to(mask, reference.shape))
  filled = np.asarray(transforms.inverse_data_transform(x, config))
  filled = filled.reshape((n_refs, s.completions) + shape)
  rows = np.concatenate([(refs * mask)[:, None], filled, refs[:, None]],
                        axis=1)
  paths = {'inpainting': os.path.join(root, f'{s.tag}_inpainting.png')}
  image_io.save_image_grid(paths['inpainting'], rows.reshape((-1,) + shape),
                           ncol=s.completions + 2, scale=scale(refs))
  if trajectory is not None:
    paths['inpainting_gif'] = os.path.join(root, f'{s.tag}_inpainting.gif')
    save_process_gif(paths['inpainting_gif'],
                     _trajectory_images(trajectory, config), s.completions)
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
  rows = _rows(config, s.n_interpolations, 'n_interpolations')
  parallel.check_divisible_local(rows, 'config.sampling.batch_size / '
                                 'config.sampling.n_interpolations')
  init_key, chain_key = jax.random.split(key)
  data = None
  if s.data_init:
    data = input_pipeline.load_split_arrays(config, 'test', rows)
  x0 = langevin.init_samples(random_utils.per_example_keys(init_key, rows),
                             config, data)
  x, trajectory = p_interpolate(params, x0,
                                random_utils.per_example_keys(chain_key, rows))
  images = np.asarray(transforms.inverse_data_transform(x, config))
  paths = {'interpolation': os.path.join(root,
                                         f'{s.tag}_interpolation.png')}
  image_io.save_image_grid(paths['interpolation'], images,
                           ncol=s.n_interpolations, scale=scale(images))
  if trajectory is not None:
    paths['interpolation_gif'] = os.path.join(root,
                                              f'{s.tag}_interpolation.gif')
    save_process_gif(paths['interpolation_gif'],
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
  train = input_pipeline.load_split_arrays(config, 'train')
  queries = samples[:max_rows]
  dist, idx = distances.nearest_neighbors(queries, train, k)
  rows = np.concatenate([queries[:, None], train[idx]], axis=1)
  paths = {'nearest': os.path.join(root, f'{s.tag}_nearest.png'),
           'nearest_json': os.path.join(root, f'{s.tag}_nearest.json')}
  image_io.save_image_grid(paths['nearest'],
                           rows.reshape((-1,) + samples.shape[1:]),
                           ncol=k + 1, scale=scale(samples))
  report = {'metric': 'L2 distance of [0, 1] pixels',
            'indices': idx.tolist(), 'distances': dist.tolist()}
  files.save_text(paths['nearest_json'], json.dumps(report))
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
