"""What bfloat16 sampling changes against float32, from the same keys.

  python -m bench.sampler_dtypes --digits_workdir=DIR --seeds=42,43,44,45,46 \
      --num_samples=1000 --cifar_workdir=DIR2 --cifar_ngf=32 --json=out.json

`sampling.dtype` sets the compute dtype of the sampler's network (the
parameters stay float32; the chain state, the step sizes and the Langevin
noise stay float32 too). Two measurements, each running the very same
chains (same initial states, same Langevin noise) once per dtype:

1. digits (`configs/digits.py`): for every seed, the eval-mode samples
   (`--mode=eval`'s key: fold_in(key(seed + 2), step), its sampling half;
   seed 42 is the config's, so its float32 row is what `--mode=eval`
   reports) scored as eval mode scores them (the digits classifier's score
   ratio, Fréchet distance and KID), and the per-pixel difference of the
   two dtypes' final samples: mean and max absolute difference in [0, 1],
   the fraction of uint8 pixels that differ, and the fraction of samples
   the classifier puts in another class. Also the chain drift below.
2. cifar (`configs/cifar10_ncsnv2.py`, 32x32x3 NCSNv2 at `--cifar_ngf`):
   the drift of the chain between the dtypes after every noise level, the
   RMS of x_bf16 - x_f32 over the RMS of x_f32 and over sigma_c, in the
   model's input space, from `--cifar_batch` chains. Weights from the
   latest checkpoint of `--cifar_workdir` (trained with that config and
   the same ngf / image size / levels), else freshly initialised.

Without `--digits_workdir` the digits part runs on freshly initialised
weights (a smoke run: the scores then mean nothing). `--parts` picks the
parts. Every chain runs on the present backend (timings in the JSON are
that backend's).
"""

import argparse
import datetime
import json
import os
import platform
import sys
import time

from configs import cifar10_ncsnv2
from configs import digits
import flax
import jax
import numpy as np

from ncsn_jax import checkpoints
from ncsn_jax import errors
from ncsn_jax import models
from ncsn_jax import outputs
from ncsn_jax import parallel
from ncsn_jax import train_state
from ncsn_jax.data import sources
from ncsn_jax.evaluation import digits_metrics
from ncsn_jax.evaluation import evaluate
from ncsn_jax.models import score
from ncsn_jax.sampling import langevin

DTYPES = ('float32', 'bfloat16')
SCORES = ('score_ratio', 'frechet_distance', 'kid')
_START = time.perf_counter()


def log(message: str) -> None:
  """Progress on stderr, with the seconds since the start."""
  print(f'[{time.perf_counter() - _START:7.1f} s] {message}', file=sys.stderr,
        flush=True)


def parse_args(argv=None):
  """The flags; a bad value exits 2 with one line naming the flag."""
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--parts', default='digits,cifar',
                 help='Comma list of the parts to run: digits, cifar.')
  p.add_argument('--digits_workdir', default='',
                 help='Workdir of a configs/digits.py run (latest '
                 'checkpoint); "" = freshly initialised weights.')
  p.add_argument('--digits_ngf', type=int, default=0,
                 help='0: the config (16).')
  p.add_argument('--digits_levels', type=int, default=0,
                 help='Noise levels L of the model; 0: the config (16).')
  p.add_argument('--seeds', default='42,43,44,45,46',
                 help='Comma list of config.seed values (sampling keys).')
  p.add_argument('--num_samples', type=int, default=1000,
                 help='Digits samples per seed and dtype.')
  p.add_argument('--sampling_batch', type=int, default=0,
                 help='Digits sampling batch; 0: the config (100).')
  p.add_argument('--digits_drift_batch', type=int, default=100,
                 help='Digits chains of the per-level drift; 0 = skip it.')
  p.add_argument('--cifar_workdir', default='',
                 help='Workdir of a configs/cifar10_ncsnv2.py run with the '
                 'overrides below; "" = freshly initialised weights.')
  p.add_argument('--cifar_ngf', type=int, default=32)
  p.add_argument('--cifar_image_size', type=int, default=32)
  p.add_argument('--cifar_levels', type=int, default=0,
                 help='Noise levels L of the model; 0: the config (232).')
  p.add_argument('--cifar_batch', type=int, default=8,
                 help='Chains of the CIFAR drift.')
  p.add_argument('--cifar_seed', type=int, default=0,
                 help='Key of the initial states and noise (and init).')
  p.add_argument('--json', default='', help='Write the results here.')
  args = p.parse_args(argv)
  parts = [s for s in args.parts.split(',') if s]
  bad = sorted(set(parts) - {'digits', 'cifar'})
  if bad or not parts:
    p.error(f'--parts={args.parts}: give a comma list of digits, cifar.')
  args.parts = parts
  try:
    args.seeds = [int(s) for s in args.seeds.split(',') if s]
  except ValueError:
    p.error(f'--seeds={args.seeds}: give a comma list of integers.')
  if not args.seeds:
    p.error('--seeds is empty: give at least one integer.')
  for name in ('num_samples', 'cifar_ngf', 'cifar_image_size', 'cifar_batch'):
    if getattr(args, name) < 1:
      p.error(f'--{name}={getattr(args, name)}: give a positive integer.')
  for name in ('digits_ngf', 'digits_levels', 'cifar_levels',
               'sampling_batch', 'digits_drift_batch'):
    if getattr(args, name) < 0:
      p.error(f'--{name}={getattr(args, name)}: give 0 (the default) or a '
              'positive integer.')
  return args


def with_dtype(config, dtype: str):
  """A copy of `config` whose sampler runs its network in `dtype`."""
  config = config.copy_and_resolve_references()
  config.sampling.dtype = dtype
  return config


def eval_sample_key(seed: int, step: int) -> jax.Array:
  """The key eval mode draws checkpoint `step`'s samples from."""
  key = jax.random.fold_in(jax.random.key(seed + 2), step)
  return jax.random.split(key)[1]


def load_or_init(config, workdir: str, seed: int = 0, flag: str = ''):
  """(model, params, step) of `workdir`'s latest checkpoint, else init.

  A checkpoint that cannot be used raises `errors.InputError` naming
  `flag`, the flag that gave `workdir`.
  """
  if workdir:
    try:
      return checkpoints.load_params(config, workdir)
    except errors.InputError as e:
      raise errors.InputError(f'--{flag}={workdir}: {e}') from e
  model = models.create_model(config)
  return model, train_state.init_params(config, model,
                                        jax.random.key(seed)), 0


def draw(config, p_sample, params, key: jax.Array, n: int) -> np.ndarray:
  """`langevin.generate`'s `n` samples as floats in [0, 1], `[n,H,W,C]`.

  The same batches from the same keys (batch i of `sampling.batch_size`
  chains from fold_in(key, i), the last one drawn whole and cut), before the
  rounding to uint8 that eval mode scores: `outputs.to_uint8` of the result
  is what `generate` gives eval mode.

  Args:
    config: run config (`sampling.batch_size`, the data transform).
    p_sample: the pmapped sampler (`parallel.pmap_sampler`).
    params: the model parameters.
    key: root key of the samples.
    n: number of samples.

  Returns:
    float samples in data space, `[n,H,W,C]`.
  """
  batch = config.sampling.batch_size
  out = [langevin.sample_batch(config, p_sample, params,
                               jax.random.fold_in(key, i), batch)[0]
         for i in range(-(-n // batch))]
  return np.concatenate(out)[:n]


def pixel_difference(a: np.ndarray, b: np.ndarray) -> dict:
  """How far images `b` are from `a` (both float in [0, 1], same keys).

  Returns:
    mean and max |b - a| in [0, 1] units, the fraction of uint8 pixels
    (`outputs.to_uint8`) that differ and their mean |difference| in levels.
  """
  diff = np.abs(np.asarray(b, np.float64) - np.asarray(a, np.float64))
  qa = outputs.to_uint8(a).astype(np.int32)
  qb = outputs.to_uint8(b).astype(np.int32)
  return {
      'mean_abs': float(diff.mean()),
      'max_abs': float(diff.max()),
      'uint8_fraction_differ': float(np.mean(qa != qb)),
      'uint8_mean_abs_levels': float(np.abs(qa - qb).mean()),
  }


def level_drift(config, model, params, key: jax.Array, n: int,
                dtypes=DTYPES) -> dict:
  """Chain states per noise level for each dtype, from the same keys.

  Runs `n` chains of `config`'s sampler (the eval mode's, pmapped) from the
  same initial states and Langevin noise once per dtype, keeping the state
  after every level (and the denoised one), in the model's input space.

  Args:
    config: the run config (its `sampling` settings).
    model: the score network.
    params: its parameters.
    key: root key of the chains (chain j: fold_in(key, j)).
    n: number of chains (a multiple of the local device count).
    dtypes: the sampler dtypes; the first is the reference.

  Returns:
    Dict with 'sigmas' `[L]` and, per later dtype, per-level lists (L
    levels, then the denoised state when the config denoises):
    'rel_rms' = RMS(x_d - x_ref) / RMS(x_ref), 'rms_over_sigma' =
    RMS(x_d - x_ref) / sigma_c, 'max_abs' = max |x_d - x_ref|; also
    'ref_rms' per level and 'seconds' per dtype (compile included); and
    'final_pixels', `pixel_difference` of the last states as images.
  """
  keys = parallel.per_example_keys(key, n)
  x0 = langevin.init_samples(keys, config)
  states, seconds = {}, {}
  for dtype in dtypes:
    c = with_dtype(config, dtype)
    c.sampling.record_every = c.sampling.n_steps_each
    p_sample = parallel.pmap_sampler(langevin.get_sampler(c, model))
    t0 = time.perf_counter()
    _, trajectory = p_sample(params, x0, keys)
    seconds[dtype] = time.perf_counter() - t0
    states[dtype] = np.asarray(trajectory, np.float64)  # [L (+1), N, ...]
  sigmas = np.asarray(score.get_sigmas(config), np.float64)
  # The denoised state sits at sigma_L's noise scale.
  per_state_sigma = np.concatenate(
      [sigmas, sigmas[-1:]])[:states[dtypes[0]].shape[0]]
  ref = states[dtypes[0]]
  axes = tuple(range(1, ref.ndim))
  ref_rms = np.sqrt(np.mean(ref**2, axis=axes))
  out = {'sigmas': sigmas.tolist(), 'ref_rms': ref_rms.tolist(),
         'denoised_last': bool(config.sampling.denoise), 'seconds': seconds,
         'chains': n}
  for dtype in dtypes[1:]:
    diff = states[dtype] - ref
    rms = np.sqrt(np.mean(diff**2, axis=axes))
    out[dtype] = {
        'rel_rms': (rms / ref_rms).tolist(),
        'rms_over_sigma': (rms / per_state_sigma).tolist(),
        'max_abs': np.max(np.abs(diff), axis=axes).tolist(),
        # The last states as images (data space, clipped to [0, 1]).
        'final_pixels': pixel_difference(
            np.asarray(score.inverse_data_transform(ref[-1], config)),
            np.asarray(score.inverse_data_transform(states[dtype][-1],
                                                    config))),
    }
  return out


def _mean_std(values) -> dict:
  v = np.asarray(values, np.float64)
  return {'mean': float(v.mean()),
          'std': float(v.std(ddof=1)) if v.size > 1 else None,
          'min': float(v.min()), 'max': float(v.max())}


def summarise(rows: list[dict], dtypes=DTYPES) -> dict:
  """Per score: mean/std over seeds per dtype and of the paired change.

  `rows` are `digits_part`'s per-seed rows. The paired change is
  (later dtype - first dtype) of the same seed; 'change_over_seed_std' sets
  its mean against the first dtype's seed-to-seed standard deviation.
  """
  out = {}
  for name in SCORES:
    ref = [r['scores'][dtypes[0]][name] for r in rows]
    entry = {d: _mean_std([r['scores'][d][name] for r in rows])
             for d in dtypes}
    for d in dtypes[1:]:
      change = _mean_std([r['scores'][d][name] - a
                          for r, a in zip(rows, ref)])
      std = entry[dtypes[0]]['std']
      change['change_over_seed_std'] = (
          abs(change['mean']) / std if std else None)
      entry[f'{d}_minus_{dtypes[0]}'] = change
    out[name] = entry
  pixels = {}
  for d in dtypes[1:]:
    pixels[d] = {k: _mean_std([r['pixels'][d][k] for r in rows])
                 for k in rows[0]['pixels'][d]}
  out['pixels'] = pixels
  return out


def digits_part(args) -> dict:
  """Eval scores per seed and dtype, pixel differences, chain drift."""
  config = digits.get_config()
  if args.digits_ngf:
    config.model.ngf = args.digits_ngf
  if args.digits_levels:
    config.model.num_classes = args.digits_levels
  if args.sampling_batch:
    config.sampling.batch_size = args.sampling_batch
  model, params, step = load_or_init(config, args.digits_workdir,
                                     flag='digits_workdir')
  log(f'digits: step {step} of {args.digits_workdir or "fresh init"}')
  scorer = evaluate.create_sample_scorer(config)
  # The classifier eval mode scores with, for the class of each sample.
  x_train, y_train, _, _ = sources.digits_split(config)
  clf = digits_metrics.train_digits_classifier(x_train[..., :1], y_train)
  samplers = {d: parallel.pmap_sampler(
      langevin.get_sampler(with_dtype(config, d), model)) for d in DTYPES}
  rows = []
  for seed in args.seeds:
    key = eval_sample_key(seed, step)
    row = {'seed': seed, 'scores': {}, 'seconds': {}, 'pixels': {}}
    images = {}
    for d in DTYPES:
      t0 = time.perf_counter()
      images[d] = draw(with_dtype(config, d), samplers[d], params, key,
                       args.num_samples)
      row['seconds'][d] = time.perf_counter() - t0
      scores = scorer(outputs.to_uint8(images[d]))['digits_classifier']
      row['scores'][d] = {k: scores[k] for k in SCORES}
    classes = {
        d: digits_metrics.classifier_features(
            clf, outputs.to_uint8(images[d]))[0].argmax(axis=1)
        for d in DTYPES}
    for d in DTYPES[1:]:
      row['pixels'][d] = dict(
          pixel_difference(images[DTYPES[0]], images[d]),
          class_changed=float(np.mean(classes[d] != classes[DTYPES[0]])))
    log(f'digits seed {seed}: ' + '; '.join(
        f'{d} ' + ', '.join(f'{k}={v:.4g}' for k, v in row['scores'][d].items())
        for d in DTYPES) + '; ' + ', '.join(
            f'{k}={v:.3g}' for k, v in row['pixels'][DTYPES[1]].items()))
    rows.append(row)
  out = {'step': step,
         'weights': 'checkpoint' if args.digits_workdir else 'fresh init',
         'num_samples': args.num_samples,
         'sampling_batch': config.sampling.batch_size,
         'levels': config.model.num_classes,
         'n_steps_each': config.sampling.n_steps_each,
         'ngf': config.model.ngf, 'rows': rows, 'summary': summarise(rows)}
  if args.digits_drift_batch:
    out['drift'] = level_drift(config, model, params,
                               eval_sample_key(args.seeds[0], step),
                               args.digits_drift_batch)
  return out


def cifar_config(args):
  """`configs/cifar10_ncsnv2.py` at the flags' width, size and levels."""
  config = cifar10_ncsnv2.get_config()
  config.model.ngf = args.cifar_ngf
  config.data.image_size = args.cifar_image_size
  if args.cifar_levels:
    config.model.num_classes = args.cifar_levels
  return config


def cifar_part(args) -> dict:
  """Per-level chain drift of the CIFAR-shaped NCSNv2."""
  config = cifar_config(args)
  model, params, step = load_or_init(config, args.cifar_workdir,
                                     args.cifar_seed, 'cifar_workdir')
  log(f'cifar: ngf {config.model.ngf}, {config.data.image_size} px, '
      f'L={config.model.num_classes}, step {step} of '
      f'{args.cifar_workdir or "fresh init"}')
  drift = level_drift(config, model, params,
                      jax.random.key(args.cifar_seed), args.cifar_batch)
  return dict(drift, step=step,
              weights='checkpoint' if args.cifar_workdir else 'fresh init',
              ngf=config.model.ngf, image_size=config.data.image_size,
              levels=config.model.num_classes,
              n_steps_each=config.sampling.n_steps_each,
              step_lr=config.sampling.step_lr)


def print_report(results: dict) -> None:
  """The headline numbers on stdout."""
  d = results.get('digits')
  if d:
    s = d['summary']
    print(f'digits, step {d["step"]} ({d["weights"]}), {len(d["rows"])} '
          f'seeds x {d["num_samples"]} samples:')
    print('| score | float32 mean (std) | bfloat16 mean (std) | '
          'bf16 - f32 mean (std) | |change| / f32 seed std |')
    print('|---|---|---|---|---|')
    for name in SCORES:
      e = s[name]
      c = e['bfloat16_minus_float32']
      ratio = c['change_over_seed_std']
      std = lambda x: 'n/a' if x is None else f'{x:.4g}'
      print(f'| {name} | {e["float32"]["mean"]:.4g} '
            f'({std(e["float32"]["std"])}) | {e["bfloat16"]["mean"]:.4g} '
            f'({std(e["bfloat16"]["std"])}) | {c["mean"]:+.3g} '
            f'({std(c["std"])}) | {std(ratio)} |')
    for k, v in s['pixels']['bfloat16'].items():
      print(f'pixels bf16 vs f32, {k}: mean {v["mean"]:.4g} '
            f'(seeds {v["min"]:.4g}-{v["max"]:.4g})')
    if 'drift' in d:
      _print_drift('digits drift', d['drift'])
  c = results.get('cifar')
  if c:
    _print_drift(f'cifar drift (ngf {c["ngf"]}, {c["image_size"]} px, '
                 f'L={c["levels"]}, {c["weights"]}, step {c["step"]})', c)


def _print_drift(title: str, drift: dict) -> None:
  print(f'{title}, {drift["chains"]} chains; seconds per dtype: ' +
        ', '.join(f'{k} {v:.1f}' for k, v in drift['seconds'].items()))
  sigmas = drift['sigmas']
  bf = drift['bfloat16']
  n = len(bf['rel_rms'])
  shown = sorted(set(list(range(0, len(sigmas), max(1, len(sigmas) // 10)))
                     + [len(sigmas) - 1, n - 1]))
  print('| level | sigma | RMS(x_f32) | RMS(diff)/RMS(x_f32) | '
        'RMS(diff)/sigma | max abs diff |')
  print('|---|---|---|---|---|---|')
  for i in shown:
    name = 'denoised' if i >= len(sigmas) else str(i + 1)
    sigma = sigmas[min(i, len(sigmas) - 1)]
    print(f'| {name} | {sigma:.4g} | {drift["ref_rms"][i]:.4g} | '
          f'{bf["rel_rms"][i]:.3g} | {bf["rms_over_sigma"][i]:.3g} | '
          f'{bf["max_abs"][i]:.3g} |')
  print('last states as images, bf16 vs f32: ' + ', '.join(
      f'{k}={v:.4g}' for k, v in bf['final_pixels'].items()))


def main(argv=None) -> int:
  """Runs the parts of `argv` (None: the command line); the exit status."""
  args = parse_args(argv)
  results = {
      'date': datetime.datetime.now(datetime.timezone.utc).isoformat(
          timespec='seconds'),
      'backend': jax.default_backend(),
      'devices': [str(d) for d in jax.local_devices()],
      'machine': {'processor': platform.processor() or platform.machine(),
                  'python': platform.python_version()},
      'versions': {'jax': jax.__version__, 'flax': flax.__version__},
      'argv': sys.argv[1:] if argv is None else list(argv),
  }
  try:
    if args.json:
      if os.path.isdir(args.json):
        raise errors.InputError(f'--json={args.json} is a folder; give a '
                                'file path.')
      outputs.check_writable(os.path.dirname(os.path.abspath(args.json)),
                             '--json')
    if 'digits' in args.parts:
      results['digits'] = digits_part(args)
    if 'cifar' in args.parts:
      results['cifar'] = cifar_part(args)
  except errors.InputError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  print_report(results)
  if args.json:
    outputs.save_text(args.json, json.dumps(results, indent=1))
    log(f'wrote {args.json}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
