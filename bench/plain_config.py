"""The CIFAR-10 NCSNv2 config, with or without ml_collections installed.

A GPU machine often has only jax, flax, optax and numpy. The experiment
configs build `ml_collections.ConfigDict`s; where that package is missing,
`get_config()` runs the same `configs/default.py` with a plain attribute
dict in its place, so every number still comes from the one config file.
The model, loss, train step and sampler only read fields by attribute.
"""

import contextlib
import importlib.util
import os
import sys
import types

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class AttrDict(dict):
  """A dict whose items are also attributes (what the code reads)."""

  def __getattr__(self, name):
    try:
      return self[name]
    except KeyError:
      raise AttributeError(name) from None

  def __setattr__(self, name, value):
    self[name] = value


@contextlib.contextmanager
def _stand_in():
  """`ml_collections` resolves to a module whose ConfigDict is AttrDict."""
  module = types.ModuleType('ml_collections')
  module.ConfigDict = AttrDict
  saved = sys.modules.get('ml_collections')
  sys.modules['ml_collections'] = module
  try:
    yield
  finally:
    if saved is None:
      del sys.modules['ml_collections']
    else:
      sys.modules['ml_collections'] = saved


def has_ml_collections() -> bool:
  if sys.modules.get('ml_collections') is not None:
    return True
  try:
    return importlib.util.find_spec('ml_collections') is not None
  except ImportError:  # An import hook that refuses it.
    return False


def _load_default():
  path = os.path.join(ROOT, 'configs', 'default.py')
  spec = importlib.util.spec_from_file_location('_plain_default', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def get_config(plain: bool = False):
  """The CIFAR-10 NCSNv2 config (`configs/cifar10_ncsnv2.py`).

  A ConfigDict when ml_collections is importable and `plain` is False,
  otherwise the same fields as nested `AttrDict`s.
  """
  if not plain and has_ml_collections():
    from configs import cifar10_ncsnv2  # pylint: disable=g-import-not-at-top
    return cifar10_ncsnv2.get_config()
  with _stand_in():
    return _load_default().get_default_config()
