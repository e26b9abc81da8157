"""Checkpoints: saving, restoring and resuming a run, in one place.

Each checkpoint `WORKDIR/checkpoints/<step>/` is one orbax composite of three
items, committed together (orbax writes the step to a temporary folder and
renames it only when every item is complete, so a save killed at any moment
leaves the whole checkpoint or none of it):

* `state`: the train state (parameters, EMA, Adam state, step);
* `data`: every process's input-pipeline position, `data/process_<i>/`: for
  each iterator (`train`, `test`) its tf.data state (shuffle buffer and
  prefetched batches included) when the pipeline can save it, and
  `position.json` with the batches it has yielded and the sha256 of every
  file beside it. A pipeline tf.data cannot save (a Python generator) is
  rebuilt on resume and advanced by that count, which is exact for a seeded
  pipeline;
* `meta` (JSON): the config fields that fix the parameter shapes and the
  meaning of the noise levels, the noise levels, the batch sizes the
  position belongs to, a sha256 of every array, and `inexact_resumes`: how
  many resumes of the run so far had no input position to continue from.

The public surface: `lock` (one training run per workdir), `create_manager`,
`save`, `restore`, `resume` (what a restarted run continues from),
`load_state` / `load_params` (sample, eval, export) and `steps`.
Every failure a user can fix is an `errors.CheckpointError` of one line
naming the step folder and the fix.
"""

import contextlib
import dataclasses
import errno
import fcntl
import hashlib
import json
import os
import shutil
from typing import Any, Optional

from absl import logging
from etils import epath
import jax
from jax.experimental import multihost_utils
import numpy as np
import orbax.checkpoint as ocp

from ncsn_jax import console
from ncsn_jax import errors
from ncsn_jax import models
from ncsn_jax import outputs
from ncsn_jax import train_state

CHECKPOINT_DIR = 'checkpoints'
SET_ASIDE_DIR = 'checkpoints_set_aside'
STATE, DATA, META = 'state', 'data', 'meta'
POSITION_FILE = 'position.json'
FORMAT = 3
# Config fields that fix the parameter shapes or the noise levels' meaning.
MODEL_FIELDS = ('model.name', 'model.ngf', 'model.num_classes',
                'model.sigma_begin', 'model.sigma_end', 'model.sigma_dist',
                'data.channels', 'data.image_size', 'data.logit_transform',
                'data.rescaled')
# Config fields the saved input position belongs to.
POSITION_FIELDS = ('training.batch_size', 'eval.batch_size')

# ---------------------------------------------------------- the workdir lock


@contextlib.contextmanager
def lock(workdir: str):
  """Holds the workdir's lock; ConfigError if another process holds it.

  An exclusive `fcntl.flock` on `WORKDIR/.lock` (process i > 0 of a
  multi-process run: `.lock.<i>`). The lock belongs to the open file, so the
  kernel drops it when the process dies, however it dies: a stale `.lock`
  file never blocks a new run.
  """
  i = jax.process_index()
  path = os.path.join(workdir, '.lock' if i == 0 else f'.lock.{i}')
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


# ---------------------------------------------------------- manager and save


def create_manager(workdir: str, keep: int = 0,
                   create: bool = True) -> ocp.CheckpointManager:
  """Orbax manager of `WORKDIR/checkpoints`; `keep=0` keeps every step."""
  directory = os.path.abspath(os.path.join(workdir, CHECKPOINT_DIR))
  options = ocp.CheckpointManagerOptions(
      max_to_keep=keep or None, create=create,
      enable_async_checkpointing=False)
  return ocp.CheckpointManager(directory, options=options)


def step_dir(manager: ocp.CheckpointManager, step: int) -> str:
  return os.path.join(str(manager.directory), str(step))


def steps(workdir: str) -> list[int]:
  """The steps of `WORKDIR/checkpoints`, ascending ([] when none)."""
  if not os.path.isdir(os.path.join(workdir, CHECKPOINT_DIR)):
    return []
  manager = create_manager(workdir, create=False)
  try:
    return sorted(manager.all_steps())
  finally:
    manager.close()


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
    inexact_resumes: the run's resumes so far that had no input position.
  """
  host = jax.device_get(state)
  items = {STATE: ocp.args.StandardSave(host),
           META: ocp.args.JsonSave(_meta(config, host, step,
                                         inexact_resumes))}
  if iterators is not None:
    items[DATA] = DataPositionSave(iterators, int(step))
  try:
    with console.held_stderr():
      manager.save(step, args=ocp.args.Composite(**items), force=True)
      manager.wait_until_finished()
  except Exception as e:  # pylint: disable=broad-except
    reason = _storage_refusal(e)
    if reason is None:
      raise
    raise errors.CheckpointError(
        f'cannot write checkpoint {step} to {manager.directory} ({reason}); '
        'free disk space or fix its permissions, then rerun to resume from '
        'the last checkpoint.') from e


_REFUSALS = {errno.ENOSPC: 'no space left on device',
             errno.EACCES: 'permission denied',
             errno.EPERM: 'operation not permitted',
             errno.EROFS: 'read-only file system',
             errno.EDQUOT: 'disk quota exceeded'}


def _storage_refusal(e: BaseException) -> Optional[str]:
  """Why a save failed if the storage refused it; None for other errors.

  Python's own writes raise `OSError` with an errno. The arrays are written
  by TensorStore, which (orbax-checkpoint 0.12, tensorstore 0.1) reports a
  refused write only as a `ValueError` whose text holds
  `[os_error_code='28']` or the errno's message, and the input position by
  TensorFlow, whose `tf.errors.OpError`s (TensorFlow 2.21) carry only the
  message: for those two, only the text can tell.
  """
  while e is not None:
    if isinstance(e, OSError) and e.errno in _REFUSALS:
      return _REFUSALS[e.errno]
    if isinstance(e, ValueError) or type(e).__module__.startswith(
        'tensorflow'):
      text = str(e)
      for code, reason in _REFUSALS.items():
        if f"os_error_code='{code}'" in text or os.strerror(code) in text:
          return reason
    e = e.__cause__ or e.__context__
  return None


# ------------------------------------------------------------------- restore


def resolve_step(manager: ocp.CheckpointManager, step: int = 0) -> int:
  """`step`, or the latest step when 0; raises CheckpointError if absent."""
  all_steps = manager.all_steps()
  where = manager.directory
  if not all_steps:
    raise errors.CheckpointError(
        f'no checkpoint in {where}; train first (--mode=train) or point '
        '--workdir at a run that has checkpoints.')
  if step == 0:
    return max(all_steps)
  if step not in all_steps:
    raise errors.CheckpointError(
        f'checkpoint step {step} not found in {where} (have '
        f'{sorted(all_steps)}); set the ckpt_id config field to one of them.')
  return step


def _items(path: str) -> set[str]:
  try:
    return {d for d in os.listdir(path)
            if os.path.isdir(os.path.join(path, d))}
  except OSError:
    return set()


def _unreadable(manager, step: int, e: Exception) -> errors.CheckpointError:
  others = sorted(s for s in manager.all_steps() if s != step)
  first = str(e).splitlines()[0][:160] if str(e) else ''
  return errors.CheckpointError(
      f'checkpoint {step_dir(manager, step)} is unreadable '
      f'({type(e).__name__}: {first}); pick another step (have {others}) '
      'with config.sampling.ckpt_id (sample/eval) or '
      'config.training.resume_step (train).')


def _restore_item(manager, step: int, name: str, args):
  """One item of checkpoint `step`; damaged files give one line."""
  try:
    return manager.restore(step, args=ocp.args.Composite(**{name: args}))[name]
  except errors.CheckpointError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    # orbax and TensorStore raise many types for damaged or missing files.
    raise _unreadable(manager, step, e) from e


def read_meta(manager: ocp.CheckpointManager, step: int) -> dict:
  """The `meta` item of checkpoint `step` ({} when it has none)."""
  if META not in _items(step_dir(manager, step)):
    return {}
  return _restore_item(manager, step, META, ocp.args.JsonRestore())


def _key(path) -> tuple:
  """A key path as plain names, whatever the container types."""
  return tuple(str(getattr(k, 'name', getattr(k, 'key', getattr(k, 'idx', k))))
               for k in path)


def _check_shapes(manager, step: int, target) -> None:
  """Compares the saved arrays' shapes with `target`'s before restoring."""
  path = step_dir(manager, step)
  try:
    saved = ocp.StandardCheckpointHandler().metadata(
        epath.Path(path) / STATE)
  except Exception as e:  # pylint: disable=broad-except
    raise _unreadable(manager, step, e) from e
  saved = {_key(k): tuple(v.shape) for k, v in
           jax.tree_util.tree_flatten_with_path(saved)[0]}
  for k, leaf in jax.tree_util.tree_flatten_with_path(target)[0]:
    have = saved.get(_key(k))
    if have != tuple(leaf.shape):
      what = 'no array' if have is None else f'shape {have}'
      raise errors.CheckpointError(
          f'checkpoint {path} holds {what} at {jax.tree_util.keystr(k)}, '
          f'the config builds {tuple(leaf.shape)}; run with the config it '
          'was trained with.')


def restore(manager: ocp.CheckpointManager, target: Any, step: int = 0,
            config=None):
  """Restores checkpoint `step` (0 = latest) into the structure of `target`.

  With `config`, the checkpoint's recorded model fields must match it; the
  arrays' shapes are compared before, and their checksums after, restoring.

  Returns:
    (restored state as host arrays, the step restored).
  """
  step = resolve_step(manager, step)
  path = step_dir(manager, step)
  if STATE not in _items(path):
    raise errors.CheckpointError(
        f'checkpoint folder {path} is empty or half-written (no train state '
        f'in it); move it out of {manager.directory} to use the previous '
        'checkpoint.')
  meta = read_meta(manager, step)
  if config is not None:
    _check_config(meta, config, path)
  _check_shapes(manager, step, target)
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
  state = _restore_item(manager, step, STATE,
                        ocp.args.StandardRestore(abstract))
  _verify(meta, state, path)
  return state, step


def load_state(config, workdir: str, step: int = 0):
  """(train state as host arrays, step) of checkpoint `step` (0 = latest).

  Reads `workdir` only: sample, eval and export need no write access.
  """
  directory = os.path.join(workdir, CHECKPOINT_DIR)
  if not os.path.isdir(directory):
    raise errors.CheckpointError(
        f'no checkpoint folder {directory}; train first (--mode=train) or '
        'point --workdir at a run that has checkpoints.')
  manager = create_manager(workdir, create=False)
  try:
    return restore(manager, train_state.abstract_train_state(config), step,
                   config)
  finally:
    manager.close()


def load_params(config, workdir: str, step: int = 0, ema: bool = True):
  """Parameters of checkpoint `step` (0 = latest) in `workdir`.

  Returns:
    (model, params: the EMA parameters when `ema` and config.model.ema, the
    step restored).
  """
  state, step = load_state(config, workdir, step)
  params = state.ema_params if ema and config.model.ema else state.params
  return models.create_model(config), params, step


# -------------------------------------------------------------------- resume


def resume(manager, workdir: str, config, state, datasets: dict, iters: dict,
           is_main: bool) -> tuple[Any, int]:
  """Restores the run's checkpoint into `state` and `iters` (in place).

  The latest checkpoint, or `config.training.resume_step` after moving the
  later ones to `WORKDIR/checkpoints_set_aside/`. The input iterators move
  to the position saved with it and `metrics.jsonl` records written after
  it are dropped. Without a saved position (an imported checkpoint) the run
  continues from a fresh shuffle and says so in one warning line.

  Returns:
    (state, inexact_resumes: the run's resumes without an input position,
    this one included).
  """
  want = config.training.resume_step
  if want:
    _set_aside_later(manager, workdir, want, is_main)
  state, start = restore(manager, state, want, config)
  path = step_dir(manager, start)
  meta = read_meta(manager, start)
  inexact = int(meta.get('inexact_resumes', 0))
  record = None
  if DATA in _items(path):
    _check_position_fields(meta, config, path)
    record = _restore_item(manager, start, DATA, DataPositionRestore(iters))
  if not record or 'train' not in record:
    inexact += 1
    logging.warning(
        'Checkpoint %s has no input-pipeline position (an imported '
        'checkpoint): continuing from a freshly shuffled pipeline, so this '
        'run will not match an uninterrupted one.', path)
  else:
    for name, entry in record.items():
      if not entry['tf_data'] and name in datasets:
        iters[name] = iter(datasets[name].skip(entry['batches']))
  if is_main:
    outputs.truncate_metrics(workdir, start)
  logging.info('Resumed from checkpoint step %d.', start)
  return state, inexact


def _set_aside_later(manager, workdir: str, step: int, is_main: bool):
  """Moves checkpoints after `step` to WORKDIR/checkpoints_set_aside/."""
  all_steps = sorted(manager.all_steps())
  if step not in all_steps:
    raise errors.ConfigError(
        f'config.training.resume_step={step} is not a checkpoint of '
        f'{manager.directory} (have {all_steps}).')
  later = [s for s in all_steps if s > step]
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


# ---------------------------------------------------------------------- meta


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


def _meta(config, state, step: int, inexact_resumes: int) -> dict:
  """The meta record of checkpoint `step` of host `state`."""
  meta = {'format': FORMAT, 'step': int(step),
          'inexact_resumes': int(inexact_resumes),
          'digests': leaf_digests(state)}
  if config is not None:
    meta['config'] = {f: _get(config, f)
                      for f in MODEL_FIELDS + POSITION_FIELDS}
    meta['sigmas'] = [float(s) for s in models.get_sigmas(config)]
  return meta


def _same(a, b) -> bool:
  if isinstance(a, float) or isinstance(b, float):
    try:
      return float(a) == float(b)
    except (TypeError, ValueError):
      return False
  return a == b


def _differences(meta: dict, config, fields) -> list[str]:
  saved = meta.get('config') or {}
  return [f'config.{f}={_get(config, f)!r} vs {saved[f]!r}' for f in fields
          if f in saved and not _same(_get(config, f), saved[f])]


def _check_config(meta: dict, config, path: str) -> None:
  """Raises CheckpointError naming every model field config and meta differ."""
  diffs = _differences(meta, config, MODEL_FIELDS)
  if not diffs and 'sigmas' in meta:
    ours = models.get_sigmas(config)
    if len(ours) != len(meta['sigmas']) or not np.allclose(
        ours, meta['sigmas'], rtol=1e-6, atol=0):
      diffs.append('the noise levels (sigmas) differ')
  if diffs:
    raise errors.CheckpointError(
        f'the config does not match checkpoint {path} (config vs '
        f'checkpoint): {"; ".join(diffs)}; run with the config it was '
        'trained with.')


def _check_position_fields(meta: dict, config, path: str) -> None:
  """The batch sizes must be those the saved input position belongs to."""
  diffs = _differences(meta, config, POSITION_FIELDS)
  if diffs:
    raise errors.CheckpointError(
        f'cannot resume from {path} with other batch sizes (config vs '
        f'checkpoint): {"; ".join(diffs)}; its input-pipeline position '
        'holds batches of the saved size. Resume with the saved values, or '
        'train from its weights in a new --workdir (--mode=export, then '
        '--mode=import).')


def _verify(meta: dict, restored: Any, path: str) -> None:
  """Raises CheckpointError if an array differs from its checksum."""
  if 'digests' not in meta:
    return
  now = leaf_digests(restored)
  bad = [k for k, v in meta['digests'].items() if now.get(k) != v]
  if bad:
    raise errors.CheckpointError(
        f'checkpoint {path} is corrupt: {len(bad)} array(s) (first '
        f'{bad[0]}) do not match the checksums written with them; pick an '
        'older step with config.sampling.ckpt_id (sample/eval) or '
        'config.training.resume_step (train).')


# ------------------------------------------------------ input-pipeline item


def _process_dir(directory) -> str:
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
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
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

  def save(self, directory: epath.Path, args: 'DataPositionSave'):
    folder = _process_dir(directory)
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    record = {'step': args.step, 'iterators': {}}
    for name, (iterator, batches) in sorted(args.iterators.items()):
      saved = _write_iterator(iterator, os.path.join(folder, name, 'state'))
      if not saved:
        shutil.rmtree(os.path.join(folder, name), ignore_errors=True)
      record['iterators'][name] = {'batches': int(batches), 'tf_data': saved}
    record['sha256'] = _hashes(folder)
    outputs.save_text(os.path.join(folder, POSITION_FILE), json.dumps(record))

  def restore(self,
              directory: epath.Path,
              args: Optional['DataPositionRestore'] = None) -> Optional[dict]:
    """Moves the iterators with a saved state; returns the record.

    Returns:
      {name: {'batches': int, 'tf_data': bool (restored in place)}}, or None
      when this process has no position in the checkpoint.
    """
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    folder = _process_dir(directory)
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
