"""ncsn_jax's side of the benchmark: compiled programs as interleave timers.

Each builder compiles one program ahead of time, records its compile time,
its model FLOPs (`flops.count`, from the traced program: the same on every
backend) and XLA's buffer assignment (`memory`, the one place these figures
are read), and returns `(timer, info)` where `timer(what, n)` runs it n
times (chaining its output where it has one) and returns the wall time
after the device is done. Only jax, flax, optax and numpy are needed (the
config may be `plain_config.AttrDict`s).
"""

import copy
import time

from bench import flops
import jax
import jax.numpy as jnp
import numpy as np

from ncsn_jax import backend
from ncsn_jax import models
from ncsn_jax import parallel
from ncsn_jax import train_state
from ncsn_jax.models import score
from ncsn_jax.sampling import langevin
from ncsn_jax.training import step as step_lib


def memory(compiled) -> dict:
  """XLA's buffer assignment of a compiled program, in bytes ({} if none).

  argument / output: the program's inputs and results; alias: output bytes
  written into donated input buffers; temp: temporaries; peak: XLA's own
  peak estimate (on XLA:CPU it leaves the temporaries out).
  """
  m = compiled.memory_analysis()
  if m is None:
    return {}
  fields = {'argument_bytes': 'argument_size_in_bytes',
            'output_bytes': 'output_size_in_bytes',
            'alias_bytes': 'alias_size_in_bytes',
            'temp_bytes': 'temp_size_in_bytes',
            'peak_bytes': 'peak_memory_in_bytes'}
  return {k: int(getattr(m, v)) for k, v in fields.items() if hasattr(m, v)}


def _compile(fn, *args, **jit_kwargs):
  """(compiled, seconds, lowered HLO text) of jit(fn) at `args`."""
  start = time.perf_counter()
  lowered = jax.jit(fn, **jit_kwargs).lower(*args)
  compiled = lowered.compile()
  return compiled, time.perf_counter() - start, lowered.as_text()


def _info(compiled, seconds, total_flops, items) -> dict:
  return {
      'compile_s': seconds,
      'flops_per_item': total_flops / items,
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


def draw_params(abstract_params, seed: int = 0):
  """Parameters of the given shapes drawn in NumPy (host arrays).

  Kernels (2-D and up) ~ U(+-1 / sqrt(fan_in)), PyTorch's default scale;
  the norms' alpha and gamma 1, every other vector 0. A step takes the same
  time whatever the values, and drawing them here spares compiling the
  network's initialiser, which takes tens of seconds on a CPU (its random
  draws and a forward pass in one program), and only here the benchmarks
  would need it.
  """
  rng = np.random.default_rng(seed)

  def draw(path, x):
    if len(x.shape) >= 2:
      bound = 1.0 / np.sqrt(np.prod(x.shape[:-1]))
      return rng.uniform(-bound, bound, x.shape).astype(x.dtype)
    name = jax.tree_util.keystr(path)
    one = name.endswith(("'alpha']", "'gamma']"))
    return (np.ones if one else np.zeros)(x.shape, x.dtype)

  return jax.tree_util.tree_map_with_path(draw, abstract_params)


def bench_state(config, seed: int = 0) -> train_state.TrainState:
  """A step-0 train state of `config` (host arrays): `draw_params` for the
  parameters and the EMA, zero optimiser state."""
  abstract = train_state.abstract_train_state(config)
  params = draw_params(abstract.params, seed)
  zeros = lambda x: np.zeros(x.shape, x.dtype)
  return abstract.replace(step=zeros(abstract.step), params=params,
                          opt_state=jax.tree.map(zeros, abstract.opt_state),
                          ema_params=params)


def train_config(config, batch: int, dtype: str = ''):
  """A copy of `config` with training batch `batch` and `model.dtype`."""
  config = copy.deepcopy(config)
  config.training.batch_size = batch
  if dtype:
    config.model.dtype = dtype
  return config


def replicated(tree):
  """`ShapeDtypeStruct`s of `tree` as `parallel.replicate` lays it out."""
  mesh = jax.sharding.Mesh(np.asarray(jax.local_devices()), (parallel.AXIS,))
  sharding = jax.sharding.NamedSharding(
      mesh, jax.sharding.PartitionSpec(parallel.AXIS))
  d = jax.local_device_count()
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct((d,) + tuple(x.shape), x.dtype,
                                     sharding=sharding), tree)


def train_inputs(config, k: int = 1, abstract: bool = False):
  """(images `[k,B,H,W,C]`, keys `[k,B]`) of the config's train step."""
  b, s = config.training.batch_size, config.data.image_size
  shape = (k, b, s, s, config.data.channels)

  def make(key):
    k1, k2 = jax.random.split(key)
    keys = jax.vmap(lambda r: parallel.per_example_keys(r, b))(
        jax.random.split(k2, k))
    return jax.random.uniform(k1, shape), keys

  if abstract:
    return jax.eval_shape(make, jax.random.key(0))
  return jax.jit(make)(jax.random.key(0))


def lower_train_step(config, donate: bool = True):
  """`make_train_step`'s program, lowered at abstract inputs (nothing runs).

  `p_train` is jitted as a whole: jit adds only the split of the batch over
  the devices, which `p_train` does before calling its pmapped program, and
  the state is donated as `p_train` donates it. `donate=False` builds the
  same step without donation (only to show what donation saves).

  Returns:
    (lowered, p_train, abstract state, abstract images, abstract keys).
  """
  p_train, _ = step_lib.make_train_step(config, models.create_model(config))
  state = replicated(train_state.abstract_train_state(config))
  images, keys = train_inputs(config, abstract=True)
  lowered = jax.jit(p_train, donate_argnums=(0,) if donate else ()).lower(
      state, images, keys)
  return lowered, p_train, state, images, keys


def train_flops(config) -> float:
  """FLOPs of one train step of `config` (all local devices together)."""
  p_train, _ = step_lib.make_train_step(config, models.create_model(config))
  state = replicated(train_state.abstract_train_state(config))
  return flops.count(p_train, state, *train_inputs(config, abstract=True))


def train(config, batch: int, dtype: str = 'float32'):
  """The config's train step (`make_train_step`) at `batch` in `dtype`.

  As the training loop runs it: pmapped over the local devices (B / D
  examples each), the state donated; the timer chains the state.
  """
  config = train_config(config, batch, dtype)
  p_train, _ = step_lib.make_train_step(config, models.create_model(config))
  state = parallel.replicate(bench_state(config))
  images, keys = train_inputs(config)
  box = {'state': state}
  start = time.perf_counter()
  lowered = jax.jit(p_train, donate_argnums=(0,)).lower(state, images, keys)
  compiled = lowered.compile()
  seconds = time.perf_counter() - start
  info = _info(compiled, seconds, train_flops(config), batch)
  info['devices'] = jax.local_device_count()
  info['state_bytes'] = sum(x.size * x.dtype.itemsize
                            for x in jax.tree.leaves(
                                train_state.abstract_train_state(config)))
  # The plain XLA reduce_window pools are what a non-CPU backend must use.
  info['hlo_has_reduce_window'] = 'reduce_window' in lowered.as_text()

  def timer(what: str, n: int) -> float:
    del what
    start = time.perf_counter()
    for _ in range(n):
      box['state'], _ = compiled(box['state'], images, keys)
    jax.block_until_ready(box['state'])
    return time.perf_counter() - start

  return timer, info


def _params_and_inputs(config, batch: int, abstract: bool = False):
  """(model, params, keys [B], x0 [B,H,W,C]); only shapes if `abstract`."""
  model = models.create_model(config)
  params = jax.eval_shape(
      lambda k: train_state.init_params(config, model, k), jax.random.key(0))

  def inputs(key):
    keys = parallel.per_example_keys(key, batch)
    return keys, langevin.init_samples(keys, config)

  if abstract:
    return (model, params, *jax.eval_shape(inputs, jax.random.key(1)))
  return (model, jax.device_put(draw_params(params)),
          *jax.jit(inputs)(jax.random.key(1)))


def forward_flops(config) -> float:
  """FLOPs of one score evaluation (one image) of the config's network."""
  model, params, _, x0 = _params_and_inputs(config, 1, abstract=True)
  apply = lambda p, x, y: models.make_score_fn(model, p)(x, y)
  return flops.count(apply, params, x0, jax.ShapeDtypeStruct((1,), jnp.int32))


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

  return timer, _info(compiled, seconds, flops.count(apply, params, x0, labels),
                      batch)


def sampler(config, batch: int, levels: int = 2, dtype: str = ''):
  """Annealed Langevin over the first `levels` noise levels x T steps.

  The chain is the one the full sampler scans over (the same step, the
  network in `sampling.dtype`, here `dtype` when given); a call makes
  batch x levels x T score evaluations (`info['evals_per_call']`).
  """
  config = copy.deepcopy(config)
  if dtype:
    config.sampling.dtype = dtype
  model, params, keys, x0 = _params_and_inputs(config, batch)
  sigmas = jnp.asarray(score.get_sigmas(config))[:levels]
  s = config.sampling

  def run(p, x, k):
    return langevin.annealed_langevin(
        langevin.sampler_score_fn(config, model, p), x, k, sigmas,
        s.n_steps_each, s.step_lr)[0]

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

  info = _info(compiled, seconds, flops.count(run, params, x0, keys), evals)
  info['evals_per_call'] = evals
  return timer, info


def sampler_compile_seconds(config, batch: int, levels: int,
                            steps: int) -> float:
  """Compile time of the full `get_sampler` program for L x T steps."""
  config = copy.deepcopy(config)
  config.model.num_classes, config.sampling.n_steps_each = levels, steps
  model, params, keys, x0 = _params_and_inputs(config, batch, abstract=True)
  return _compile(langevin.get_sampler(config, model), params, x0, keys)[1]
