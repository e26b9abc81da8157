"""Shared helpers of the PyTorch fixture tools (dev-only; needs torch).

Both official repositories name their packages `models`, `losses`,
`datasets` and `runners`; `import_official` imports one repository's module
at a time. `Recorder` stands in for the `torch` module inside an official
module and records what its random functions return, so the official code
runs unchanged while every draw is captured.
"""

import importlib
import importlib.util
import os
import sys
import types

import numpy as np
import torch
import yaml

_PACKAGES = ('models', 'losses', 'datasets', 'runners')
# Imported by official modules for logging, image files and data sets that
# the fixtures never use. torchvision is replaced when it does not import
# (no build for the local CPU torch): the transforms fixture then applies
# torchvision's PIL semantics itself (torch_fixture_transforms.py).
_STUBS = {
    'tensorboardX': ('SummaryWriter',),
    'lmdb': (),
    'torchvision': (),
    'torchvision.transforms': ('Compose', 'Resize', 'CenterCrop', 'ToTensor',
                               'RandomHorizontalFlip'),
    'torchvision.datasets': ('CIFAR10', 'LSUN', 'MNIST', 'SVHN'),
    'torchvision.utils': ('make_grid', 'save_image'),
}


def has_torchvision() -> bool:
  try:
    importlib.import_module('torchvision.transforms')
  except ImportError:
    return False
  return not isinstance(sys.modules['torchvision'], _Stub)


class _Stub(types.ModuleType):
  """A module whose listed attributes are placeholders never called."""


def _install_stubs() -> None:
  for name, attrs in _STUBS.items():
    if name in sys.modules:
      continue
    try:
      importlib.import_module(name)
      continue
    except ImportError:
      pass
    stub = _Stub(name)
    for attr in attrs:
      setattr(stub, attr, ScalarLog)
    sys.modules[name] = stub
    parent, _, child = name.rpartition('.')
    if parent:
      setattr(sys.modules[parent], child, stub)


def import_official(repo: str, module: str, path: str = ''):
  """Imports `module` of the checkout `repo` (or the file `path` in it)."""
  _install_stubs()
  for name in [m for m in sys.modules if m.split('.')[0] in _PACKAGES]:
    del sys.modules[name]
  sys.path.insert(0, os.path.abspath(repo))
  try:
    if not path:
      return importlib.import_module(module)
    # Loaded by file so that the package __init__ (all runners) is skipped.
    spec = importlib.util.spec_from_file_location(module,
                                                  os.path.join(repo, path))
    loaded = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loaded)
    return loaded
  finally:
    sys.path.pop(0)


def namespace(tree):
  """A nested dict (an official .yml config) as attribute namespaces."""
  if isinstance(tree, dict):
    return types.SimpleNamespace(**{k: namespace(v) for k, v in tree.items()})
  return tree


def load_yml(repo: str, name: str) -> dict:
  with open(os.path.join(repo, 'configs', name)) as f:
    return yaml.safe_load(f)


class ScalarLog:
  """Stand-in for a tensorboard writer: keeps (tag, value, step)."""

  def __init__(self, *args, **kwargs):
    del args, kwargs
    self.scalars = []

  def add_scalar(self, tag, value, global_step=None):
    if torch.is_tensor(value):
      value = value.detach()
    self.scalars.append((tag, float(value), global_step))


class Recorder:
  """`torch` for an official module: random draws are recorded.

  `log` receives (where, function name, a copy of the returned tensor).
  """

  RANDOM = ('rand', 'rand_like', 'randn', 'randn_like', 'randint')

  def __init__(self, where: str, log: list, extra=()):
    self._where, self._log = where, log
    self._names = set(self.RANDOM) | set(extra)

  def __getattr__(self, name):
    attr = getattr(torch, name)
    if name not in self._names:
      return attr

    def recorded(*args, **kwargs):
      if name in self.RANDOM:
        out = attr(*args, **kwargs)
        self._log.append((self._where, name, out.detach().clone()))
        return out
      # Other functions: record the first argument (e.g. clamp's input).
      self._log.append((self._where, name, args[0].detach().clone()))
      return attr(*args, **kwargs)

    return recorded


def patch_torch(module, where: str, log: list, extra=()):
  """Makes `module.torch` a Recorder; returns a function that undoes it."""
  real = module.torch
  module.torch = Recorder(where, log, extra)

  def undo():
    module.torch = real

  return undo


def nhwc(x) -> np.ndarray:
  """A torch NCHW tensor (or a stack of them) as float32 NHWC NumPy."""
  x = x.detach().cpu().numpy() if torch.is_tensor(x) else np.asarray(x)
  return np.ascontiguousarray(np.moveaxis(x, -3, -1)).astype(np.float32)


def perturb_norms(model: torch.nn.Module, gen: torch.Generator) -> None:
  """Moves every norm parameter away from its init so each one matters."""
  with torch.no_grad():
    for name, p in model.named_parameters():
      leaf = name.rsplit('.', 1)[-1]
      if name.endswith('embed.weight'):  # CondIN++: gamma | alpha | beta.
        p.copy_(torch.randn(p.shape, generator=gen) * 0.5 + 0.5)
      elif leaf in ('alpha', 'gamma'):
        p.copy_(1.0 + 0.5 * torch.randn(p.shape, generator=gen))
      elif leaf == 'beta':
        p.copy_(0.5 * torch.randn(p.shape, generator=gen))




def save_npz(path: str, arrays: dict) -> None:
  np.savez_compressed(path, **arrays)
  print(f'{os.path.basename(path)}: {os.path.getsize(path)} bytes')
