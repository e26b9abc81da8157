"""The one restricted unpickler for PyTorch files: no torch, no code run.

`torch.save` checkpoints and TorchScript archives are pickles whose tensors
point, through persistent ids, at raw storages kept outside the pickle
(`torch_pickle` reads those). This unpickler

* resolves globals from a whitelist: OrderedDict, the tensor and parameter
  rebuild functions and the storage types, plus, for TorchScript, the
  `__torch__.*` module classes and `build_intlist`. Any other global is
  refused by name;
* hands out guard objects only, so whatever the opcodes do, nothing but the
  whitelisted functions runs, on checked arguments: calling a storage type
  (REDUCE), setting state (BUILD) on a tensor, storage or whitelisted
  function, and NEWOBJ on anything but a TorchScript module class are
  refused;
* returns the stand-ins of `torch_objects` (tensors not yet copied, see
  `torch_objects.materialise`).

Every refusal is an `errors.ConfigError` of one line naming the file.
"""

import collections
import pickle
from typing import Any, Callable, Optional

import numpy as np

from ncsn_jax import errors
from ncsn_jax.interop import torch_objects


def _bfloat16() -> np.dtype:
  import ml_dtypes  # pylint: disable=g-import-not-at-top  (ships with jax)
  return np.dtype(ml_dtypes.bfloat16)


# torch storage class -> NumPy dtype (a function for the lazily found one).
_STORAGE_DTYPES: dict[str, Any] = {
    'DoubleStorage': np.float64, 'FloatStorage': np.float32,
    'HalfStorage': np.float16, 'BFloat16Storage': _bfloat16,
    'LongStorage': np.int64, 'IntStorage': np.int32,
    'ShortStorage': np.int16, 'CharStorage': np.int8,
    'ByteStorage': np.uint8, 'BoolStorage': np.bool_,
    'ComplexFloatStorage': np.complex64,
    'ComplexDoubleStorage': np.complex128, 'UntypedStorage': np.uint8,
}


class StorageType:
  """Stand-in for a torch storage class (`torch.FloatStorage`): its dtype."""

  def __init__(self, name: str, where: str):
    self.name, self._where = name, where
    dtype = _STORAGE_DTYPES[name]
    self.dtype = np.dtype(dtype() if dtype is _bfloat16 else dtype)

  def __call__(self, *unused):
    raise errors.ConfigError(
        f'{self._where}: the pickle calls torch.{self.name} itself; a '
        'PyTorch file\'s storages come from persistent ids '
        f'({torch_objects.NOTHING_RUN}).')

  def __setstate__(self, state):
    raise torch_objects.build_refused(self._where, f'torch.{self.name}')


class _Global:
  """A whitelisted callable: runs `fn(where, *args)`; refuses BUILD."""

  def __init__(self, name: str, fn: Callable[..., Any], where: str):
    self._name, self._fn, self._where = name, fn, where

  def __call__(self, *args):
    return self._fn(self._where, *args)

  def __setstate__(self, state):
    raise torch_objects.build_refused(self._where, self._name)


def _ints(where: str, value, what: str) -> tuple[int, ...]:
  if not isinstance(value, (tuple, list)) or not all(
      isinstance(v, int) and not isinstance(v, bool) for v in value):
    raise errors.ConfigError(
        f'{where}: a tensor {what} is not a tuple of integers '
        f'({torch_objects.printable(repr(value))}).')
  return tuple(value)


def _rebuild_tensor(where, storage, offset, size, stride, *unused):
  """`torch._utils._rebuild_tensor(_v2)`: a checked `TensorRef`."""
  if not isinstance(storage, torch_objects.Storage):
    raise errors.ConfigError(
        f'{where}: a tensor is built on a {type(storage).__name__}, not on '
        'a storage.')
  (offset,) = _ints(where, (offset,), 'offset')
  return torch_objects.TensorRef(storage, offset, _ints(where, size, 'size'),
                   _ints(where, stride, 'stride'), where)


def _rebuild_parameter(where, data, *unused):
  """`torch._utils._rebuild_parameter`: the tensor itself."""
  if not isinstance(data, torch_objects.TensorRef):
    raise errors.ConfigError(f'{where}: a parameter is built on a '
                             f'{type(data).__name__}, not on a tensor.')
  return data


_FUNCTIONS: dict[tuple[str, str], Callable[..., Any]] = {
    ('collections', 'OrderedDict'):
        lambda where, *args: collections.OrderedDict(*args),
    ('torch._utils', '_rebuild_tensor'): _rebuild_tensor,
    ('torch._utils', '_rebuild_tensor_v2'): _rebuild_tensor,
    ('torch._utils', '_rebuild_parameter'): _rebuild_parameter,
}
_SCRIPT_FUNCTIONS: dict[tuple[str, str], Callable[..., Any]] = {
    ('torch.jit._pickle', 'build_intlist'): lambda where, items: list(items),
}
_STORAGE_MODULES = ('torch', 'torch.storage')


class Unpickler(pickle.Unpickler):
  """Whitelisting unpickler of one pickle of a PyTorch file.

  Args:
    file: the pickle's binary stream.
    where: the file, for messages.
    storage_fn: fn(storage_type, key, numel, view) -> `Storage` for the
      persistent ids of tensors; None: the pickle may hold no tensors.
    torchscript: also allow TorchScript's module classes.
  """

  def __init__(self, file, where: str,
               storage_fn: Optional[Callable[...,
                                             torch_objects.Storage]] = None,
               torchscript: bool = False):
    super().__init__(file)
    self._where, self._storage_fn = where, storage_fn
    self._torchscript = torchscript
    self._functions = {**_FUNCTIONS,
                       **(_SCRIPT_FUNCTIONS if torchscript else {})}
    self._classes: dict[str, type] = {}

  def find_class(self, module, name):
    fn = self._functions.get((module, name))
    if fn is not None:
      return _Global(f'{module}.{name}', fn, self._where)
    if module in _STORAGE_MODULES and name in _STORAGE_DTYPES:
      return StorageType(name, self._where)
    if self._torchscript and (module == '__torch__' or
                              module.startswith('__torch__.')):
      qualname = f'{module}.{name}'
      if qualname not in self._classes:
        self._classes[qualname] = type(
            name, (torch_objects.ScriptObject,),
            {'type_name': qualname, 'where': self._where})
      return self._classes[qualname]
    qualname = torch_objects.printable(f'{module}.{name}')
    raise errors.ConfigError(
        f'{self._where}: refusing to load global {qualname}: not a tensor, '
        'storage or container a PyTorch file holds '
        f'({torch_objects.NOTHING_RUN}).')

  def persistent_load(self, pid):
    if self._storage_fn is None:
      raise errors.ConfigError(f'{self._where}: unexpected persistent id in '
                               'a pickle that holds no tensors.')
    if not (isinstance(pid, tuple) and len(pid) in (5, 6) and
            pid[0] == 'storage' and isinstance(pid[1], StorageType) and
            isinstance(pid[2], (str, int)) and isinstance(pid[4], int) and
            not isinstance(pid[4], bool) and pid[4] >= 0):
      raise errors.ConfigError(f'{self._where}: unknown persistent id '
                               f'{torch_objects.printable(repr(pid))}.')
    view = pid[5] if len(pid) == 6 else None
    return self._storage_fn(pid[1], str(pid[2]), pid[4], view)


