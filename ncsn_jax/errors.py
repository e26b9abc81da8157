"""The project's exception types.

`run.py` and `python -m ncsn_jax.fid` turn `InputError` (and its subclasses)
and `NonFiniteLossError` into one line on stderr and exit status 2; every
other exception is a bug and keeps its traceback.
"""


class InputError(ValueError):
  """Bad input: a file, folder or flag the run cannot use.

  The message names the file (or flag) and the fix: an unreadable image, a
  corrupt `.pth`, an unwritable output path.
  """


class ConfigError(InputError):
  """A config field (or a flag) the run cannot use; the message names it."""


class CheckpointError(InputError):
  """A checkpoint is missing, unreadable or does not fit the config."""


class NonFiniteLossError(FloatingPointError):
  """Training produced a NaN or Inf loss or gradient."""


class Interrupted(Exception):
  """Long work stopped on request (SIGTERM / SIGINT) with its parts saved.

  A rerun of the same command continues from them; `run.py` prints the
  message and exits 0, as a training run that checkpointed and stopped.
  """
