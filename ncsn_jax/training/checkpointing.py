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
from ncsn_jax.training import checkpoint_meta
from ncsn_jax.training import data_position
from ncsn_jax.training import kill_points
from ncsn_jax.training import train_state

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
           META: ocp.args.JsonSave(checkpoint_meta.build(
               config, host, step, inexact_resumes))}
  if iterators is not None:
    items[DATA] = data_position.DataPositionSave(iterators, int(step))
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
  except Exception as e:  # orbax raises many types for damaged files.
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
    checkpoint_meta.check_config(meta, config, path)
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
  try:
    state = _restore_state(manager, step, name, abstract)
  except Exception as e:  # orbax raises many types for damaged files.
    if 'shape' in str(e).lower():
      raise errors.CheckpointError(
          f'checkpoint {path} does not fit the config\'s model '
          f'({str(e).splitlines()[0][:160]}); run with the config it was '
          'trained with.') from e
    raise _unreadable(manager, step, e) from e
  checkpoint_meta.check_shapes(state, target, path)
  checkpoint_meta.verify(meta, state, path)
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
          **{DATA: data_position.DataPositionRestore(iterators)}))[DATA]
    except errors.CheckpointError:
      raise
    except Exception as e:  # orbax raises many types for damaged files.
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
