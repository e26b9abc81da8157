"""Test hook: SIGKILL this process at a named moment of a checkpoint save.

With `NCSN_JAX_TEST_KILL_AT=<point>:<step>` in the environment, the process
kills itself with SIGKILL when it reaches `<point>` while saving checkpoint
`<step>`. The points are, in save order:

* `in_save`: the input-pipeline position is being written, the train state
  not yet (nothing of the step is committed).
* `before_commit`: every item is written, the step folder is not yet renamed
  into place.
* `after_commit`: the checkpoint is committed; the sample grid, loss curve and
  anything else the snapshot writes are not.

Only the resume tests set this variable; it exists so that they can kill a
run at exactly these moments, which a signal sent from outside hits only by
chance.
"""

import os
import signal

ENV = 'NCSN_JAX_TEST_KILL_AT'
POINTS = ('in_save', 'before_commit', 'after_commit')


def maybe_kill(point: str, step: int) -> None:
  """SIGKILLs this process if the environment asks for `point` at `step`."""
  if os.environ.get(ENV) == f'{point}:{step}':
    os.kill(os.getpid(), signal.SIGKILL)
