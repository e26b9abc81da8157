"""The input pipeline's position as an item of the orbax checkpoint.

Each process writes `<step>/data/process_<i>/`: for every named iterator
(`train`, `test`) the tf.data iterator state (`tf.train.Checkpoint`, shuffle
buffer and prefetched batches included) when the pipeline supports it, and
`position.json` with the number of batches each iterator has yielded and the
sha256 of every file beside it. The item belongs to the same composite
checkpoint as the train state, so orbax commits (renames into place), keeps
and deletes both together.

On restore an iterator with a saved tf.data state is moved to it; one without
(a pipeline tf.data cannot checkpoint, such as a Python generator) is rebuilt
by the caller and advanced by the recorded batch count, which is exact for a
seeded pipeline.
"""

import dataclasses
import json
import os
import shutil
from typing import Any, Optional

from absl import logging
from etils import epath
import jax
import orbax.checkpoint as ocp
import tensorflow as tf

from ncsn_jax import errors
from ncsn_jax import files
from ncsn_jax.training import kill_points

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
        out[rel] = files.sha256_of(path)
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
    files.save_text(os.path.join(folder, POSITION_FILE), json.dumps(record))

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
