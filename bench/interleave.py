"""Interleaved timing of two implementations on one (possibly busy) machine.

A side is a timer `timer(what, n) -> seconds` that runs `n` steps of the
task `what` ('train', 'forward', ...) and returns the elapsed wall time. A
round times every side in turn, each after a short idle pause, so all sides
see the same machine load; the result per side is the list of seconds per
step over the rounds, summarised as median, minimum, maximum and spread, and
the sides are compared by the ratio of their medians.

`Worker` makes a timer of a long-lived subprocess that reads "WHAT N" lines
on stdin and answers each with the elapsed seconds on stdout, so its
warm-up (and any compilation) is paid once for all rounds.
"""

import json
import statistics
import subprocess
import time
from typing import Callable, Dict, List, Optional, Sequence

Timer = Callable[[str, int], float]


class Worker:
  """A timer run in a subprocess: "WHAT N" in, seconds out, one per line.

  The subprocess first prints one JSON line describing itself (versions,
  device), available as `info`; it exits when its stdin closes.
  """

  def __init__(self, argv: Sequence[str], env: Optional[dict] = None):
    self._proc = subprocess.Popen(list(argv),
                                  stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE,
                                  text=True,
                                  env=env)
    self.info = json.loads(self._readline())

  def _readline(self) -> str:
    line = self._proc.stdout.readline()
    if not line:
      raise RuntimeError(f'the worker {self._proc.args[:2]} exited with '
                         f'{self._proc.wait()} (its stderr is above).')
    return line

  def __call__(self, what: str, n: int) -> float:
    self._proc.stdin.write(f'{what} {n}\n')
    self._proc.stdin.flush()
    return float(self._readline())

  def close(self) -> None:
    if self._proc.poll() is None:
      self._proc.stdin.close()
      self._proc.wait()


def serve(tasks: Dict[str, Callable[[], None]],
          info: dict,
          sync: Callable[[], None] = lambda: None,
          stdin=None,
          stdout=None) -> None:
  """The subprocess side of `Worker`: runs `tasks[what]()` n times a line.

  `sync()` waits for queued device work (e.g. `torch.cuda.synchronize`) and
  runs before the clock starts and before it stops.
  """
  import sys  # pylint: disable=g-import-not-at-top
  stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
  print(json.dumps(info), file=stdout, flush=True)
  for line in stdin:
    what, n = line.split()
    sync()
    start = time.perf_counter()
    for _ in range(int(n)):
      tasks[what]()
    sync()
    print(time.perf_counter() - start, file=stdout, flush=True)


def interleave(sides: Dict[str, Timer],
               what: str,
               steps: int,
               rounds: int,
               pause: float = 1.0,
               warmup: int = 1) -> Dict[str, List[float]]:
  """Seconds per step of each side, `rounds` times, the sides alternating.

  Each side first runs `warmup` untimed steps. The pause before every timed
  run lets the other side's idle worker threads (OpenMP and Eigen pools spin
  for a while after their work) go quiet.
  """
  for timer in sides.values():
    if warmup:
      timer(what, warmup)
  times = {name: [] for name in sides}
  for _ in range(rounds):
    for name, timer in sides.items():
      time.sleep(pause)
      times[name].append(timer(what, steps) / steps)
  return times


def summary(seconds: Sequence[float], items: int = 1) -> dict:
  """Median / min / max seconds per step, spread, and items/s at the median.

  spread = (max - min) / median; `items` is the work of one step (a batch).
  """
  median = statistics.median(seconds)
  return {
      'seconds': list(seconds),
      'median_s': median,
      'min_s': min(seconds),
      'max_s': max(seconds),
      'spread': (max(seconds) - min(seconds)) / median,
      'median_per_s': items / median,
      'best_per_s': items / min(seconds)
  }


def compare(times: Dict[str, List[float]], items: int = 1) -> dict:
  """Summaries of each side and, for two sides, the ratio of medians.

  `ratio` > 1 means the first side is faster (its steps take less time).
  """
  out = {name: summary(t, items) for name, t in times.items()}
  if len(times) == 2:
    a, b = (out[name] for name in times)
    out['ratio'] = b['median_s'] / a['median_s']
  return out
