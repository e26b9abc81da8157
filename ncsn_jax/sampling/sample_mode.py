"""Sample mode: samples of a checkpoint, their process, and the figures.

`sample` writes an image grid and a uint8 `.npz` of samples drawn with the
EMA parameters, plus the generation process (`sampling.record_every`) and
the inpainting, interpolation and nearest-neighbour figures when
`config.sampling` asks for them. Every sampler is pmapped once
(`build_samplers`).
"""

import os
from typing import Optional

from absl import logging
import jax
import numpy as np

from ncsn_jax import config_checks
from ncsn_jax import image_io
from ncsn_jax import parallel
from ncsn_jax import progress
from ncsn_jax.data import input_pipeline
from ncsn_jax.sampling import figures
from ncsn_jax.sampling import generate
from ncsn_jax.sampling import inpainting
from ncsn_jax.sampling import interpolation
from ncsn_jax.sampling import langevin
from ncsn_jax.training import checkpointing


def build_samplers(config, model,
                   noise_fn: Optional[langevin.NoiseFn] = None,
                   known_noise_fn: Optional[langevin.NoiseFn] = None):
  """The pmapped samplers sample mode needs, each built once.

  Args:
    config: run config (`config.sampling` selects the figures).
    model: the score network.
    noise_fn: Langevin-noise hook of the plain and inpainting samplers
      (`langevin.annealed_langevin`); None = the per-example default.
    known_noise_fn: known-pixel-noise hook of the inpainting sampler.

  Returns:
    {'plain': p_sample, and 'inpainting' / 'interpolation' when asked}.
  """
  s = config.sampling
  samplers = {'plain': parallel.pmap_sampler(
      langevin.get_sampler(config, model, noise_fn))}
  if s.inpainting:
    samplers['inpainting'] = parallel.pmap_sampler(
        inpainting.get_inpainting_sampler(config, model, noise_fn,
                                          known_noise_fn))
  if s.interpolation:
    samplers['interpolation'] = parallel.pmap_sampler(
        interpolation.get_interpolation_sampler(config, model))
  return samplers


def _write_process(config, frames: np.ndarray, root: str) -> dict[str, str]:
  """The kept chain states: a PNG (row = sample, column = state) and a GIF."""
  tag, sc = config.sampling.tag, figures.scale(frames[0])
  n_show = min(8, frames.shape[1])
  process = frames[:, :n_show].swapaxes(0, 1).reshape((-1,) +
                                                       frames.shape[2:])
  paths = {'process': os.path.join(root, f'{tag}_process.png'),
           'gif': os.path.join(root, f'{tag}_process.gif')}
  image_io.save_image_grid(paths['process'], process, ncol=frames.shape[0],
                           scale=sc)
  figures.save_process_gif(paths['gif'], frames)
  return paths


def sample(config, workdir: str) -> dict[str, str]:
  """Sample mode: grid PNG and uint8 npz under `WORKDIR/samples/`.

  Returns:
    {name: path} of every file written.
  """
  config_checks.check_config(config, 'sample')
  s = config.sampling
  model, params, step = checkpointing.load_params(config, workdir, s.ckpt_id)
  parallel.check_divisible_local(s.batch_size, 'config.sampling.batch_size')
  samplers = build_samplers(config, model)
  key = jax.random.fold_in(jax.random.key(config.seed), step)
  data = None
  if s.data_init:
    data = input_pipeline.load_split_arrays(config, 'test', s.batch_size)
  with progress.Progress(s.batch_size, 'sampling', unit='samples') as bar:
    images, frames = generate.sample_batch(config, samplers['plain'], params,
                                           key, s.batch_size, data)
    bar.update(s.batch_size)
  root = os.path.join(workdir, 'samples')
  paths = {'grid': os.path.join(root, f'{s.tag}.png'),
           'npz': os.path.join(root, f'{s.tag}.npz')}
  image_io.save_image_grid(paths['grid'], images,
                           scale=figures.scale(images))
  image_io.save_npz_images(paths['npz'], images)
  if frames is not None:
    paths.update(_write_process(config, frames, root))
  paths.update(figures.write_figures(config, samplers, params, key, images,
                                     root))
  logging.info('Sampled checkpoint %d: %s', step, paths)
  return paths
