"""NCSNv2's hyperparameter rules (techniques 1, 2 and 4) as a tool.

1. sigma_1 = the largest Euclidean distance between two training images
   (in the model's input space), on a random `tune.subset_size` images when
   the training split has more than `tune.max_images`.
2. The ratio gamma = sigma_{i-1} / sigma_i of a geometric schedule solves
   Phi(sqrt(2D)(gamma - 1) + 3 gamma) - Phi(sqrt(2D)(gamma - 1) - 3 gamma)
   = 1/2, D the data dimension; L is the number of levels from sigma_1 down to
   sigma_L = `model.sigma_end` at that ratio (rounded up).
3. Given T Langevin steps per level, eps is the grid point where
   s_T^2 / sigma^2 = (1 - eps/sigma_L^2)^{2T} (gamma^2 - 2 eps / (sigma_L^2 -
   sigma_L^2 (1 - eps/sigma_L^2)^2)) + 2 eps / (sigma_L^2 - sigma_L^2 (1 -
   eps/sigma_L^2)^2) is closest to 1.

`tune(config, workdir)` writes `WORKDIR/tune.json` and `WORKDIR/tune_config.py`
(lines to paste into an experiment config).
"""

import json
import math
import os

from absl import logging
import numpy as np
from scipy import optimize
from scipy import stats

from ncsn_jax import config_checks
from ncsn_jax import console
from ncsn_jax import errors
from ncsn_jax import outputs
from ncsn_jax.data import distances
from ncsn_jax.data import input_pipeline
from ncsn_jax.models import score

# The target of technique 2: the probability mass of the shell test.
GAMMA_TARGET = 0.5
# eps grid of technique 4: log-spaced, 2000 points per decade.
EPS_GRID = np.logspace(-10.0, -1.0, 18_001)


def gamma_criterion(gamma, dim: int):
  """Phi(sqrt(2D)(gamma-1) + 3 gamma) - Phi(sqrt(2D)(gamma-1) - 3 gamma)."""
  shift = np.sqrt(2.0 * dim) * (np.asarray(gamma, np.float64) - 1.0)
  return stats.norm.cdf(shift + 3.0 * gamma) - stats.norm.cdf(shift -
                                                              3.0 * gamma)


def solve_gamma(dim: int, target: float = GAMMA_TARGET) -> float:
  """The ratio gamma > 1 at which `gamma_criterion` equals `target`.

  The criterion falls monotonically from Phi(3) - Phi(-3) at gamma = 1 to 0,
  so the root is unique (bisection to machine precision).
  """
  if dim < 1:
    raise errors.InputError(f'the data dimension D={dim} must be >= 1.')
  f = lambda g: gamma_criterion(g, dim) - target
  hi = 2.0
  while f(hi) > 0:
    hi *= 2.0
  return float(optimize.brentq(f, 1.0, hi, xtol=1e-15, rtol=1e-15))


def num_levels(sigma_begin: float, sigma_end: float, gamma: float) -> int:
  """Levels L of a geometric schedule with ratio at least `gamma`.

  L = ceil(1 + ln(sigma_1 / sigma_L) / ln gamma): the schedule's actual
  ratio (sigma_1 / sigma_L)^(1 / (L - 1)) is then at most gamma.
  """
  if not sigma_begin > sigma_end > 0:
    raise errors.InputError(f'need sigma_begin={sigma_begin} > sigma_end='
                     f'{sigma_end} > 0.')
  levels = 1.0 + math.log(sigma_begin / sigma_end) / math.log(gamma)
  return int(math.ceil(levels - 1e-9))


def schedule_ratio(sigma_begin: float, sigma_end: float, levels: int):
  """The common ratio sigma_{i-1} / sigma_i of a geometric schedule."""
  return (sigma_begin / sigma_end)**(1.0 / (levels - 1))


def langevin_variance_ratio(eps, gamma: float, sigma_end: float, steps: int):
  """s_T^2 / sigma_i^2 of NCSNv2 technique 4 (elementwise in `eps`)."""
  eps = np.asarray(eps, np.float64)
  s2 = sigma_end**2
  a = 1.0 - eps / s2
  c = 2.0 * eps / (s2 - s2 * a**2)
  return a**(2 * steps) * (gamma**2 - c) + c


def solve_step_lr(gamma: float, sigma_end: float, steps: int,
                  grid: np.ndarray = EPS_GRID) -> tuple[float, float]:
  """eps on `grid` whose variance ratio is closest to 1, and that ratio.

  Grid search, as in the paper (the ratio is not monotone for large eps).
  """
  if steps < 1:
    raise errors.ConfigError(
        f'config.sampling.n_steps_each={steps} must be >= 1.')
  grid = grid[grid < sigma_end**2]  # Beyond this alpha_L > sigma_L^2.
  ratios = langevin_variance_ratio(grid, gamma, sigma_end, steps)
  best = int(np.argmin(np.abs(ratios - 1.0)))
  return float(grid[best]), float(ratios[best])


def training_images(config, seed: int) -> tuple[np.ndarray, int]:
  """Training images for the sigma_1 pass, in the model's input space.

  All of them when the split has at most `tune.max_images`, else a uniformly
  random `tune.subset_size` of them (chosen from `seed`); the split is read
  once, in a fixed order, keeping only the chosen images. Dequantisation
  noise is left out.

  Returns:
    (images float32 `[N, H, W, C]`, size of the whole split).
  """
  t = config.tune
  config = config.copy_and_resolve_references()
  config.data.uniform_dequantization = False
  config.data.gaussian_dequantization = False
  ds = input_pipeline.create_dataset(config, 'train', batch_size=1,
                                     shuffle=False, repeat=False,
                                     augment=False, seed=config.seed)
  total = int(ds.cardinality())  # Negative when unknown.
  ds = ds.map(lambda b: b['image']).unbatch().batch(256)
  keep = None
  if total > t.max_images:
    keep = np.zeros(total, bool)
    keep[np.random.default_rng(seed).choice(total, t.subset_size,
                                            replace=False)] = True
  elif total < 0:
    logging.warning('Unknown split size: using every training image.')
  out, offset = [], 0
  with console.Progress(max(total, 0), 'reading training images',
                        unit='images') as bar:
    for batch in input_pipeline.numpy_iterator(ds):
      n = len(batch)
      out.append(batch if keep is None else batch[keep[offset:offset + n]])
      offset += n
      bar.update(n)
  if not out:
    return np.zeros((0, 1), np.float32), 0
  images = score.data_transform(np.concatenate(out), config)
  return np.asarray(images, np.float32), offset


def recommend(sigma_begin: float, dim: int, sigma_end: float,
              steps: int) -> dict:
  """Techniques 2 and 4 for given sigma_1, D, sigma_L and T.

  Returns:
    {'sigma_begin', 'sigma_end', 'num_classes', 'step_lr', 'n_steps_each',
    'gamma' (solved), 'gamma_criterion' (at the schedule's actual ratio),
    'schedule_ratio', 'variance_ratio' (s_T^2 / sigma^2 at step_lr), 'dim'}.
  """
  gamma = solve_gamma(dim)
  levels = num_levels(sigma_begin, sigma_end, gamma)
  ratio = schedule_ratio(sigma_begin, sigma_end, levels)
  step_lr, variance = solve_step_lr(ratio, sigma_end, steps)
  return {
      'sigma_begin': float(sigma_begin),
      'sigma_end': float(sigma_end),
      'num_classes': levels,
      'step_lr': step_lr,
      'n_steps_each': int(steps),
      'gamma': gamma,
      'schedule_ratio': ratio,
      'gamma_criterion': float(gamma_criterion(ratio, dim)),
      'variance_ratio': variance,
      'dim': int(dim),
  }


def config_snippet(result: dict) -> str:
  """Python lines setting the tuned fields of a config."""
  return (
      '# NCSNv2 techniques 1, 2 and 4 (python run.py --mode=tune).\n'
      f"config.model.sigma_begin = {result['sigma_begin']:.6g}\n"
      f"config.model.num_classes = {result['num_classes']}\n"
      f"config.sampling.n_steps_each = {result['n_steps_each']}\n"
      f"config.sampling.step_lr = {result['step_lr']:.3g}\n")


def tune(config, workdir: str) -> dict:
  """Tune mode: sigma_1 (from the data unless `tune.sigma_begin`), L, eps.

  Writes `WORKDIR/tune.json` and `WORKDIR/tune_config.py`.

  Returns:
    The report (see `recommend`, plus how sigma_1 was found).
  """
  config_checks.check_config(config, 'tune')
  outputs.check_writable(workdir, '--workdir')
  t = config.tune
  size, channels = config.data.image_size, config.data.channels
  dim = size * size * channels
  source = {'sigma_begin_source': 'config.tune.sigma_begin'}
  sigma_begin = float(t.sigma_begin)
  if sigma_begin <= 0:
    images, total = training_images(config, config.seed)
    if len(images) < 2:
      raise errors.ConfigError(
          f'the training split of {config.data.dataset} has '
          f'{len(images)} images; sigma_1 needs at least 2 '
          '(or set config.tune.sigma_begin).')
    sigma_begin = distances.max_pairwise_distance(
        images, t.block_size, desc='sigma_1 distance pass')
    source = {'sigma_begin_source': 'max pairwise distance of the data',
              'num_images': int(len(images)), 'split_size': int(total)}
  result = recommend(sigma_begin, dim, config.model.sigma_end,
                     config.sampling.n_steps_each)
  result.update(source)
  outputs.save_text(os.path.join(workdir, 'tune.json'),
                    json.dumps(result, indent=2))
  outputs.save_text(os.path.join(workdir, 'tune_config.py'),
                    config_snippet(result))
  logging.info('Tuned hyperparameters: %s', result)
  return result
