"""One training run per workdir: an exclusive `fcntl.flock` on WORKDIR/.lock.

The lock belongs to the open file, so the kernel drops it when the process
dies, however it dies; a stale `.lock` file left behind never blocks a new
run. Process i of a multi-process run locks `.lock` (i = 0) or `.lock.<i>`.
"""

import contextlib
import fcntl
import os

import jax

from ncsn_jax import errors


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
