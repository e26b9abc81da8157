"""Where downloaded and derived files live: a per-user cache folder.

Inception weights (`evaluation.inception.weight_files`) and reference
statistics (`evaluation.inception.sample_quality`) are kept under one root,
never inside the installed package:

* `$NCSN_JAX_CACHE`, if set;
* else `$XDG_CACHE_HOME/ncsn_jax`, if `XDG_CACHE_HOME` is set;
* else `~/.cache/ncsn_jax`.

The Inception files are in its `inception/` folder, or in
`$NCSN_JAX_INCEPTION_CACHE` when that is set; a config's
`eval.cache_dir` overrides both for that run.
"""

import os

ROOT_ENV = 'NCSN_JAX_CACHE'
INCEPTION_ENV = 'NCSN_JAX_INCEPTION_CACHE'


def cache_root() -> str:
  """`$NCSN_JAX_CACHE`, else `$XDG_CACHE_HOME/ncsn_jax`, else ~/.cache/..."""
  env = os.environ.get(ROOT_ENV)
  if env:
    return os.path.abspath(os.path.expanduser(env))
  xdg = os.environ.get('XDG_CACHE_HOME')
  if xdg and os.path.isabs(xdg):  # The XDG spec ignores relative values.
    return os.path.join(xdg, 'ncsn_jax')
  return os.path.join(os.path.expanduser('~'), '.cache', 'ncsn_jax')


def inception_dir(override: str = '') -> str:
  """Inception weights and stats: `override`, `$NCSN_JAX_INCEPTION_CACHE`,
  else `<cache_root>/inception`."""
  path = override or os.environ.get(INCEPTION_ENV)
  if path:
    return os.path.abspath(os.path.expanduser(path))
  return os.path.join(cache_root(), 'inception')
