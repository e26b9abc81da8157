"""Runs run.py and SIGKILLs it at a named moment of its work.

  python tests/run_killed.py <point>:<n> [run.py flags...]

A signal sent from outside hits these moments only by chance; this wrapper
patches the library so that the process kills itself there. The points of
the save of checkpoint n, in save order:

* `in_save`: the input-pipeline position is being written (its iterators
  are, its `position.json` is not); nothing of the step is committed.
* `before_commit`: every item is written, the step folder is not yet
  renamed into place.
* `after_commit`: the checkpoint is committed; the sample grid, loss curve
  and anything else the snapshot writes are not.

and `part`: right after the n-th part of a long job (an eval's sample
batch, a sample-mode call, fid_stats features) is written.

The repository root must be importable (PYTHONPATH; tests/conftest.py sets
it for the processes the tests start).
"""

import os
import runpy
import signal
import sys

from ncsn_jax import checkpoints

from ncsn_jax import outputs

POINTS = ('in_save', 'before_commit', 'after_commit', 'part')


def _kill(*unused):
  os.kill(os.getpid(), signal.SIGKILL)


def patch(point: str, step: int) -> None:
  """Makes this process SIGKILL itself at `point` of the save of `step`
  (`part`: after writing `step` parts)."""
  handler = checkpoints.DataPositionHandler
  save_item, save = handler.save, checkpoints.save

  def save_position(self, directory, args):
    if args.step == step and point == 'in_save':
      # Hashing the written files is the last thing before position.json.
      checkpoints._hashes = _kill  # pylint: disable=protected-access
    save_item(self, directory, args)
    self.kill_on_finalize = args.step == step and point == 'before_commit'

  def finalize(self, directory):
    del directory
    if getattr(self, 'kill_on_finalize', False):
      _kill()

  def save_checkpoint(manager, s, *args, **kwargs):
    save(manager, s, *args, **kwargs)
    if s == step and point == 'after_commit':
      _kill()

  def save_part(*args, **kwargs):
    save_shard(*args, **kwargs)
    written.append(1)
    if point == 'part' and len(written) == step:
      _kill()

  handler.save, handler.finalize = save_position, finalize
  checkpoints.save = save_checkpoint
  save_shard, written = outputs.save_shard, []
  outputs.save_shard = save_part


if __name__ == '__main__':
  point, at = sys.argv[1].split(':')
  assert point in POINTS, point
  patch(point, int(at))
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  sys.argv = [os.path.join(root, 'run.py')] + sys.argv[2:]
  runpy.run_path(sys.argv[0], run_name='__main__')
