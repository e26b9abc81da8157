"""What a run shows on the console, and what it hides.

By default a run prints the config name, the devices, progress lines with
rate and ETA (`Progress`), where the outputs went and a summary.
TensorFlow's and XLA's C++ start-up notices, XLA's autotuning warnings and
the INFO logs of JAX, TensorFlow, orbax, clu and our own modules stay hidden
unless `--verbosity=1` (or `-v`) is given; the metrics are in TensorBoard and
`metrics.jsonl`. The environment variables must be set before TensorFlow or
JAX is imported, so this module imports neither at the top.

This is the one module that touches process-wide state for the console:
environment variables, absl's log handler and verbosity, `sys.stderr`,
`threading.excepthook` and the SIGTERM / SIGINT handlers (each function or
class says which).

  with console.Progress(50_000, 'sampling', unit='samples') as bar:
    for batch in batches:
      ...
      bar.update(len(batch))
"""

import contextlib
import io
import os
import re
import signal
import sys
import threading
import time
import traceback
from typing import Callable
from typing import Iterable
from typing import Iterator
from typing import Optional
from typing import Sequence
from typing import TextIO
from typing import TypeVar

# Start-up settings of the C++ runtimes, applied unless already set.
# oneDNN's custom ops are off for TensorFlow, which here only feeds data:
# that also drops its start-up notice. TF_CPP_MIN_LOG_LEVEL=2 keeps TF's
# and XLA's C++ logs (XLA's autotuning "Delay kernel timed out" warnings
# among them) to errors.
_ALWAYS = {'TF_ENABLE_ONEDNN_OPTS': '0'}
_QUIET = {'TF_CPP_MIN_LOG_LEVEL': '2'}


def normalize_argv(argv: Sequence[str]) -> list[str]:
  """`-v` alone means `--verbosity=1` (absl's flag needs a value)."""
  return ['--verbosity=1' if a == '-v' else a for a in argv]


def verbosity(argv: Sequence[str]) -> int:
  """The value of `--verbosity` / `-v` in `argv` (0 when absent)."""
  value = '0'
  for i, a in enumerate(argv):
    for name in ('--verbosity', '-verbosity', '-v'):
      if a == name and i + 1 < len(argv):
        value = argv[i + 1]
      elif a.startswith(name + '='):
        value = a.split('=', 1)[1]
  try:
    return int(value)
  except ValueError:
    return 0  # absl's flag parser reports the bad value.


def set_environment(verbose: bool, environ=os.environ) -> None:
  """Sets the C++ runtimes' log variables; call before TF/JAX imports.

  Global state: `environ` (default `os.environ`), only variables not set.
  """
  for k, v in dict(_ALWAYS, **({} if verbose else _QUIET)).items():
    environ.setdefault(k, v)


class _QuietLibraries:
  """A log filter: drops the INFO chatter of checkpointing libraries.

  Also the per-thread copies of a failed checkpoint write (orbax's writer
  threads, asyncio's unretrieved tasks): the failure itself is reported in
  one line. Records are told apart by the file that logged them, the only
  mark these libraries leave (orbax-checkpoint 0.12).
  """

  def filter(self, record) -> bool:
    if '/asyncio/' in record.pathname:
      return 'exception was never retrieved' not in str(record.msg)
    if '/orbax/' in record.pathname:
      return record.levelno >= 30 and 'raised an exception' not in str(
          record.msg)  # 30 = Python logging.WARNING
    return True


def quiet_logging(verbose: bool) -> None:
  """absl (and Python) logging at WARNING unless verbose; after flags.

  Global state: absl's verbosity, and a filter on absl's Python handler.
  """
  from absl import logging  # pylint: disable=g-import-not-at-top
  logging.get_absl_handler().python_handler.addFilter(_QuietLibraries())
  if not verbose:
    logging.set_verbosity(logging.WARNING)


@contextlib.contextmanager
def held_stderr():
  """Holds what other threads print to stderr inside the block.

  A checkpoint write that the storage refuses makes every orbax writer
  thread print its own traceback; the caller reports the failure in one line
  instead. When the block succeeds, anything held is printed as usual.

  Global state: `sys.stderr` and `threading.excepthook`, restored on exit.
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


class StopRequest:
  """SIGTERM / SIGINT as a request to stop after the current unit of work.

  A context manager around long work (training steps, sample batches,
  feature parts): inside it the two signals set `requested` instead of
  ending the process, so the work in hand is saved first; the previous
  handlers come back on exit.

  Global state: the process's SIGTERM and SIGINT handlers (set from the main
  thread only).
  """

  def __init__(self):
    self.requested = False
    self._previous = {}

  def __enter__(self) -> 'StopRequest':
    if threading.current_thread() is threading.main_thread():
      for sig in (signal.SIGTERM, signal.SIGINT):
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)

  def _handle(self, signum, frame) -> None:
    del frame
    from absl import logging  # pylint: disable=g-import-not-at-top
    logging.warning('Signal %d: saving the work done so far, then stopping.',
                    signum)
    self.requested = True

  def __call__(self) -> bool:
    """Whether a stop was requested (a `stop` callable for long loops)."""
    return self.requested


def exit_now(status: int) -> None:
  """Exits at once, skipping interpreter teardown (tens of seconds of GC).

  For after a SIGTERM / SIGINT stop (the checkpoint is committed and the
  writers are flushed) or an input error: nothing is left to clean up.
  Flushes absl's log, stdout and stderr first.
  """
  from absl import logging  # pylint: disable=g-import-not-at-top
  logging.flush()
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(status)  # pylint: disable=protected-access


def flag_error(argv: Sequence[str], error: Exception, flag_values) -> str:
  """The one-line message of a command line absl cannot parse.

  Args:
    argv: the command line.
    error: what parsing raised: an absl `flags.Error`, or the
      AttributeError / KeyError of a `--config.<field>` that is not one.
    flag_values: the absl `FLAGS`, to name a config field's type.
  """
  if isinstance(error, (AttributeError, KeyError)):
    return unknown_field(argv, error)
  message = str(error).splitlines()[0]
  field = re.match(r'flag --(config\.[^=]+)=', message)
  if field and field.group(1) in flag_values:
    kind = type(flag_values[field.group(1)].default).__name__
    message += f'; {field.group(1)} takes {kind} values'
  return message


def unknown_field(argv: Sequence[str], error: Exception) -> str:
  """The one-line message of a misspelt `--config.<field>` override.

  Args:
    argv: the command line.
    error: what ml_collections raised for the override (its text holds the
      field and, when one is close, a "Did you mean" suggestion).
  """
  text = str(error)
  hint = re.search(r'Did you mean "([^"]+)" instead of "([^"]+)"', text)
  name = hint.group(2) if hint else re.search(r"'([^'\\]+)", text + "''")[1]
  for arg in argv:
    match = re.match(r'--?config\.([^=]+)', arg)
    if match and name in match.group(1).split('.'):
      path = match.group(1)
      if hint:
        parts = [hint.group(1) if p == name else p for p in path.split('.')]
        return (f'unknown config field {path} (did you mean '
                f'{".".join(parts)}?); see configs/default.py.')
      return f'unknown config field {path}; see configs/default.py.'
  return f'unknown config field {name!r}; see configs/default.py.'


def devices_line() -> str:
  """'devices: 4 x cpu (process 0 of 1)' for the header."""
  import jax  # pylint: disable=g-import-not-at-top
  kinds = sorted({d.device_kind for d in jax.local_devices()})
  line = (f'devices: {jax.local_device_count()} x {jax.default_backend()} '
          f'({", ".join(kinds)})')
  if jax.process_count() > 1:
    line += f', process {jax.process_index()} of {jax.process_count()}'
  return line


def header(config_path: str, mode: str, workdir: str) -> str:
  """The first lines a run prints: config, mode, workdir, devices."""
  return (f'{mode}: {config_path}, workdir {workdir}\n' + devices_line())


# -------------------------- progress lines with rate and ETA, for host loops
# On a terminal the line is rewritten in place (`\r`) a few times a second;
# otherwise (logs, pipes, CI) one full line is printed every `every_s`
# seconds. `close` (or leaving the `with` block) prints the final count, the
# time taken and the mean rate. Rate and ETA count from the first update, so
# a first unit that compiles does not skew them. Only one process of a
# multi-process run reports (`enabled`).


T = TypeVar('T')


def format_duration(seconds: float) -> str:
  """`1:02:03`, `2:03` or `4.2s` (short times keep a decimal)."""
  if seconds < 60:
    return f'{seconds:.1f}s'
  m, s = divmod(int(round(seconds)), 60)
  h, m = divmod(m, 60)
  return f'{h}:{m:02d}:{s:02d}' if h else f'{m}:{s:02d}'


def _singular(unit: str) -> str:
  """'batches' -> 'batch', 'samples' -> 'sample' (English plurals)."""
  if unit.endswith(('ches', 'shes', 'xes', 'sses')):
    return unit[:-2]
  return unit[:-1] if unit.endswith('s') and len(unit) > 1 else unit


def _rate(n: float, seconds: float, unit: str) -> str:
  if seconds <= 0 or n <= 0:
    return f'? {unit}/s'
  r = n / seconds
  if r >= 1:
    return f'{r:.3g} {unit}/s'
  return f'{seconds / n:.3g} s/{_singular(unit)}'


class Progress:
  """Counts done units of a known total; prints rate and ETA.

  Args:
    total: units of the whole job (0 or None: unknown, no ETA).
    desc: what is done, the line's first word(s).
    unit: name of a unit ('samples', 'checkpoints', ...).
    every_s: seconds between lines when the stream is not a terminal.
    stream: where lines go (default `sys.stderr`).
    clock: seconds, monotonic (tests pass a fake one).
    enabled: False prints nothing; default: only on process 0 of a
      multi-process run.
    tty: whether the stream is a terminal (default: `stream.isatty()`).
    initial: units already done before (a resumed run); the rate and ETA
      count only the units done here.
  """

  def __init__(self,
               total: Optional[int],
               desc: str,
               unit: str = 'items',
               every_s: float = 5.0,
               stream: Optional[TextIO] = None,
               clock: Callable[[], float] = time.monotonic,
               enabled: Optional[bool] = None,
               tty: Optional[bool] = None,
               initial: int = 0):
    self.total, self.desc, self.unit = total or 0, desc, unit
    self.stream = stream or sys.stderr
    self.tty = self.stream.isatty() if tty is None else tty
    self.every_s = 0.2 if self.tty else every_s
    if enabled is None:
      import jax  # pylint: disable=g-import-not-at-top
      enabled = jax.process_index() == 0
    self.clock, self.enabled = clock, enabled
    self.n = self.initial = initial
    self.closed, self.extra = False, ''
    self.start = self._last = clock()
    # Rate and ETA count from the first update on: the first unit often
    # includes compiling (a train step, a sampler) and would skew them.
    self._mark = None  # (time, units) at the first update.

  def __enter__(self) -> 'Progress':
    return self

  def __exit__(self, exc_type, *unused) -> None:
    if exc_type is None:
      self.close()
    elif self.tty:  # End the rewritten line; the error gets its own.
      self.closed = True
      self._write(self.line(), final=True)
    else:
      self.closed = True  # The error (or stop) line says what happened.

  def rate(self) -> float:
    """Units per second since the first update (0.0 until there is one)."""
    if self._mark is None:
      return 0.0
    elapsed = self.clock() - self._mark[0]
    return (self.n - self._mark[1]) / elapsed if elapsed > 0 else 0.0

  def line(self) -> str:
    """The current progress line (no newline)."""
    t0, n0 = self._mark or (self.start, self.initial)
    elapsed, here = self.clock() - t0, self.n - n0
    done = f'{self.n}/{self.total}' if self.total else f'{self.n}'
    pct = f' ({100 * self.n / self.total:.0f}%)' if self.total else ''
    text = (f'{self.desc}: {done} {self.unit}{pct}, '
            f'{_rate(here, elapsed, self.unit)}')
    if self.total and here > 0 and self.n < self.total:
      eta = elapsed * (self.total - self.n) / here
      text += f', ETA {format_duration(eta)}'
    return text + (f', {self.extra}' if self.extra else '')

  def _write(self, text: str, final: bool = False) -> None:
    if not self.enabled:
      return
    if self.tty:
      self.stream.write('\r\x1b[K' + text + ('\n' if final else ''))
    else:
      self.stream.write(text + '\n')
    self.stream.flush()

  def update(self, n: int = 1, extra: Optional[str] = None) -> None:
    """Adds `n` done units; prints a line if one is due.

    `extra` (e.g. 'loss 0.41') is appended to this and later lines.
    """
    self.n += n
    if extra is not None:
      self.extra = extra
    now = self.clock()
    if self._mark is None:
      self._mark = (now, self.n)
      return
    finished = self.total and self.n >= self.total  # close() reports it.
    if now - self._last >= self.every_s and not self.closed and not finished:
      self._last = now
      self._write(self.line())

  def close(self) -> None:
    """Prints the final line once: count, time taken, mean rate."""
    if self.closed:
      return
    self.closed = True
    elapsed = self.clock() - self.start
    done = f'{self.n}/{self.total}' if self.total else f'{self.n}'
    text = (f'{self.desc}: {done} {self.unit} in {format_duration(elapsed)}'
            f' ({_rate(self.n - self.initial, elapsed, self.unit)})')
    self._write(text + (f', {self.extra}' if self.extra else ''), final=True)


def track(items: Iterable[T],
          total: Optional[int],
          desc: str,
          unit: str = 'items',
          **kwargs) -> Iterator[T]:
  """Yields `items`, counting each one in a `Progress` closed at the end."""
  with Progress(total, desc, unit, **kwargs) as bar:
    for item in items:
      yield item
      bar.update()
