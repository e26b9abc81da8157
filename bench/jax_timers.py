"""ncsn_jax's side of the benchmark: compiled programs as interleave timers.

Each builder compiles one program ahead of time, records its compile time,
XLA's FLOP count and buffer assignment, and returns `(timer, info)` where
`timer(what, n)` runs it n times (chaining its output where it has one) and
returns the wall time after the device is done. Only jax, flax, optax and
numpy are needed (the config may be `plain_config.AttrDict`s).
"""

import copy
import functools
import time

import jax
import jax.numpy as jnp

from ncsn_jax import backend
from ncsn_jax import models
from ncsn_jax import parallel
from ncsn_jax import train_state
from ncsn_jax.models import score
from ncsn_jax.sampling import langevin
from ncsn_jax.training import losses
from ncsn_jax.training import step as step_lib


def flops(compiled) -> float:
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  return float((cost or {}).get('flops', float('nan')))


def memory(compiled) -> dict:
  m = compiled.memory_analysis()
  if m is None:
    return {}
  return {
      'temp_bytes': int(m.temp_size_in_bytes),
      'argument_bytes': int(m.argument_size_in_bytes),
      'output_bytes': int(m.output_size_in_bytes)
  }


def _compile(fn, *args):
  """(compiled, seconds, lowered HLO text) of jit(fn) at `args`."""
  start = time.perf_counter()
  lowered = jax.jit(fn).lower(*args)
  compiled = lowered.compile()
  return compiled, time.perf_counter() - start, lowered.as_text()


def _info(compiled, seconds, items) -> dict:
  total = flops(compiled)
  return {
      'compile_s': seconds,
      'flops_per_item': total / items,
      'memory': memory(compiled)
  }


def cpu_only_paths() -> dict:
  """What `ncsn_jax.backend` decides on this backend (all off off-CPU)."""
  return {
      'backend': backend.platform(),
      'shifted_view_pools': backend.shifted_view_pools(),
      'winograd_min_pixels': backend.winograd_min_pixels(),
      'inception_micro_batch': backend.inception_micro_batch(),
      'unroll_train_steps': backend.unroll_train_steps()
  }


def train(config, batch: int, dtype: str = 'float32'):
  """One train step (jit, one device) at `batch` in compute `dtype`."""
  config = copy.deepcopy(config)
  config.training.batch_size = batch
  config.model.dtype = dtype
  model = models.create_model(config)
  tx = train_state.create_optimizer(config)
  step = functools.partial(step_lib.train_step,
                           config=config,
                           loss_fn=losses.get_loss_fn(config, model),
                           tx=tx)
  size, channels = config.data.image_size, config.data.channels
  # Under jit: run eagerly, every initialiser op is compiled on its own.
  box = {
      'state':
          jax.jit(
              lambda k: train_state.create_train_state(config, model, tx, k))
          (jax.random.key(0))
  }
  images, keys = jax.jit(lambda k1, k2:
                         (jax.random.uniform(k1, (batch, size, size, channels)),
                          parallel.per_example_keys(k2, batch)))(
                              jax.random.key(1), jax.random.key(2))
  compiled, seconds, hlo = _compile(step, box['state'], images, keys)
  info = _info(compiled, seconds, batch)
  # The plain XLA reduce_window pools are what a non-CPU backend must use.
  info['hlo_has_reduce_window'] = 'reduce_window' in hlo

  def timer(what: str, n: int) -> float:
    del what
    start = time.perf_counter()
    for _ in range(n):
      box['state'], _ = compiled(box['state'], images, keys)
    jax.block_until_ready(box['state'])
    return time.perf_counter() - start

  return timer, info


_PARAMS = {}


def _params_and_inputs(config, batch: int, abstract: bool = False):
  """(model, params, keys [B], x0 [B,H,W,C]); only shapes if `abstract`."""
  model = models.create_model(config)
  make = lambda k: train_state.init_params(config, model, k)

  def inputs(key):
    keys = parallel.per_example_keys(key, batch)
    return keys, langevin.init_samples(keys, config)

  if abstract:
    return (model, jax.eval_shape(make, jax.random.key(0)),
            *jax.eval_shape(inputs, jax.random.key(1)))
  # One initialisation (one compile) per network, whatever the batch.
  name = str(config.model) + str(config.data)
  if name not in _PARAMS:
    _PARAMS[name] = jax.jit(make)(jax.random.key(0))
  return (model, _PARAMS[name], *jax.jit(inputs)(jax.random.key(1)))


def forward(config, batch: int):
  """The no-grad score network at `batch` (one score evaluation each)."""
  model, params, _, x0 = _params_and_inputs(config, batch)
  labels = jnp.zeros((batch,), jnp.int32)
  apply = lambda p, x, y: models.make_score_fn(model, p)(x, y)
  compiled, seconds, _ = _compile(apply, params, x0, labels)

  def timer(what: str, n: int) -> float:
    del what
    start = time.perf_counter()
    for _ in range(n):
      out = compiled(params, x0, labels)
    jax.block_until_ready(out)
    return time.perf_counter() - start

  return timer, _info(compiled, seconds, batch)


def sampler(config, batch: int, levels: int = 2):
  """Annealed Langevin over the first `levels` noise levels x T steps.

  The chain is the one the full sampler scans over (the same step); a call
  makes batch x levels x T score evaluations (`info['evals_per_call']`).
  """
  model, params, keys, x0 = _params_and_inputs(config, batch)
  sigmas = jnp.asarray(score.get_sigmas(config))[:levels]
  s = config.sampling

  def run(p, x, k):
    return langevin.annealed_langevin(models.make_score_fn(model, p), x, k,
                                      sigmas, s.n_steps_each, s.step_lr)[0]

  compiled, seconds, _ = _compile(run, params, x0, keys)
  evals = batch * levels * s.n_steps_each
  box = {'x': x0}

  def timer(what: str, n: int) -> float:
    del what
    start = time.perf_counter()
    for _ in range(n):
      box['x'] = compiled(params, box['x'], keys)
    jax.block_until_ready(box['x'])
    return time.perf_counter() - start

  info = _info(compiled, seconds, evals)
  info['evals_per_call'] = evals
  return timer, info


def sampler_compile_seconds(config, batch: int, levels: int,
                            steps: int) -> float:
  """Compile time of the full `get_sampler` program for L x T steps."""
  config = copy.deepcopy(config)
  config.model.num_classes, config.sampling.n_steps_each = levels, steps
  model, params, keys, x0 = _params_and_inputs(config, batch, abstract=True)
  return _compile(langevin.get_sampler(config, model), params, x0, keys)[1]
