"""SIGTERM / SIGINT as a request to checkpoint and stop cleanly."""

import signal
import threading

from absl import logging
import jax


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
