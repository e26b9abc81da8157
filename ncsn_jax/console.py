"""A quiet console: what run.py prints by default, and what it hides.

By default a run prints the config name, the devices, progress lines, where
the outputs went and a summary. TensorFlow's and XLA's C++ start-up notices
and the INFO logs of JAX, TensorFlow, orbax, clu and our own modules stay
hidden unless `--verbosity=1` (or `-v`) is given; the metrics are in
TensorBoard and `metrics.jsonl`. The environment variables must be set
before TensorFlow or JAX is imported, so this module imports neither.
"""

import os
from typing import Sequence

# Start-up settings of the C++ runtimes, applied unless already set.
# oneDNN's custom ops are off for TensorFlow, which here only feeds data:
# that also drops its start-up notice. TF_CPP_MIN_LOG_LEVEL=2 keeps TF's
# and XLA's C++ logs to errors.
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
  """Sets the C++ runtimes' log variables; call before TF/JAX imports."""
  for k, v in dict(_ALWAYS, **({} if verbose else _QUIET)).items():
    environ.setdefault(k, v)


def quiet_logging(verbose: bool) -> None:
  """absl (and Python) logging at WARNING unless verbose; after flags."""
  from absl import logging  # pylint: disable=g-import-not-at-top
  if not verbose:
    logging.set_verbosity(logging.WARNING)


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
