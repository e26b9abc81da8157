"""Benchmark of the NCSNv2 CIFAR-10 network (ngf 128) on the present backend.

  python -m bench.bench --batch=16 [--ncsnv2_repo=PATH --torch_python=PY]

Prints a table and writes JSON (`--json`): training images/s, sampler score
evaluations/s, compile times of the train step and of the full CIFAR-10
sampler (232 levels x 5 steps) against a 1-step sampler, memory from XLA's
buffer assignment (and the device's peak where it reports one), model FLOPs
per image from XLA's cost analysis and achieved FLOP/s. With a local
checkout of ermongroup/ncsnv2 and a Python that has torch, it also times the
official PyTorch network in the same run and prints the ratios.
"""

import argparse
import functools
import json
import os
import platform
import subprocess
import time

import flax
import jax
import jax.numpy as jnp

from configs import cifar10_ncsnv2
from ncsn_jax import models
from ncsn_jax import random_utils
from ncsn_jax.sampling import langevin
from ncsn_jax.training import losses
from ncsn_jax.training import step as step_lib
from ncsn_jax.training import train_state


def _flops(compiled) -> float:
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  return float((cost or {}).get('flops', float('nan')))


def _memory(compiled) -> dict:
  m = compiled.memory_analysis()
  if m is None:
    return {}
  return {'temp_bytes': int(m.temp_size_in_bytes),
          'argument_bytes': int(m.argument_size_in_bytes),
          'output_bytes': int(m.output_size_in_bytes)}


def _timed(fn, *args, repeats: int):
  jax.block_until_ready(fn(*args))  # warm-up
  start = time.perf_counter()
  for _ in range(repeats):
    out = fn(*args)
  jax.block_until_ready(out)
  return (time.perf_counter() - start) / repeats


def bench_train(config, batch: int, repeats: int) -> dict:
  """Images/s, compile time, memory and FLOPs of one train step."""
  config.training.batch_size = batch
  model = models.create_model(config)
  tx = train_state.create_optimizer(config)
  step = functools.partial(step_lib.train_step, config=config,
                           loss_fn=losses.get_loss_fn(config, model), tx=tx)
  state = train_state.create_train_state(config, model, tx, jax.random.key(0))
  images = jax.random.uniform(jax.random.key(1), (batch, 32, 32, 3))
  keys = random_utils.per_example_keys(jax.random.key(2), batch)
  # One device, the pure step without pmap (no donation: the same state is
  # fed to every timed call; bench/memory.py measures donation).
  start = time.perf_counter()
  compiled = jax.jit(step).lower(state, images, keys).compile()
  compile_s = time.perf_counter() - start
  seconds = _timed(lambda: compiled(state, images, keys), repeats=repeats)
  flops = _flops(compiled)
  return {'train_images_per_s': batch / seconds,
          'train_step_s': seconds,
          'train_compile_s': compile_s,
          'train_flops_per_image': flops / batch,
          'train_flop_per_s': flops / seconds,
          'train_memory': _memory(compiled)}


def bench_sampler(config, batch: int, repeats: int) -> dict:
  """Score evaluations/s and sampler compile times (full vs 1 step)."""
  model = models.create_model(config)
  params = train_state.init_params(config, model, jax.random.key(0))
  keys = random_utils.per_example_keys(jax.random.key(1), batch)
  x0 = langevin.init_samples(keys, config)
  apply = jax.jit(lambda p, x, y: models.make_score_fn(model, p)(x, y))
  labels = jnp.zeros((batch,), jnp.int32)
  compiled = apply.lower(params, x0, labels).compile()
  forward_s = _timed(lambda: compiled(params, x0, labels), repeats=repeats)
  flops = _flops(compiled)

  def compile_time(levels, steps):
    c = cifar10_ncsnv2.get_config()
    c.model.num_classes, c.sampling.n_steps_each = levels, steps
    fn = jax.jit(langevin.get_sampler(c, models.create_model(c)))
    start = time.perf_counter()
    fn.lower(params, x0, keys).compile()
    return time.perf_counter() - start

  full = compile_time(232, 5)
  one = compile_time(1, 1)
  return {'score_evals_per_s': batch / forward_s,
          'forward_flops_per_image': flops / batch,
          'forward_flop_per_s': flops / forward_s,
          'sampler_compile_s_232x5': full,
          'sampler_compile_s_1x1': one,
          'sampler_compile_ratio': full / one}


def bench_torch(args) -> dict:
  if not (args.ncsnv2_repo and args.torch_python):
    return {}
  script = os.path.join(os.path.dirname(__file__), 'torch_reference.py')
  out = subprocess.run(
      [args.torch_python, script, f'--ncsnv2_repo={args.ncsnv2_repo}',
       f'--batch={args.batch}', f'--threads={args.threads}',
       f'--steps={args.repeats}'],
      capture_output=True, text=True, check=True)
  return json.loads(out.stdout.strip().splitlines()[-1])


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--batch', type=int, default=16)
  parser.add_argument('--repeats', type=int, default=5)
  parser.add_argument('--threads', type=int, default=os.cpu_count())
  parser.add_argument('--ncsnv2_repo', default='')
  parser.add_argument('--torch_python', default='')
  parser.add_argument('--json', default='')
  args = parser.parse_args()
  config = cifar10_ncsnv2.get_config()
  result = {
      'backend': jax.default_backend(),
      'device': jax.devices()[0].device_kind,
      'cpu_count': os.cpu_count(),
      'machine': platform.machine(),
      'versions': {'jax': jax.__version__, 'flax': flax.__version__,
                   'python': platform.python_version()},
      'batch': args.batch,
  }
  result.update(bench_train(config, args.batch, args.repeats))
  result.update(bench_sampler(config, args.batch, args.repeats))
  stats = jax.devices()[0].memory_stats() or {}
  if 'peak_bytes_in_use' in stats:
    result['device_peak_bytes'] = int(stats['peak_bytes_in_use'])
  torch = bench_torch(args)
  if torch:
    result['torch'] = torch
    result['train_ratio_vs_torch'] = (result['train_images_per_s'] /
                                      torch['train_images_per_s'])
    result['forward_ratio_vs_torch'] = (result['score_evals_per_s'] /
                                        torch['forward_images_per_s'])
  for k, v in result.items():
    if not isinstance(v, dict):
      print(f'{k:28s} {v:.4g}' if isinstance(v, float) else f'{k:28s} {v}')
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(result, f, indent=2)


if __name__ == '__main__':
  main()
