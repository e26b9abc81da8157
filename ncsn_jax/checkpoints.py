"""Checkpoints: train state, input-pipeline position and meta, atomically.

Each checkpoint `WORKDIR/checkpoints/<step>/` is one orbax composite of three
items: `state` (the train state), `data` (every process's input-pipeline
position, `data_position.py`) and `meta` (model config, noise levels and
checksums, `checkpoint_meta.py`). Orbax writes the step to a temporary
folder and renames it when all items are complete, so a save killed at any
moment leaves either the whole checkpoint or none of it.

Restores fail with one line (`errors.CheckpointError`) naming the step folder
for a missing, empty, half-written, corrupt or config-mismatched checkpoint.
Older layouts still restore: a state item named `default`, and the input
positions of `WORKDIR/data_state/` (read once, on resume).
"""

import contextlib
import errno
import io
import os
import sys
import threading
import traceback
from typing import Any, Optional
import jax
import orbax.checkpoint as ocp
import tensorflow as tf
from ncsn_jax import errors
from ncsn_jax import models
from ncsn_jax.training import kill_points
from ncsn_jax import train_state
import hashlib
import numpy as np
from ncsn_jax.models import score
import dataclasses
import json
import shutil
from absl import logging
from etils import epath
from typing import Any
from jax.experimental import multihost_utils
from ncsn_jax import outputs
import fcntl
import signal

CHECKPOINT_DIR = 'checkpoints'
STATE, DATA, META = 'state', 'data', 'meta'
LEGACY_STATE = 'default'
LEGACY_DATA_DIR = 'data_state'


def create_manager(workdir: str, keep: int = 0,
                   create: bool = True) -> ocp.CheckpointManager:
  """Orbax manager of `WORKDIR/checkpoints`; `keep=0` keeps every step."""
  directory = os.path.abspath(os.path.join(workdir, CHECKPOINT_DIR))
  options = ocp.CheckpointManagerOptions(
      max_to_keep=keep or None, create=create,
      enable_async_checkpointing=False)
  try:
    manager = ocp.CheckpointManager(directory, options=options)
    if create and jax.process_index() == 0:  # Fail now, not at the 1st save.
      probe = os.path.join(directory, '.write_probe')
      with open(probe, 'w') as f:
        f.write('ok')
      os.remove(probe)
    return manager
  except OSError as e:
    raise errors.CheckpointError(
        f'cannot write to checkpoint folder {directory} '
        f'({e.strerror or e}); fix its permissions, free disk space or '
        'choose another --workdir.') from e


def step_dir(manager: ocp.CheckpointManager, step: int) -> str:
  return os.path.join(str(manager.directory), str(step))


def save(manager: ocp.CheckpointManager, step: int, state: Any,
         config=None, iterators: Optional[dict] = None,
         inexact_resumes: int = 0) -> None:
  """Saves checkpoint `step` (all processes call).

  Args:
    manager: from `create_manager`.
    step: the step number.
    state: the train state (host copy taken here).
    config: the run config, recorded in the `meta` item (None: not recorded).
    iterators: {name: (tf.data iterator, batches yielded)} of this process,
      saved as the `data` item; None saves no input position.
    inexact_resumes: resumes without an input position so far in the run.
  """
  host = jax.device_get(state)
  items = {STATE: ocp.args.StandardSave(host),
           META: ocp.args.JsonSave(build(
               config, host, step, inexact_resumes))}
  if iterators is not None:
    items[DATA] = DataPositionSave(iterators, int(step))
  try:
    with _held_stderr():
      manager.save(step, args=ocp.args.Composite(**items), force=True)
      manager.wait_until_finished()
  except Exception as e:  # pylint: disable=broad-except
    reason = _write_failure(e)
    if reason is None:
      raise
    raise errors.CheckpointError(
        f'cannot write checkpoint {step} to {manager.directory} ({reason}); '
        'free disk space or fix its permissions, then rerun to resume from '
        'the last checkpoint.') from e
  kill_points.maybe_kill('after_commit', step)


_WRITE_FAILURES = {errno.ENOSPC: 'no space left on device',
                   errno.EACCES: 'permission denied',
                   errno.EPERM: 'operation not permitted',
                   errno.EROFS: 'read-only file system',
                   errno.EDQUOT: 'disk quota exceeded'}


def _write_failure(e: BaseException) -> Optional[str]:
  """Why a save failed, if the storage refused it; None for other errors."""
  while e is not None:
    if isinstance(e, OSError) and e.errno in _WRITE_FAILURES:
      return _WRITE_FAILURES[e.errno]
    text = str(e)
    for code, reason in _WRITE_FAILURES.items():
      if (f"os_error_code='{code}'" in text or os.strerror(code) in text or
          reason in text.lower()):
        return reason
    e = e.__cause__ or e.__context__
  return None


@contextlib.contextmanager
def _held_stderr():
  """Holds what orbax's worker threads print to stderr during a save.

  A save the storage refuses makes every writer thread print its own
  traceback; the caller reports the failure in one line instead. After a
  successful save anything held is printed as usual.
  """
  real, held = sys.stderr, io.StringIO()
  hook = threading.excepthook
  sys.stderr = held
  threading.excepthook = lambda args: traceback.print_exception(
      args.exc_type, args.exc_value, args.exc_traceback, file=held)
  ok = False
  try:
    yield
    ok = True
  finally:
    sys.stderr, threading.excepthook = real, hook
    if ok and held.getvalue():
      real.write(held.getvalue())


def resolve_step(manager: ocp.CheckpointManager, step: int = 0) -> int:
  """`step`, or the latest step when 0; raises CheckpointError if absent."""
  steps = manager.all_steps()
  where = manager.directory
  if not steps:
    raise errors.CheckpointError(
        f'no checkpoint in {where}; train first (--mode=train) or point '
        '--workdir at a run that has checkpoints.')
  if step == 0:
    return max(steps)
  if step not in steps:
    raise errors.CheckpointError(
        f'checkpoint step {step} not found in {where} (have '
        f'{sorted(steps)}); set the ckpt_id config field to one of them.')
  return step


def _items(path: str) -> set[str]:
  try:
    return {d for d in os.listdir(path)
            if os.path.isdir(os.path.join(path, d))}
  except OSError:
    return set()


def read_meta(manager: ocp.CheckpointManager, step: int) -> Optional[dict]:
  """The `meta` item of checkpoint `step`, or None (older checkpoints)."""
  path = step_dir(manager, step)
  if META not in _items(path):
    return None
  try:
    return manager.restore(step, args=ocp.args.Composite(
        **{META: ocp.args.JsonRestore()}))[META]
  except Exception as e:  # orbax raises many types for damaged outputs.
    raise _unreadable(manager, step, e) from e


def _unreadable(manager, step: int, e: Exception) -> errors.CheckpointError:
  others = sorted(s for s in manager.all_steps() if s != step)
  return errors.CheckpointError(
      f'checkpoint {step_dir(manager, step)} is unreadable '
      f'({type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ""})'
      f'; pick another step (have {others}) with config.sampling.ckpt_id '
      '(sample/eval) or config.training.resume_step (train).')


def _restore_state(manager, step: int, name: str, abstract):
  if name == LEGACY_STATE:
    # Restored beside the manager, which then still saves composites.
    checkpointer = ocp.StandardCheckpointer()
    try:
      return checkpointer.restore(
          os.path.join(step_dir(manager, step), name), abstract)
    finally:
      checkpointer.close()
  return manager.restore(step, args=ocp.args.Composite(
      **{name: ocp.args.StandardRestore(abstract)}))[name]


def restore(manager: ocp.CheckpointManager, target: Any, step: int = 0,
            config=None):
  """Restores checkpoint `step` (0 = latest) into the structure of `target`.

  With `config`, the checkpoint's recorded model fields must match it.

  Returns:
    (restored state as host arrays, the step restored).
  """
  step = resolve_step(manager, step)
  path = step_dir(manager, step)
  items = _items(path)
  name = STATE if STATE in items else LEGACY_STATE
  if name not in items:
    raise errors.CheckpointError(
        f'checkpoint folder {path} is empty or half-written (no train state '
        f'in it); move it out of {manager.directory} to use the previous '
        'checkpoint.')
  meta = read_meta(manager, step)
  if config is not None and meta:
    check_config(meta, config, path)
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
  try:
    state = _restore_state(manager, step, name, abstract)
  except Exception as e:  # orbax raises many types for damaged outputs.
    if 'shape' in str(e).lower():
      raise errors.CheckpointError(
          f'checkpoint {path} does not fit the config\'s model '
          f'({str(e).splitlines()[0][:160]}); run with the config it was '
          'trained with.') from e
    raise _unreadable(manager, step, e) from e
  check_shapes(state, target, path)
  verify(meta, state, path)
  return state, step


def restore_data(manager: ocp.CheckpointManager, workdir: str, step: int,
                 iterators: dict) -> Optional[dict]:
  """Moves `iterators` ({name: tf.data iterator}) to checkpoint `step`.

  Returns:
    {name: {'batches', 'tf_data'}} of this process, or None when the
    checkpoint has no input position (an imported or older checkpoint).
  """
  if DATA in _items(step_dir(manager, step)):
    try:
      return manager.restore(step, args=ocp.args.Composite(
          **{DATA: DataPositionRestore(iterators)}))[DATA]
    except errors.CheckpointError:
      raise
    except Exception as e:  # orbax raises many types for damaged outputs.
      raise _unreadable(manager, step, e) from e
  return _legacy_data_state(workdir, step, iterators)


def _legacy_data_state(workdir: str, step: int, iterators: dict):
  """The train iterator's position in the older `data_state/` layout."""
  path = os.path.join(workdir, LEGACY_DATA_DIR,
                      f'process_{jax.process_index()}', f'step_{step}',
                      'data')
  if 'train' not in iterators or not tf.io.gfile.exists(path + '.index'):
    return None
  tf.train.Checkpoint(iterator=iterators['train']).read(
      path).assert_consumed()
  return {'train': {'batches': step, 'tf_data': True}}


def load_params(config, workdir: str, step: int = 0, ema: bool = True):
  """Parameters of checkpoint `step` (0 = latest) in `workdir`.

  Returns:
    (model, params: the EMA parameters when `ema` and config.model.ema, the
    step restored).
  """
  model = models.create_model(config)
  tx = train_state.create_optimizer(config)
  target = jax.eval_shape(lambda: train_state.create_train_state(
      config, model, tx, jax.random.key(0)))
  directory = os.path.join(workdir, CHECKPOINT_DIR)
  if not os.path.isdir(directory):
    raise errors.CheckpointError(
        f'no checkpoint folder {directory}; train first (--mode=train) or '
        'point --workdir at a run that has checkpoints.')
  manager = create_manager(workdir, create=False)
  try:
    state, step = restore(manager, target, step, config)
  finally:
    manager.close()
  params = state.ema_params if ema and config.model.ema else state.params
  return model, params, step


# ------------------------------------------------------- checkpoint_meta
# What a checkpoint records about itself: its model config and checksums.


FORMAT = 2
MODEL_FIELDS = ('model.name', 'model.ngf', 'model.num_classes',
                'model.sigma_begin', 'model.sigma_end', 'model.sigma_dist',
                'data.channels', 'data.image_size', 'data.logit_transform',
                'data.rescaled')


def _get(config, field: str):
  section, name = field.split('.')
  value = config[section][name]
  return value.item() if isinstance(value, np.generic) else value


def leaf_digests(state) -> dict[str, str]:
  """sha256 of dtype, shape and bytes of every array of `state`."""
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
    array = np.ascontiguousarray(np.asarray(leaf))
    h = hashlib.sha256(f'{array.dtype.str}{array.shape}'.encode())
    h.update(array.tobytes())
    out[jax.tree_util.keystr(path)] = h.hexdigest()
  return out


def build(config, state, step: int, inexact_resumes: int = 0) -> dict:
  """The meta record of checkpoint `step` of host `state`."""
  meta = {
      'format': FORMAT,
      'step': int(step),
      'inexact_resumes': int(inexact_resumes),
      'digests': leaf_digests(state)
  }
  if config is not None:
    meta['config'] = {f: _get(config, f) for f in MODEL_FIELDS}
    meta['sigmas'] = [float(s) for s in score.get_sigmas(config)]
  return meta


def _same(a, b) -> bool:
  if isinstance(a, float) or isinstance(b, float):
    try:
      return float(a) == float(b)
    except (TypeError, ValueError):
      return False
  return a == b


def check_config(meta: dict, config, path: str) -> None:
  """Raises CheckpointError naming every field where config and `meta` differ.
  """
  saved = meta.get('config')
  if not saved:
    return
  diffs = [
      f'config.{f}={_get(config, f)!r} vs {saved[f]!r}' for f in MODEL_FIELDS
      if f in saved and not _same(_get(config, f), saved[f])
  ]
  if not diffs and 'sigmas' in meta:
    ours = score.get_sigmas(config)
    if len(ours) != len(meta['sigmas']) or not np.allclose(
        ours, meta['sigmas'], rtol=1e-6, atol=0):
      diffs.append('the noise levels (sigmas) differ')
  if diffs:
    raise errors.CheckpointError(
        f'the config does not match checkpoint {path} (config vs '
        f'checkpoint): {"; ".join(diffs)}; run with the config it was '
        'trained with.')


def check_shapes(restored, target, path: str) -> None:
  """Raises CheckpointError at the first array whose shape differs."""
  got = jax.tree_util.tree_flatten_with_path(restored)[0]
  want = jax.tree.leaves(target)
  for (key, a), b in zip(got, want):
    if np.shape(a) != tuple(b.shape):
      raise errors.CheckpointError(
          f'checkpoint {path} holds {jax.tree_util.keystr(key)} of shape '
          f'{np.shape(a)}, the config builds {tuple(b.shape)}; run with the '
          'config it was trained with.')


def verify(meta: Optional[dict], restored: Any, path: str) -> None:
  """Raises CheckpointError if an array differs from its checksum."""
  if not meta or 'digests' not in meta:
    return
  now = leaf_digests(restored)
  bad = [k for k, v in meta['digests'].items() if now.get(k) != v]
  if bad:
    raise errors.CheckpointError(
        f'checkpoint {path} is corrupt: {len(bad)} array(s) (first '
        f'{bad[0]}) do not match the checksums written with them; pick an '
        'older step with config.sampling.ckpt_id (sample/eval) or '
        'config.training.resume_step (train).')


# --------------------------------------------------------- data_position
# The input pipeline's position as an item of the orbax checkpoint.


POSITION_FILE = 'position.json'


def process_dir(directory) -> str:
  return os.path.join(str(directory), f'process_{jax.process_index()}')


def _hashes(folder: str) -> dict[str, str]:
  out = {}
  for root, _, names in os.walk(folder):
    for name in names:
      path = os.path.join(root, name)
      rel = os.path.relpath(path, folder)
      if rel != POSITION_FILE:
        out[rel] = outputs.sha256_of(path)
  return dict(sorted(out.items()))


def _write_iterator(iterator, prefix: str) -> bool:
  """tf.data state of `iterator` under `prefix`; False if not checkpointable."""
  try:
    tf.train.Checkpoint(iterator=iterator).write(prefix)
    return True
  except (tf.errors.FailedPreconditionError, tf.errors.UnimplementedError,
          ValueError, TypeError) as e:  # A stateful op: not serialisable.
    logging.log_first_n(
        logging.WARNING, 'The input pipeline cannot save its tf.data state '
        '(%s); checkpoints record its batch count instead, and a resume '
        'replays that many batches.', 1,
        str(e).splitlines()[0][:200])
    return False


class DataPositionHandler(ocp.CheckpointHandler):
  """Saves / restores the iterators of this process (every process calls)."""

  def __init__(self):
    self._step = None

  def save(self, directory: epath.Path, args: 'DataPositionSave'):
    folder = process_dir(directory)
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    self._step = args.step
    record = {'step': args.step, 'iterators': {}}
    for name, (iterator, batches) in sorted(args.iterators.items()):
      saved = _write_iterator(iterator, os.path.join(folder, name, 'state'))
      if not saved:
        shutil.rmtree(os.path.join(folder, name), ignore_errors=True)
      record['iterators'][name] = {'batches': int(batches), 'tf_data': saved}
    kill_points.maybe_kill('in_save', args.step)
    record['sha256'] = _hashes(folder)
    outputs.save_text(os.path.join(folder, POSITION_FILE), json.dumps(record))

  def finalize(self, directory: epath.Path) -> None:
    del directory
    if self._step is not None:
      kill_points.maybe_kill('before_commit', self._step)

  def restore(self,
              directory: epath.Path,
              args: Optional['DataPositionRestore'] = None) -> Optional[dict]:
    """Moves the iterators with a saved state; returns the record.

    Returns:
      {name: {'batches': int, 'tf_data': bool (restored in place)}}, or None
      when this process has no position in the checkpoint.
    """
    folder = process_dir(directory)
    path = os.path.join(folder, POSITION_FILE)
    if not os.path.exists(path):
      return None
    try:
      with open(path) as f:
        record = json.load(f)
      ok = _hashes(folder) == record['sha256']
    except (OSError, ValueError, KeyError):
      ok = False
    if not ok:
      raise errors.CheckpointError(
          f'input-pipeline position {folder} does not match the checksums '
          'written with it (corrupt); set config.training.resume_step to an '
          'older checkpoint step to resume from it.')
    iterators = args.iterators if args is not None else {}
    for name, entry in record['iterators'].items():
      if entry['tf_data'] and name in iterators:
        tf.train.Checkpoint(iterator=iterators[name]).read(
            os.path.join(folder, name, 'state')).assert_consumed()
    return record['iterators']

  def metadata(self, directory: epath.Path) -> Any:
    del directory
    return None


@ocp.args.register_with_handler(DataPositionHandler, for_save=True)
@dataclasses.dataclass
class DataPositionSave(ocp.args.CheckpointArgs):
  """{name: (tf.data iterator, batches it has yielded)} of this process."""
  iterators: dict
  step: int


@ocp.args.register_with_handler(DataPositionHandler, for_restore=True)
@dataclasses.dataclass
class DataPositionRestore(ocp.args.CheckpointArgs):
  """{name: tf.data iterator} to move to the saved position."""
  iterators: dict


# ---------------------------------------------------------------- resume
# Resuming a training run: train state, input position, metrics, exactness.


SET_ASIDE_DIR = 'checkpoints_set_aside'


def _set_aside_later(manager, workdir: str, step: int, is_main: bool):
  """Moves checkpoints after `step` to WORKDIR/checkpoints_set_aside/."""
  steps = sorted(manager.all_steps())
  if step not in steps:
    raise errors.ConfigError(
        f'config.training.resume_step={step} is not a checkpoint of '
        f'{manager.directory} (have {steps}).')
  later = [s for s in steps if s > step]
  if later and is_main:
    aside = os.path.join(workdir, SET_ASIDE_DIR)
    os.makedirs(aside, exist_ok=True)
    for s in later:
      target = os.path.join(aside, str(s))
      while os.path.exists(target):
        target += '_'
      os.replace(step_dir(manager, s), target)
    logging.warning(
        'config.training.resume_step=%d: moved the later '
        'checkpoints %s to %s.', step, later, aside)
  multihost_utils.sync_global_devices('ncsn_jax_set_aside')
  manager.reload()


def truncate_metrics(workdir: str, step: int) -> None:
  """Drops `metrics.jsonl` records after `step` (written after its save)."""
  path = os.path.join(workdir, outputs.METRICS_FILE)
  if not os.path.exists(path):
    return
  with open(path) as f:
    lines = [l for l in f if l.strip()]
  kept = [l for l in lines if json.loads(l).get('step', 0) <= step]
  if len(kept) != len(lines):
    outputs.save_text(path, ''.join(kept))


def resume(manager, workdir: str, config, state, datasets: dict, iters: dict,
           is_main: bool) -> tuple[Any, int]:
  """Restores the run's checkpoint into `state` and `iters` (in place).

  Returns:
    (state, inexact_resumes: this run's resumes without an input position,
    this one included).
  """
  want = config.training.resume_step
  if want:
    _set_aside_later(manager, workdir, want, is_main)
  state, start = restore(manager, state, want, config)
  meta = read_meta(manager, start) or {}
  inexact = int(meta.get('inexact_resumes', 0))
  record = restore_data(manager, workdir, start, iters)
  if not record or 'train' not in record:
    inexact += 1
    logging.warning(
        'Checkpoint %s has no input-pipeline position (imported or older '
        'checkpoint): continuing from a freshly shuffled pipeline, so this '
        'run will not match an uninterrupted one.',
        step_dir(manager, start))
  else:
    for name, entry in record.items():
      if not entry['tf_data'] and name in datasets:
        iters[name] = iter(datasets[name].skip(entry['batches']))
  if is_main:
    truncate_metrics(workdir, start)
  logging.info('Resumed from checkpoint step %d.', start)
  return state, inexact


# ---------------------------------------------------------- workdir_lock
# One training run per workdir: an exclusive `fcntl.flock` on WORKDIR/.lock.


def _path(workdir: str) -> str:
  i = jax.process_index()
  return os.path.join(workdir, '.lock' if i == 0 else f'.lock.{i}')


@contextlib.contextmanager
def hold(workdir: str):
  """Holds the workdir's lock; ConfigError if another process holds it."""
  path = _path(workdir)
  os.makedirs(workdir, exist_ok=True)
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      owner = os.pread(fd, 32, 0).decode(errors='replace').strip() or '?'
      raise errors.ConfigError(
          f'--workdir={workdir} is in use by another training run (pid '
          f'{owner}); wait for it to finish, stop it, or choose another '
          '--workdir.') from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    yield
  finally:
    os.close(fd)


# ------------------------------------------------------------ preemption
# SIGTERM / SIGINT as a request to checkpoint and stop cleanly.


class PreemptionWatcher:
  """Turns SIGTERM / SIGINT into a request to checkpoint and stop cleanly.

  A context manager around the training loop; the previous handlers come
  back on exit. With several processes, orbax's preemption sync point
  (backed by `jax.distributed`) makes all of them stop at the same step.
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
    """Whether to checkpoint and stop after `step` (orbax `manager`)."""
    if jax.process_count() > 1:
      return self.requested or manager.reached_preemption(step)
    return self.requested
