"""Scores one trained digits checkpoint under several sampler settings.

  python -m bench.digits_sampler_sweep WORKDIR \
      T=5,eps=2.4e-5 T=10,eps=1.6e-5,denoise=0 ...

Loads the latest EMA parameters of WORKDIR (trained with configs/digits.py
plus the same model overrides, given as ngf=, L=, sigma_begin=, sigma_end=,
size= in every setting), draws `n` (default config.eval.num_samples) samples
per setting with the eval-mode key and prints the digits-classifier score
ratio, FD and the seconds the sampling took. Sampling settings: T
(n_steps_each), eps (step_lr), denoise (0/1), n, seed.
"""

import sys
import time

from configs import digits
import jax
import numpy as np

from ncsn_jax import checkpoints
from ncsn_jax import outputs
from ncsn_jax import parallel
from ncsn_jax.evaluation import evaluate
from ncsn_jax.sampling import langevin

_FIELDS = {
    'ngf': ('model', 'ngf', int), 'L': ('model', 'num_classes', int),
    'sigma_begin': ('model', 'sigma_begin', float),
    'sigma_end': ('model', 'sigma_end', float),
    'size': ('data', 'image_size', int),
    'T': ('sampling', 'n_steps_each', int),
    'eps': ('sampling', 'step_lr', float),
    'denoise': ('sampling', 'denoise', lambda v: bool(int(v))),
    'n': ('eval', 'num_samples', int), 'seed': (None, 'seed', int),
}


def make_config(arg: str):
  config = digits.get_config()
  for part in filter(None, arg.split(',')):
    name, value = part.split('=')
    section, field, cast = _FIELDS[name]
    target = config if section is None else config[section]
    target[field] = cast(value)
  return config


def main(workdir, args):
  for arg in args:
    config = make_config(arg)
    model, params, step = checkpoints.load_params(config, workdir)
    p_sample = parallel.pmap_sampler(langevin.get_sampler(config, model))
    key = jax.random.fold_in(jax.random.key(config.seed + 2), step)
    _, sample_key = jax.random.split(key)
    t0 = time.time()
    images = langevin.generate(config, p_sample, params, sample_key,
                               config.eval.num_samples)
    seconds = time.time() - t0
    images = outputs.to_uint8(images).astype(np.float32) / 255.0
    d = evaluate.create_sample_scorer(config)(images)['digits_classifier']
    print(f'{arg}: step={step} score_ratio={d["score_ratio"]:.3f} '
          f'FD={d["frechet_distance"]:.2f} sampling={seconds:.1f}s',
          flush=True)


if __name__ == '__main__':
  main(sys.argv[1], sys.argv[2:])
