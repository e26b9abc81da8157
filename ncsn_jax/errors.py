"""The project's exception types.

`run.py` turns `ConfigError` (and its subclass `CheckpointError`) and
`NonFiniteLossError` into one line on stderr and exit status 2; every other
exception is a bug and keeps its traceback.
"""


class ConfigError(ValueError):
  """Bad input: a config field, flag or file the run cannot use.

  The message names the field (or file) and the fix.
  """


class CheckpointError(ConfigError):
  """A checkpoint is missing, unreadable or does not fit the config."""


class NonFiniteLossError(FloatingPointError):
  """Training produced a NaN or Inf loss or gradient."""
