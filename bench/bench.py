"""Benchmark of the NCSNv2 CIFAR-10 network (ngf 128) on the present backend.

  python -m bench.bench --batch=16 --threads=2 [--ncsnv2_repo=PATH \
      --torch_python=PY] [--json=PATH]

Compiles the train step (`make_train_step`, per `--dtypes`), the score
network and a short annealed Langevin chain at each `--sample_batches`
(per `--sample_dtypes`), then times them in rounds interleaved with the
official PyTorch NCSNv2 (`torch_reference.py`, a long-lived subprocess;
optional, never a dependency): per side the median and spread of the
seconds per step and the ratio of medians. Also: compile times (train
step; full 232 x 5 sampler against a 1-step one), XLA's buffer assignment,
the device's peak memory, model FLOPs (`flops.py`: counted from the traced
program, so the same on every backend) and achieved FLOP/s against the
chip's peak (`chips.py`), and the FID-50k sampling time beside its lower
bound at the chip's peak. Needs only jax, flax, optax and numpy
(`plain_config.py`).
"""

import argparse
import datetime
import json
import os
import platform
import sys
import time

from bench import chips
from bench import interleave
from bench import jax_timers
from bench import plain_config
import flax
import jax
import numpy as np
import optax

_START = time.perf_counter()


def log(message: str) -> None:
  """Progress on stderr, with the seconds since the start."""
  print(f'[{time.perf_counter() - _START:6.1f} s] {message}',
        file=sys.stderr,
        flush=True)


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--batch', type=int, default=16, help='Training batch.')
  p.add_argument('--dtypes',
                 default='float32',
                 help='Comma list of model.dtype values to train with.')
  p.add_argument('--sample_batches',
                 default='',
                 help='Comma list of sampling batches ("" = --batch).')
  p.add_argument('--sample_dtypes',
                 default='float32',
                 help='Comma list of sampling.dtype values for the chain.')
  p.add_argument('--sample_levels',
                 type=int,
                 default=2,
                 help='Noise levels (x T steps) per timed sampler call.')
  p.add_argument('--rounds', type=int, default=3)
  p.add_argument('--steps',
                 type=int,
                 default=3,
                 help='Timed steps per side and round.')
  p.add_argument('--pause', type=float, default=1.0)
  p.add_argument('--threads', type=int, default=os.cpu_count())
  p.add_argument('--ngf', type=int, default=0, help='0: the config (128).')
  p.add_argument('--image_size',
                 type=int,
                 default=0,
                 help='0: the config (32).')
  p.add_argument('--compile_ratio',
                 type=int,
                 default=1,
                 help='1: also compile the full and the 1-step sampler.')
  p.add_argument('--ncsnv2_repo', default='')
  p.add_argument('--torch_python', default='')
  p.add_argument('--torch_device', default='cpu')
  p.add_argument('--json', default='')
  return p.parse_args(argv)


def torch_worker(args):
  """The official PyTorch side as an `interleave.Worker`, or None."""
  if not (args.ncsnv2_repo and args.torch_python):
    return None
  return interleave.Worker([
      args.torch_python,
      os.path.join(os.path.dirname(os.path.abspath(__file__)),
                   'torch_reference.py'),
      f'--ncsnv2_repo={args.ncsnv2_repo}', f'--batch={args.batch}',
      f'--threads={args.threads}', f'--device={args.torch_device}',
      f'--ngf={args.ngf or 128}', f'--image_size={args.image_size or 32}'
  ])


def _peak_bytes():
  stats = jax.devices()[0].memory_stats() or {}
  return int(stats['peak_bytes_in_use']) if 'peak_bytes_in_use' in stats \
      else None


def _rate(info, summary, kind, dtype='float32') -> dict:
  """`summary` with the achieved FLOP/s and its fraction of the peak."""
  flop_per_s = info['flops_per_item'] * summary['median_per_s']
  return dict(summary,
              flop_per_s=flop_per_s,
              **chips.fraction_of_peak(flop_per_s, kind, dtype,
                                       info.get('devices', 1)))


def bench_compute(config, args, kind):
  """Interleaved train and forward rounds: ncsn_jax per dtype vs torch."""
  out, timers = {'train': {}, 'forward': {}}, {'train': {}, 'forward': {}}
  infos = {}
  for dtype in args.dtypes.split(','):
    timers['train'][f'ncsn_jax {dtype}'], infos[dtype] = jax_timers.train(
        config, args.batch, dtype)
    log(f'train step {dtype} compiled in {infos[dtype]["compile_s"]:.1f} s')
  timers['forward']['ncsn_jax float32'], infos['forward'] = (jax_timers.forward(
      config, args.batch))
  log(f'forward compiled in {infos["forward"]["compile_s"]:.1f} s')
  worker = torch_worker(args)
  if worker:
    log(f'torch worker ready: {worker.info}')
    out['torch'] = worker.info
    for what in timers:
      timers[what]['pytorch'] = worker
  try:
    for what, sides in timers.items():
      times = interleave.interleave(sides, what, args.steps, args.rounds,
                                    args.pause)
      log(f'{what} timed: {times}')
      for name, s in interleave.compare(times, args.batch).items():
        if name == 'ratio':
          continue
        if name.startswith('ncsn_jax'):
          info = infos['forward' if what == 'forward' else name.split()[1]]
          s = _rate(info, s, kind, name.split()[1])
          s.update(info)
        out[what][name] = s
  finally:
    if worker:
      worker.close()
  out['ratios'] = ratios(out)
  return out


def ratios(out) -> dict:
  """Ratios of median step times (> 1: the first named side is faster)."""
  r = {}
  for what in ('train', 'forward'):
    sides = out[what]
    for name in sides:
      if name.startswith('ncsn_jax') and 'pytorch' in sides:
        r[f'{what} {name} / pytorch'] = (sides['pytorch']['median_s'] /
                                         sides[name]['median_s'])
  train = out['train']
  if 'ncsn_jax bfloat16' in train and 'ncsn_jax float32' in train:
    r['train bfloat16 / float32'] = (train['ncsn_jax float32']['median_s'] /
                                     train['ncsn_jax bfloat16']['median_s'])
  return r


def _sampler_batches(config, args, kind, dtype) -> dict:
  """Score evaluations/s of the Langevin chain per sampling batch."""
  out = {}
  batches = [
      int(b) for b in (args.sample_batches or str(args.batch)).split(',')
  ]
  for batch in batches:
    try:
      timer, info = jax_timers.sampler(config, batch, args.sample_levels,
                                       dtype)
      log(f'sampler {dtype} at batch {batch} compiled in '
          f'{info["compile_s"]:.1f} s')
      times = interleave.interleave({'s': timer},
                                    'sample',
                                    1,
                                    args.rounds,
                                    pause=0.0)
    except Exception as e:  # pylint: disable=broad-except
      if 'RESOURCE_EXHAUSTED' not in str(e) and 'out of memory' not in str(
          e).lower():
        raise
      out[str(batch)] = {'error': 'out of memory'}
      break
    s = _rate(info, interleave.summary(times['s'], info['evals_per_call']),
              kind, dtype)
    out[str(batch)] = dict(s, **info, score_evals_per_s=s['median_per_s'])
  rates = {b: r['score_evals_per_s'] for b, r in out.items()
           if 'error' not in r}
  if not rates:
    raise RuntimeError(f'no sampling batch of {batches} fits in memory.')
  best = max(rates, key=rates.get)
  return {
      'per_batch': out,
      'best_batch': int(best),
      'best_score_evals_per_s': rates[best],
      'fid50k_seconds': chips.fid50k_seconds(rates[best]),
      'fid50k_formula': chips.fid50k_formula(rates[best], int(best)),
  }


def bench_sampler(config, args, kind, forward_flops):
  """The chain per `--sample_dtypes`, the FID-50k time and its bound."""
  result = {}
  for dtype in args.sample_dtypes.split(','):
    r = _sampler_batches(config, args, kind, dtype)
    # What the chip's peak allows: the sampler's FLOPs are the network's.
    r['fid50k_bound_seconds'] = chips.fid50k_bound_seconds(
        forward_flops, kind, dtype)
    result[dtype] = r
  if args.compile_ratio:
    batch = int((args.sample_batches or str(args.batch)).split(',')[0])
    full = jax_timers.sampler_compile_seconds(config, batch, 232, 5)
    one = jax_timers.sampler_compile_seconds(config, batch, 1, 1)
    log(f'full sampler compiled in {full:.1f} s, 1-step one in {one:.1f} s')
    result['compile'] = dict(compile_s_232x5=full,
                             compile_s_1x1=one,
                             compile_ratio=full / one)
  return result


def environment(args) -> dict:
  kind = jax.devices()[0].device_kind
  return {
      'date':
          datetime.datetime.now(datetime.timezone.utc
                               ).isoformat(timespec='seconds'),
      'backend':
          jax.default_backend(),
      'device':
          kind,
      'device_count':
          jax.device_count(),
      'cpu_count':
          os.cpu_count(),
      'machine':
          platform.machine(),
      'threads':
          args.threads,
      'versions': {
          'jax': jax.__version__,
          'flax': flax.__version__,
          'optax': optax.__version__,
          'numpy': np.__version__,
          'python': platform.python_version()
      },
      'ml_collections':
          plain_config.has_ml_collections(),
      'peak_tflops':
          chips.peak_tflops(kind),
      'cpu_only_paths':
          jax_timers.cpu_only_paths(),
      'batch':
          args.batch,
      'rounds':
          args.rounds,
      'steps':
          args.steps,
  }


def main(argv=None):
  args = parse_args(argv)
  config = plain_config.get_config()
  if args.ngf:
    config.model.ngf = args.ngf
  if args.image_size:
    config.data.image_size = args.image_size
  result = environment(args)
  result.update(bench_compute(config, args, result['device']))
  train = result['train'][f"ncsn_jax {args.dtypes.split(',')[0]}"]
  result['flops'] = {
      'forward_per_image':
          result['forward']['ncsn_jax float32']['flops_per_item'],
      'train_per_image': train['flops_per_item'],
      'counted': 'from the traced program (jaxpr): 2 x the multiply-adds '
                 'of every convolution and matrix product (flops.py)',
  }
  result['device_peak_bytes_after_train'] = _peak_bytes()
  write_json(args.json, result)  # Kept if the sampler part fails.
  result['sampler'] = bench_sampler(config, args, result['device'],
                                    result['flops']['forward_per_image'])
  result['device_peak_bytes'] = _peak_bytes()
  write_json(args.json, result)
  report(result)
  return result


def write_json(path: str, result: dict) -> None:
  if path:
    with open(path, 'w') as f:
      json.dump(result, f, indent=2)


def _fractions(s) -> str:
  """', 41% of tf32 peak' etc. for the peaks in a timing summary."""
  return ''.join(f', {v:.1%} of {k[3:-5]} peak' for k, v in s.items()
                 if k.startswith('of_') and k.endswith('_peak'))


def _duration(seconds: float) -> str:
  return (f'{seconds / 3600:.3g} h' if seconds >= 3600 else
          f'{seconds / 60:.3g} min')


def report(r) -> None:
  """A short human-readable summary of the JSON."""
  print(f"{r['device']} ({r['backend']}), jax {r['versions']['jax']}, "
        f"batch {r['batch']}, {r['rounds']} rounds x {r['steps']} steps")
  f = r['flops']
  print(f"model FLOPs per image: forward {f['forward_per_image'] / 1e9:.4g} "
        f"G, train step {f['train_per_image'] / 1e9:.4g} G "
        f"({f['train_per_image'] / f['forward_per_image']:.2f}x forward)")
  for what in ('train', 'forward'):
    for name, s in r[what].items():
      print(f"{what:8s} {name:20s} {s['median_per_s']:9.4g} img/s median "
            f"(min-max {r['batch'] / s['max_s']:.4g}-"
            f"{r['batch'] / s['min_s']:.4g}, spread {s['spread']:.1%})" +
            (f", compile {s['compile_s']:.1f} s" if 'compile_s' in s else '') +
            (f", {s['flop_per_s'] / 1e12:.4g} TFLOP/s{_fractions(s)}"
             if 'flop_per_s' in s else ''))
  for name, value in r['ratios'].items():
    print(f'ratio    {name:32s} {value:.3g}x')
  for dtype, d in r['sampler'].items():
    if dtype == 'compile':
      continue
    for b, s in d['per_batch'].items():
      print(f'sampler  {dtype} batch {b:6s} ' +
            (s.get('error') or f"{s['score_evals_per_s']:.4g} score evals/s, "
             f"compile {s['compile_s']:.1f} s, "
             f"{s['flop_per_s'] / 1e12:.4g} TFLOP/s{_fractions(s)}"))
    print(f'{dtype}: ' + d['fid50k_formula'])
    for peak, seconds in d['fid50k_bound_seconds'].items():
      print(f'{dtype}: FID-50k sampling at the {peak} peak (lower bound): '
            f'{_duration(seconds)}, measured {_duration(d["fid50k_seconds"])}'
            f' ({d["fid50k_seconds"] / seconds:.2f}x the bound)')
  if 'compile' in r['sampler']:
    c = r['sampler']['compile']
    print(f"sampler  compile 232x5 {c['compile_s_232x5']:.1f} s, "
          f"1x1 {c['compile_s_1x1']:.1f} s")
  if r.get('device_peak_bytes'):
    print(f"device peak memory {r['device_peak_bytes'] / 2**30:.2f} GiB")


if __name__ == '__main__':
  main()
