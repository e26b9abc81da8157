"""The host training loop: data in, pmapped steps, logs, checkpoints, grids.

Everything the loop calls on devices is built once, before the first step
(`_build`): the donated train step, the test-loss step and the snapshot
sampler. Step s of training draws example i's randomness from
fold_in(fold_in(train_key, s), i), and every checkpoint holds the input
pipeline's position, so a resumed run continues exactly (`checkpoints`).

TensorFlow (the input pipeline) and clu (the TensorBoard writer, the
profiler hook) are imported when a run needs them, so the loop itself runs
where neither is installed (`bench/loop_overhead.py`).
"""

import dataclasses
import functools
import os
from typing import Any, Callable

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from ncsn_jax import checkpoints
from ncsn_jax import config_checks
from ncsn_jax import console
from ncsn_jax import errors
from ncsn_jax import models
from ncsn_jax import outputs
from ncsn_jax import parallel
from ncsn_jax import train_state
from ncsn_jax.sampling import langevin
from ncsn_jax.training import step as step_lib


@functools.partial(jax.jit, static_argnums=(2, 3))
def train_keys(train_key: jax.Array, first_step: int, k: int, n: int):
  """Per-example keys `[k, n]` of steps first_step .. first_step + k - 1.

  Row j holds fold_in(fold_in(train_key, first_step + j), i) for this
  process's n examples i of the global batch (`parallel.process_keys`).
  One compiled program (not a dozen eager ops per step).
  """
  return jnp.stack([
      parallel.process_keys(jax.random.fold_in(train_key, first_step + j), n)
      for j in range(k)])


def _crossed(step: int, k: int, every: int) -> bool:
  """Whether the steps (step - k, step] contain a multiple of `every`."""
  return step // every > (step - k) // every


def _next_batches(iterator, k: int) -> np.ndarray:
  """k host batches stacked into `[k, B_process, H, W, C]`."""
  return np.stack([np.asarray(next(iterator)['image']) for _ in range(k)])


def _check_due(step: int, k: int, t) -> bool:
  """Whether the loop fetches the non-finite flags now (log, snapshot, end).

  Fetching them every step would wait for each step before feeding the
  next; a non-finite step leaves the state unchanged (`step.train_step`),
  so checking later loses nothing.
  """
  return (_crossed(step, k, t.log_freq) or _crossed(step, k, t.snapshot_freq)
          or step == t.n_iters)


def _check_finite(pending, config, skipped: int) -> int:
  """Counts skipped NaN/Inf steps; raises unless skipping is enabled.

  `pending`: (last step, `nonfinite` flags `[k]`) of each call since the
  last check.
  """
  bad, first, step = 0, None, 0
  for step, flags in pending:
    flags = np.asarray(flags).reshape(-1)
    bad += int(np.sum(flags))
    if first is None and flags.any():
      first = step - len(flags) + 1 + int(np.argmax(flags))
  if bad and not config.training.skip_nonfinite:
    raise errors.NonFiniteLossError(
        f'non-finite loss or gradient at step {first}; the last checkpoint is '
        'kept. Lower config.optim.lr, set config.optim.grad_clip, or set '
        'config.training.skip_nonfinite=True to skip such steps.')
  if bad:
    logging.warning('Skipped %d non-finite step(s) up to step %d.', bad, step)
  return skipped + bad


def host_metrics(metrics) -> dict[str, float]:
  """Scalars of the last step of a `multi_train_step` metrics pytree."""
  last = jax.tree.map(lambda x: np.asarray(x)[-1], metrics)
  out = {k: float(last[k]) for k in ('loss', 'grad_norm', 'learning_rate')}
  for g, (s, c) in enumerate(zip(last['group_loss_sums'],
                                 last['group_counts'])):
    if c > 0:
      out[f'loss_sigma_group_{g}'] = float(s / c)
  return out


@dataclasses.dataclass(frozen=True)
class _Context:
  """What the loop needs besides the state, built once by `_build`."""
  config: Any
  workdir: str
  model: Any
  tx: Any
  keys: dict[str, jax.Array]  # init, train, eval, sample
  datasets: dict[str, Any]  # train, test: tf.data datasets (or iterables)
  iters: dict[str, Any]  # train, test: their iterators (replaced on resume)
  p_train: Callable
  p_eval: Callable
  p_sample: Callable
  manager: Any  # The checkpoint manager; None: no checkpoints (benchmarks).
  writer: Any  # A clu metric writer; None: no TensorBoard (benchmarks).
  is_main: bool


def _datasets(config):
  """Repeating train (augmented) and test datasets of this process."""
  # pylint: disable-next=g-import-not-at-top
  from ncsn_jax.data import input_pipeline
  n = jax.process_count()
  train = input_pipeline.create_dataset(
      config, 'train', batch_size=config.training.batch_size // n,
      shuffle=True, repeat=True, augment=True, seed=config.seed)
  test = input_pipeline.create_dataset(
      config, 'test', batch_size=config.eval.batch_size // n, shuffle=True,
      repeat=True, augment=False, seed=config.seed + 1)
  return {'train': train, 'test': test}


def _build(config, workdir: str, datasets=None, writer=True) -> _Context:
  """The loop's programs, keys, data and writer (`datasets`, `writer`:
  replacements for benchmarks: iterables of `{'image'}` batches, None)."""
  model = models.create_model(config)
  p_train, tx = step_lib.make_train_step(config, model)
  names = ('init', 'train', 'eval', 'sample')
  keys = dict(zip(names, jax.random.split(jax.random.key(config.seed), 4)))
  datasets = datasets or _datasets(config)
  is_main = jax.process_index() == 0
  if writer is True:
    writer = outputs.create_writer(workdir, is_main)
  return _Context(
      config=config, workdir=workdir, model=model, tx=tx, keys=keys,
      datasets=datasets, iters={k: iter(v) for k, v in datasets.items()},
      p_train=p_train, p_eval=step_lib.make_eval_step(config, model),
      p_sample=parallel.pmap_sampler(langevin.get_sampler(config, model)),
      manager=None,  # Created by `train` once it holds the workdir lock.
      writer=writer, is_main=is_main)


def _initial_state(ctx: _Context) -> tuple[train_state.TrainState, int]:
  """A fresh state, or the checkpoint's (iterators moved to its position).

  Returns:
    (state, the run's resumes without an input position so far).
  """
  state = train_state.create_train_state(ctx.config, ctx.model, ctx.tx,
                                         ctx.keys['init'])
  if ctx.manager is None or ctx.manager.latest_step() is None:
    return state, 0
  return checkpoints.resume(ctx.manager, ctx.workdir, ctx.config, state,
                            ctx.datasets, ctx.iters, ctx.is_main)


def _log(ctx: _Context, state, metrics, step: int, k: int, extra: dict):
  """Scalars (and a test-batch loss) when step `step` is due for them."""
  t, record = ctx.config.training, {}
  if _crossed(step, k, t.log_freq) or step == t.n_iters:
    record.update(host_metrics(metrics), **extra)
  if _crossed(step, k, t.eval_freq):
    images = np.asarray(next(ctx.iters['test'])['image'])
    keys = parallel.process_keys(
        jax.random.fold_in(ctx.keys['eval'], step), len(images))
    record['test_loss'] = float(ctx.p_eval(
        parallel.unreplicate(state).ema_params, images, keys))
  if record and ctx.writer is not None:
    ctx.writer.write_scalars(step, record)
    if ctx.is_main:
      outputs.append_metrics(ctx.workdir, {'step': step, **record})
  return record


def snapshot_samples(config, p_sample, params, key, workdir: str,
                     step: int, writer=None) -> str:
  """Samples a grid with `params`; writes `WORKDIR/samples/step_<k>.png`.

  `p_sample` is the loop's sampler, pmapped once for every snapshot. With a
  clu `writer` the grid also goes to TensorBoard (image 'samples').
  """
  images, _ = langevin.sample_batch(config, p_sample, params, key,
                                    config.training.snapshot_n_samples)
  path = os.path.join(workdir, 'samples', f'step_{step}.png')
  grid = outputs.save_image_grid(path, images)
  if writer is not None:
    outputs.write_grid(writer, step, grid)
  return path


def _snapshot(ctx: _Context, state, step: int, inexact: int):
  """Checkpoint (with input position), and (main process) grid, curve."""
  if ctx.manager is None:
    return
  host = jax.device_get(parallel.unreplicate(state))
  positions = {'train': (ctx.iters['train'], step),
               'test': (ctx.iters['test'],
                        step // ctx.config.training.eval_freq)}
  checkpoints.save(ctx.manager, step, host, ctx.config, positions, inexact)
  if ctx.is_main:
    if ctx.config.training.snapshot_sampling:
      path = snapshot_samples(
          ctx.config, ctx.p_sample, host.ema_params,
          jax.random.fold_in(ctx.keys['sample'], step), ctx.workdir, step,
          ctx.writer)
      logging.info('Step %d: checkpoint saved, samples in %s', step, path)
    outputs.write_loss_curve(ctx.workdir)


def _profiler(ctx: _Context):
  """clu's profiler hook at `training.profile_at_step`, or None."""
  t = ctx.config.training
  if t.profile_at_step <= 0 or not ctx.is_main:
    return None
  from clu import periodic_actions  # pylint: disable=g-import-not-at-top
  return periodic_actions.Profile(logdir=ctx.workdir,
                                  first_profile=t.profile_at_step,
                                  num_profile_steps=5)


@dataclasses.dataclass(frozen=True)
class TrainResult:
  """The outcome of `train`."""
  state: train_state.TrainState  # Final state, host arrays.
  stopped_early: bool  # Stopped by SIGTERM / SIGINT (checkpoint written).


def _train_steps(ctx: _Context, state, inexact: int) -> tuple[Any, bool]:
  """The step loop from `state` (replicated); returns (state, stopped)."""
  t = ctx.config.training
  step, skipped = int(parallel.unreplicate(state).step), 0
  profiler, pending = _profiler(ctx), []
  with console.StopRequest() as requested, console.Progress(
      t.n_iters, 'training', unit='steps', every_s=30, initial=step) as bar:
    while step < t.n_iters:
      k = min(t.n_jitted_steps, t.n_iters - step)
      images = _next_batches(ctx.iters['train'], k)
      keys = train_keys(ctx.keys['train'], step, k, images.shape[1])
      state, metrics = ctx.p_train(state, images, keys)
      step += k
      pending.append((step, metrics['nonfinite']))
      if _check_due(step, k, t):
        skipped, pending = _check_finite(pending, ctx.config, skipped), []
      if profiler is not None:
        profiler(step)
      record = _log(ctx, state, metrics, step, k,
                    {'skipped_steps': skipped, 'steps_per_sec': bar.rate()})
      bar.update(k, f'loss {record["loss"]:.4g}' if 'loss' in record else None)
      # With several processes orbax's preemption sync point makes all of
      # them stop at the same step.
      stop = requested() or (jax.process_count() > 1 and ctx.manager and
                             ctx.manager.reached_preemption(step))
      if stop or _crossed(step, k, t.snapshot_freq) or step == t.n_iters:
        _snapshot(ctx, state, step, inexact)
      if stop:
        logging.warning('Stopped at step %d on request; rerun to resume.',
                        step)
        return state, True
  return state, False


def train(config, workdir: str) -> TrainResult:
  """Trains (or resumes training of) the config's model in `workdir`.

  Writes orbax checkpoints to `WORKDIR/checkpoints/`, sample grids to
  `WORKDIR/samples/step_<k>.png`, TensorBoard scalars, `metrics.jsonl` and
  `loss_curve.png`. SIGTERM / SIGINT checkpoint and return early; a NaN or
  Inf loss raises `NonFiniteLossError` (unless skipping is configured). A
  second run in the same workdir is refused (`checkpoints.lock`).
  """
  config_checks.check_config(config, 'train')
  outputs.check_writable(os.path.join(workdir, checkpoints.CHECKPOINT_DIR),
                         '--workdir')
  ctx = _build(config, workdir)  # Bad input fails here, lock-free.
  with checkpoints.lock(workdir):
    ctx = dataclasses.replace(ctx, manager=checkpoints.create_manager(
        workdir, config.training.keep_checkpoints))
    try:
      state, inexact = _initial_state(ctx)
      # Donated to, and replaced by, p_train.
      state, stopped = _train_steps(ctx, parallel.replicate(state), inexact)
      ctx.writer.flush()
    finally:
      ctx.manager.close()
  return TrainResult(jax.device_get(parallel.unreplicate(state)), stopped)
