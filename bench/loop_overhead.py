"""The real training loop against its bare compiled step: host overhead.

  python -m bench.loop_overhead [--batch=128] [--steps=100] [--rounds=3]
  python -m bench.loop_overhead --batch=4 --ngf=8 --image_size=8 --steps=5

Runs the training loop of `ncsn_jax.training.loop` itself (`_build` and
`_train_steps`: the pmapped, donated step of `make_train_step`, per-step
keys from `loop.train_keys`, host batches stacked and fed every step, the
non-finite flags and the metrics fetched at log steps and at the end, the
progress line) for the CIFAR-10 NCSNv2 config, fed from memory (a few
NumPy batches of `{'image': float32 [B,H,W,C]}` in turn), with no
checkpoints, no TensorBoard writer and no test-loss evaluation (that is
work of its own, not loop overhead). Against it, in turns (`interleave`),
the bare step: the same `p_train` called in a tight loop on device-resident
inputs. Prints steps/s of both, their medians and the ratio (loop / bare;
the target on a GPU is at least 0.95).

Needs jax, flax, optax, orbax and numpy only: the loop imports the input
pipeline (TensorFlow) and clu only when a run needs them, and the config
comes from `plain_config`.
"""

import argparse
import dataclasses
import datetime
import itertools
import json
import platform
import sys
import tempfile
import time

from bench import interleave
from bench import jax_timers
from bench import plain_config
import jax
import numpy as np

from ncsn_jax import parallel
from ncsn_jax.training import loop


class MemorySource:
  """A data set in memory: `n` fixed random batches, repeated forever."""

  def __init__(self, config, batch: int, n: int = 4, seed: int = 0):
    s, c = config.data.image_size, config.data.channels
    rng = np.random.default_rng(seed)
    self.batches = [{'image': rng.random((batch, s, s, c), np.float32)}
                    for _ in range(n)]

  def __iter__(self):
    return itertools.cycle(self.batches)


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--batch', type=int, default=128)
  p.add_argument('--ngf', type=int, default=0, help='0: the config (128).')
  p.add_argument('--image_size', type=int, default=0,
                 help='0: the config (32).')
  p.add_argument('--dtype', default='float32', help='model.dtype')
  p.add_argument('--steps', type=int, default=100,
                 help='Steps per side and round.')
  p.add_argument('--rounds', type=int, default=3)
  p.add_argument('--log_freq', type=int, default=0,
                 help='0: the config (100).')
  p.add_argument('--pause', type=float, default=0.5)
  p.add_argument('--json', default='')
  return p.parse_args(argv)


def make_config(args):
  """The CIFAR-10 NCSNv2 config at the benchmark's sizes."""
  config = plain_config.get_config()
  if args.ngf:
    config.model.ngf = args.ngf
  if args.image_size:
    config.data.image_size = args.image_size
  config = jax_timers.train_config(config, args.batch, args.dtype)
  t = config.training
  if args.log_freq:
    t.log_freq = args.log_freq
  # Never due within the run: a test-loss evaluation is work, not overhead.
  t.eval_freq = 10**9
  return config


def timers(config, workdir: str):
  """{'bare': timer, 'loop': timer} sharing one donated train state."""
  source = MemorySource(config, config.training.batch_size)
  # pylint: disable-next=protected-access
  ctx = loop._build(config, workdir,
                    datasets={'train': source, 'test': source}, writer=None)
  assert ctx.manager is None  # `_snapshot` writes nothing.
  # The loop's own start (`_initial_state`) would run the initialiser op by
  # op; the step's time does not depend on the values (`bench_state`).
  box = {'state': parallel.replicate(jax_timers.bench_state(config))}
  # The bare step's inputs live on the devices, made once.
  b = config.training.batch_size
  # pylint: disable-next=protected-access
  images = jax.device_put(loop._next_batches(iter(source),
                                             config.training.n_jitted_steps))
  keys = loop.train_keys(ctx.keys['train'], 0, config.training.n_jitted_steps,
                         b)

  def bare(what: str, n: int) -> float:
    del what
    start = time.perf_counter()
    for _ in range(n):
      box['state'], metrics = ctx.p_train(box['state'], images, keys)
    jax.block_until_ready((box['state'], metrics))
    return time.perf_counter() - start

  def run_loop(what: str, n: int) -> float:
    del what
    step = int(parallel.unreplicate(box['state']).step)
    round_config = jax_timers.train_config(config, b)
    round_config.training.n_iters = step + n  # The loop runs n steps.
    round_ctx = dataclasses.replace(ctx, config=round_config)
    start = time.perf_counter()
    # pylint: disable-next=protected-access
    box['state'], stopped = loop._train_steps(round_ctx, box['state'], 0)
    jax.block_until_ready(box['state'])
    seconds = time.perf_counter() - start
    if stopped:
      raise KeyboardInterrupt('the loop was asked to stop.')
    return seconds

  return {'bare': bare, 'loop': run_loop}


def main(argv=None):
  args = parse_args(argv)
  config = make_config(args)
  with tempfile.TemporaryDirectory() as workdir:
    sides = timers(config, workdir)
    # The first (warm-up) step of each side compiles or runs the program.
    times = interleave.interleave(sides, 'train', args.steps, args.rounds,
                                  args.pause)
  out = interleave.compare(times, 1)
  bare, run = out['bare'], out['loop']
  ratio = bare['median_s'] / run['median_s']  # loop steps/s over bare's.
  kind = jax.devices()[0].device_kind
  result = {
      'date': datetime.datetime.now(datetime.timezone.utc).isoformat(
          timespec='seconds'),
      'backend': jax.default_backend(), 'device': kind,
      'devices': jax.local_device_count(),
      'versions': {'jax': jax.__version__, 'python': platform.python_version()},
      'batch': args.batch, 'ngf': config.model.ngf,
      'image_size': config.data.image_size, 'dtype': config.model.dtype,
      'steps_per_round': args.steps, 'rounds': args.rounds,
      'log_freq': config.training.log_freq,
      'bare': bare, 'loop': run, 'loop_over_bare': ratio,
  }
  print(f'{kind} ({result["backend"]} x {result["devices"]}), '
        f'jax {jax.__version__}, batch {args.batch}, ngf '
        f'{config.model.ngf}, {config.data.image_size}px, {args.dtype}, '
        f'{args.rounds} rounds x {args.steps} steps per side, log every '
        f'{config.training.log_freq} steps')
  for name, s in (('bare step', bare), ('training loop', run)):
    print(f'{name:14s} {s["median_per_s"]:8.4g} steps/s median '
          f'({1000 * s["median_s"]:.4g} ms/step; min-max '
          f'{1 / s["max_s"]:.4g}-{1 / s["min_s"]:.4g}, spread '
          f'{s["spread"]:.1%})')
  print(f'loop / bare: {ratio:.3f} (target on a GPU: >= 0.95)')
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(result, f, indent=2)
  return result


if __name__ == '__main__':
  main(sys.argv[1:])
