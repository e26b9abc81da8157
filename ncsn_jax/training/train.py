"""Stateless training: a TrainState pytree, a pure train step, the host loop.

The state is an explicit pytree (step, params, opt_state, ema_params); the
hyperparameters live in closures and the per-step randomness comes from
`fold_in(train_key, step)`, so nothing random is checkpointed and a resumed
run continues exactly.
"""

import functools
import json
import os
import signal
import threading
from typing import Any

from absl import logging
from clu import metric_writers
from clu import periodic_actions
import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ncsn_jax import backend
from ncsn_jax import errors
from ncsn_jax import image_io
from ncsn_jax import models
from ncsn_jax import parallel
from ncsn_jax import random_utils
from ncsn_jax import transforms
from ncsn_jax.data import input_pipeline
from ncsn_jax.sampling import langevin
from ncsn_jax.training import checkpointing
from ncsn_jax.training import losses


@flax.struct.dataclass
class TrainState:
  """Everything that changes during training; a pytree."""
  step: jax.Array
  params: Any
  opt_state: Any
  ema_params: Any


def create_learning_rate_fn(config):
  """Constant learning rate, with a linear warmup when `optim.warmup` > 0."""
  lr, warmup = config.optim.lr, config.optim.warmup
  if warmup <= 0:
    return optax.constant_schedule(lr)
  return optax.join_schedules(
      [optax.linear_schedule(0.0, lr, warmup), optax.constant_schedule(lr)],
      [warmup])


def create_optimizer(config) -> optax.GradientTransformation:
  """Adam of `config.optim` (PyTorch semantics: coupled L2 weight decay)."""
  o = config.optim
  if o.optimizer != 'Adam':
    raise errors.ConfigError(
        f"config.optim.optimizer={o.optimizer!r} is unknown; "
        "use 'Adam'.")
  adam = optax.scale_by_amsgrad if o.amsgrad else optax.scale_by_adam
  parts = []
  if o.grad_clip > 0:
    parts.append(optax.clip_by_global_norm(o.grad_clip))
  if o.weight_decay > 0:
    parts.append(optax.add_decayed_weights(o.weight_decay))
  parts += [adam(b1=o.beta1, b2=0.999, eps=o.eps),
            optax.scale_by_learning_rate(create_learning_rate_fn(config))]
  return optax.chain(*parts)


def init_params(config, model, key):
  """Initial parameters from one dummy batch."""
  size, channels = config.data.image_size, config.data.channels
  x = jnp.zeros((1, size, size, channels), jnp.float32)
  return model.init(key, x, jnp.zeros((1,), jnp.int32))['params']


def create_train_state(config, model, tx, key) -> TrainState:
  params = init_params(config, model, key)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    opt_state=tx.init(params), ema_params=params)


def loss_group_metrics(per_example, labels, num_classes, n_groups):
  """Sums and counts of the loss over groups of noise levels (psum'ed).

  Group g holds labels [g L / G, (g + 1) L / G); group 0 = largest sigmas.
  """
  n_groups = min(n_groups, num_classes)
  groups = labels * n_groups // num_classes
  sums = jax.ops.segment_sum(per_example, groups, n_groups)
  counts = jax.ops.segment_sum(jnp.ones_like(per_example), groups, n_groups)
  return jax.lax.psum(sums, parallel.AXIS), jax.lax.psum(counts, parallel.AXIS)


def accumulated_grads(loss_fn, params, x, keys, n_micro: int):
  """Loss and gradients of the mean loss, over `n_micro` micro-batches.

  The batch loss is a mean over examples, so averaging the gradients of
  equal micro-batches gives the full-batch gradient while holding only one
  micro-batch of activations at a time.

  Returns:
    ((loss, aux), grads) as `jax.value_and_grad(..., has_aux=True)` does.
  """
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  if n_micro == 1:
    return grad_fn(params, x, keys)
  n = x.shape[0]
  if n % n_micro:
    raise errors.ConfigError(
        f'config.training.grad_accum_steps={n_micro} does not divide the '
        f'per-device batch of {n}.')
  split = lambda a: a.reshape((n_micro, n // n_micro) + a.shape[1:])

  def body(total, micro):
    (loss, aux), grads = grad_fn(params, *micro)
    return jax.tree.map(jnp.add, total, grads), (loss, aux)

  zeros = jax.tree.map(jnp.zeros_like, params)
  grads, (loss, aux) = jax.lax.scan(body, zeros, (split(x), split(keys)))
  grads = jax.tree.map(lambda g: g / n_micro, grads)
  aux = jax.tree.map(lambda a: a.reshape((n,) + a.shape[2:]), aux)
  return (jnp.mean(loss), aux), grads


def train_step(state: TrainState, images, train_key, *, config, loss_fn, tx):
  """One optimisation step on this device's slice of the global batch.

  A step whose loss or gradients are not finite leaves params, optimiser
  state and EMA unchanged and reports `nonfinite = 1` (the host decides
  whether to stop or to go on).

  Args:
    state: the (replicated) train state.
    images: data-space images `[B_device,H,W,C]`.
    train_key: root training key; the step key is fold_in(train_key, step).
    config: experiment config (static).
    loss_fn: `loss_fn(params, x, keys) -> (loss, aux)`.
    tx: the optax optimiser.

  Returns:
    (new state, metrics), identical on every device.
  """
  step_key = jax.random.fold_in(train_key, state.step)
  n = images.shape[0]
  keys = random_utils.per_example_keys(step_key, n, parallel.device_offset(n))
  x = transforms.data_transform(images, config)
  (loss, aux), grads = accumulated_grads(loss_fn, state.params, x, keys,
                                         config.training.grad_accum_steps)
  grads = jax.lax.pmean(grads, parallel.AXIS)
  loss = jax.lax.pmean(loss, parallel.AXIS)
  grad_norm = optax.tree.norm(grads)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  rate = config.model.ema_rate if config.model.ema else 0.0
  ema_params = optax.incremental_update(params, state.ema_params, 1.0 - rate)
  keep_if_bad = lambda new, old: jax.tree.map(
      lambda a, b: jnp.where(finite, a, b), new, old)
  sums, counts = loss_group_metrics(aux['losses'], aux['labels'],
                                    config.model.num_classes,
                                    config.training.n_loss_groups)
  metrics = {
      'loss': loss,
      'grad_norm': grad_norm,
      'learning_rate': create_learning_rate_fn(config)(state.step),
      'group_loss_sums': sums,
      'group_counts': counts,
      'nonfinite': 1 - finite.astype(jnp.int32),
  }
  new_state = TrainState(
      step=state.step + 1,
      params=keep_if_bad(params, state.params),
      opt_state=keep_if_bad(opt_state, state.opt_state),
      ema_params=keep_if_bad(ema_params, state.ema_params))
  return new_state, metrics


def multi_train_step(state, images, train_key, **kwargs):
  """`k` train steps in one `lax.scan`; images `[k, B_device,H,W,C]`.

  Where `backend.unroll_train_steps()` (XLA:CPU) the k steps are traced one
  after the other instead: convolution gradients inside a while loop run
  several times slower there, even when the loop runs once (and
  `scan(unroll=True)` keeps that loop); unrolling only costs compile time.
  """
  step = functools.partial(train_step, train_key=train_key, **kwargs)
  if not backend.unroll_train_steps():
    return jax.lax.scan(step, state, images)
  metrics = []
  for i in range(images.shape[0]):
    state, m = step(state, images[i])
    metrics.append(m)
  return state, jax.tree.map(lambda *xs: jnp.stack(xs), *metrics)


def eval_step(params, images, key, *, config, loss_fn):
  """Mean DSM loss of `params` on this device's test images (pmean'ed)."""
  n = images.shape[0]
  keys = random_utils.per_example_keys(key, n, parallel.device_offset(n))
  loss, _ = loss_fn(params, transforms.data_transform(images, config), keys)
  return jax.lax.pmean(loss, parallel.AXIS)


def host_metrics(metrics) -> dict[str, float]:
  """Scalars of the last step of a `multi_train_step` metrics pytree."""
  last = jax.tree.map(lambda x: np.asarray(x)[-1], metrics)
  out = {k: float(last[k]) for k in ('loss', 'grad_norm', 'learning_rate')}
  for g, (s, c) in enumerate(zip(last['group_loss_sums'],
                                 last['group_counts'])):
    if c > 0:
      out[f'loss_sigma_group_{g}'] = float(s / c)
  return out


def check_config(config) -> None:
  """Raises ValueError naming the field for settings training cannot take."""
  t = config.training
  parallel.check_divisible(t.batch_size, 'config.training.batch_size')
  if t.batch_size % (jax.process_count() * jax.local_device_count()):
    raise errors.ConfigError(
        f'config.training.batch_size={t.batch_size} must split '
        'evenly over processes and their devices.')
  for field in ('n_iters', 'snapshot_freq', 'log_freq', 'eval_freq',
                'n_jitted_steps'):
    if t[field] < 1:
      raise errors.ConfigError(
          f'config.training.{field}={t[field]} must be >= 1.')
  if t.snapshot_n_samples % jax.local_device_count():
    raise errors.ConfigError(
        f'config.training.snapshot_n_samples={t.snapshot_n_samples} is not '
        f'divisible by the {jax.local_device_count()} local devices.')


def _crossed(step: int, k: int, every: int) -> bool:
  """Whether the steps (step - k, step] contain a multiple of `every`."""
  return step // every > (step - k) // every


def _next_batches(iterator, k: int):
  """k host batches stacked into `[D, k, B_device, H, W, C]`."""
  images = np.stack([np.asarray(next(iterator)['image']) for _ in range(k)])
  d = jax.local_device_count()
  images = images.reshape((k, d, -1) + images.shape[2:])
  return np.swapaxes(images, 0, 1)


def _append_jsonl(path: str, record: dict) -> None:
  with open(path, 'a') as f:
    f.write(json.dumps(record) + '\n')


def write_loss_curve(workdir: str) -> str:
  """Plots `WORKDIR/metrics.jsonl` to `WORKDIR/loss_curve.png`."""
  path = os.path.join(workdir, 'metrics.jsonl')
  records = []
  if os.path.exists(path):
    with open(path) as f:
      records = [json.loads(line) for line in f if line.strip()]
  train = [(r['step'], r['loss']) for r in records if 'loss' in r]
  test = [(r['step'], r['test_loss']) for r in records if 'test_loss' in r]
  out = os.path.join(workdir, 'loss_curve.png')
  if train:
    image_io.save_loss_curve(
        out, *zip(*train), title='DSM loss',
        test_steps=[s for s, _ in test] or None,
        test_losses=[v for _, v in test] or None, log_y=True)
  return out


def snapshot_samples(config, model, params, key, workdir: str, step: int):
  """Samples a grid with `params` and writes `WORKDIR/samples/step_<k>.png`."""
  sample_fn = langevin.get_sampler(config, model)
  n = config.training.snapshot_n_samples
  x0 = langevin.init_samples(key, config, n)
  x, _ = parallel.p_sample(sample_fn, params, x0, key)
  images = np.asarray(transforms.inverse_data_transform(x, config))
  path = os.path.join(workdir, 'samples', f'step_{step}.png')
  image_io.save_image_grid(path, images, scale=max(1, 64 // images.shape[1]))
  return path


class PreemptionWatcher:
  """Turns SIGTERM / SIGINT into a request to checkpoint and stop cleanly.

  With several processes, orbax's preemption sync point (backed by
  `jax.distributed`) makes all of them stop at the same step.
  """

  def __init__(self):
    self.requested = False
    self._previous = {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for sig in (signal.SIGTERM, signal.SIGINT):
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)

  def _handle(self, signum, frame):
    del frame
    logging.warning('Signal %d: checkpointing after this step.', signum)
    self.requested = True

  def should_stop(self, manager, step: int) -> bool:
    if jax.process_count() > 1:
      return self.requested or manager.reached_preemption(step)
    return self.requested


def _check_finite(metrics, step: int, config, skipped: int) -> int:
  """Counts skipped NaN/Inf steps; raises unless skipping is enabled."""
  bad = int(np.sum(np.asarray(metrics['nonfinite'])))
  if bad and not config.training.skip_nonfinite:
    raise errors.NonFiniteLossError(
        f'non-finite loss or gradient at step {step}; the last checkpoint is '
        'kept. Lower config.optim.lr, set config.optim.grad_clip, or set '
        'config.training.skip_nonfinite=True to skip such steps.')
  if bad:
    logging.warning('Skipped %d non-finite step(s) up to step %d.', bad, step)
  return skipped + bad


class _Run:
  """What the training loop needs besides the state (built once)."""

  def __init__(self, config, workdir: str):
    check_config(config)
    self.config, self.workdir = config, workdir
    self.model = models.create_model(config)
    self.tx = create_optimizer(config)
    loss_fn = losses.get_loss_fn(config, self.model)
    (self.init_key, self.train_key, self.eval_key,
     self.sample_key) = jax.random.split(jax.random.key(config.seed), 4)
    t = config.training
    self.train_iter = iter(input_pipeline.create_dataset(
        config, 'train', batch_size=t.batch_size // jax.process_count(),
        shuffle=True, repeat=True, augment=True, seed=config.seed))
    self.test_iter = iter(input_pipeline.create_dataset(
        config, 'test',
        batch_size=config.eval.batch_size // jax.process_count(),
        shuffle=True, repeat=True, augment=False, seed=config.seed + 1))
    self.p_train = parallel.pmap_train_step(functools.partial(
        multi_train_step, config=config, loss_fn=loss_fn, tx=self.tx))
    self.p_eval = parallel.pmap_eval_step(functools.partial(
        eval_step, config=config, loss_fn=loss_fn))
    self.manager = checkpointing.create_manager(workdir, t.keep_checkpoints)
    self.is_main = jax.process_index() == 0
    self.writer = metric_writers.create_default_writer(
        workdir, just_logging=not self.is_main, asynchronous=False)

  def initial_state(self) -> TrainState:
    state = create_train_state(self.config, self.model, self.tx,
                               self.init_key)
    if self.manager.latest_step() is None:
      return state
    state, start = checkpointing.restore(self.manager, state)
    checkpointing.restore_data_iterator(self.workdir, start, self.train_iter)
    logging.info('Resumed from checkpoint step %d.', start)
    return state

  def log(self, state, metrics, step: int, k: int, skipped: int):
    t, record = self.config.training, {}
    if _crossed(step, k, t.log_freq) or step == t.n_iters:
      record.update(host_metrics(metrics), skipped_steps=skipped)
    if _crossed(step, k, t.eval_freq):
      images = parallel.shard(np.asarray(next(self.test_iter)['image']))
      record['test_loss'] = float(self.p_eval(
          state.ema_params, images, jax.random.fold_in(self.eval_key, step)))
    if record:
      self.writer.write_scalars(step, record)
      if self.is_main:
        _append_jsonl(os.path.join(self.workdir, 'metrics.jsonl'),
                      {'step': step, **record})

  def snapshot(self, state, step: int):
    checkpointing.save(self.manager, step, state)
    checkpointing.save_data_iterator(self.workdir, step, self.train_iter)
    if self.is_main:
      if self.config.training.snapshot_sampling:
        path = snapshot_samples(self.config, self.model, state.ema_params,
                                jax.random.fold_in(self.sample_key, step),
                                self.workdir, step)
        logging.info('Step %d: checkpoint saved, samples in %s', step, path)
      write_loss_curve(self.workdir)


def train_and_evaluate(config, workdir: str) -> TrainState:
  """Trains (or resumes training of) the config's model in `workdir`.

  Writes orbax checkpoints to `WORKDIR/checkpoints/`, sample grids to
  `WORKDIR/samples/step_<k>.png`, TensorBoard scalars, `metrics.jsonl` and
  `loss_curve.png`. SIGTERM / SIGINT checkpoint and return early; a NaN or
  Inf loss raises `NonFiniteLossError` (unless skipping is configured).

  Returns:
    The final train state (host arrays).
  """
  run = _Run(config, workdir)
  state = run.initial_state()
  t = config.training
  hooks = [periodic_actions.ReportProgress(
      num_train_steps=t.n_iters, writer=run.writer, every_steps=t.log_freq)]
  if t.profile_at_step > 0 and run.is_main:
    hooks.append(periodic_actions.Profile(
        logdir=workdir, first_profile=t.profile_at_step,
        num_profile_steps=5))
  step, skipped = int(state.step), 0
  with PreemptionWatcher() as watcher:
    while step < t.n_iters:
      k = min(t.n_jitted_steps, t.n_iters - step)
      state, metrics = run.p_train(
          state, _next_batches(run.train_iter, k), run.train_key)
      step += k
      skipped = _check_finite(metrics, step, config, skipped)
      for hook in hooks:
        hook(step)
      run.log(state, metrics, step, k, skipped)
      stop = watcher.should_stop(run.manager, step)
      if stop or _crossed(step, k, t.snapshot_freq) or step == t.n_iters:
        run.snapshot(state, step)
      if stop:
        logging.warning('Stopped at step %d on request; rerun to resume.',
                        step)
        break
  run.writer.flush()
  return jax.device_get(state)
