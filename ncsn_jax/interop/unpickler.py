"""The objects a PyTorch pickle rebuilds, and their bounded copy to NumPy.

`unpickler.Unpickler` turns a pickle into plain containers holding these
stand-ins: a `Storage` per persistent id (its data read by `torch_pickle`),
a `TensorRef` per tensor (a strided view, not yet copied) and a
`ScriptObject` per TorchScript module. `materialise` then copies every
tensor out of its storage, each checked to lie inside it and to hold no
more elements than it (a stride-0 view of a small storage cannot blow up),
all within a `Budget` of bytes. None of them accepts pickled state (BUILD)
it does not expect; every refusal is one `errors.ConfigError` line naming
the file.
"""

import collections
import math
import pickle
from typing import Any, Callable, Optional

import numpy as np

from ncsn_jax import errors

NOTHING_RUN = 'nothing from the file was run'
MAX_PICKLE_BYTES = 16 << 20  # Far above any model's pickles (KBs).


def printable(text: Any, limit: int = 100) -> str:
  """`text` on one line (control characters escaped), at most `limit` chars."""
  text = str(text).encode('unicode_escape').decode('ascii')
  return text if len(text) <= limit else text[:limit - 3] + '...'


def build_refused(where: str, what: str):
  return errors.InputError(
      f'{where}: the pickle sets the state of {what} (BUILD), which no '
      f'PyTorch file does ({NOTHING_RUN}).')


class Budget:
  """Bytes a file may declare as storages and materialise as tensors."""

  def __init__(self, where: str, max_bytes: int):
    self.where, self.max_bytes = where, int(max_bytes)
    self.declared = self.materialised = 0

  def _check(self, total: int, what: str) -> None:
    if total > self.max_bytes:
      raise errors.InputError(
          f'{self.where}: its {what} come to {total:,} bytes, more than the '
          f'{self.max_bytes:,} expected of it; it is corrupt or crafted.')

  def declare(self, nbytes: int) -> None:
    self.declared += nbytes
    self._check(self.declared, 'storages')

  def materialise(self, nbytes: int) -> None:
    self.materialised += nbytes
    self._check(self.materialised, 'tensors')


class Storage:
  """One flat storage: key, dtype, declared element count, data once read."""

  def __init__(self, key: str, dtype: np.dtype, numel: int, where: str):
    self.key, self.dtype, self.numel, self._where = key, dtype, numel, where
    self.array: Optional[np.ndarray] = None

  def __setstate__(self, state):
    raise build_refused(self._where, f'storage {self.key!r}')


class TensorRef:
  """A tensor as pickled: a strided view of a storage, not yet copied."""

  def __init__(self, storage: Storage, offset: int, size: tuple[int, ...],
               stride: tuple[int, ...], where: str):
    self.storage, self.offset, self.size, self.stride = (storage, offset, size,
                                                         stride)
    self._where = where

  def __setstate__(self, state):
    raise build_refused(self._where, 'a tensor')


class ScriptObject:
  """Stand-in for a pickled TorchScript module: keeps its attribute dict."""
  type_name = ''
  where = ''

  def __setstate__(self, state):
    if not isinstance(state, dict):
      raise errors.InputError(
          f'{self.where}: module {printable(self.type_name)} has a pickled '
          f'state of type {type(state).__name__}, not a dict.')
    self.state = state


def _tensor_array(ref: TensorRef, budget: Budget) -> np.ndarray:
  """The C-ordered copy of a tensor, checked against its storage."""
  where, storage = budget.where, ref.storage
  flat, size, stride, offset = storage.array, ref.size, ref.stride, ref.offset
  layout = f'size {size}, stride {stride}, offset {offset}'
  if flat is None:
    raise errors.InputError(f'{where}: the data of storage {storage.key!r} '
                            'are missing; the file is truncated or corrupt.')
  if len(size) != len(stride) or offset < 0 or min(size + stride,
                                                   default=0) < 0:
    raise errors.InputError(f'{where}: a tensor on storage {storage.key!r} '
                            f'has an invalid layout ({printable(layout)}).')
  numel = math.prod(size)
  if numel == 0:
    return np.zeros(size, flat.dtype)
  last = offset + sum((n - 1) * s for n, s in zip(size, stride))
  if last >= flat.size:
    raise errors.InputError(
        f'{where}: a tensor ({printable(layout)}) reaches past the '
        f'{flat.size} elements of storage {storage.key!r}; the file is '
        'truncated or corrupt.')
  if numel > flat.size - offset:
    raise errors.InputError(
        f'{where}: a tensor ({printable(layout)}) holds {numel:,} elements '
        f'but only {flat.size - offset:,} of storage {storage.key!r} lie '
        'from its offset on: a stride-0 or overlapping view, which no model '
        'or checkpoint saves.')
  budget.materialise(numel * flat.itemsize)
  view = np.lib.stride_tricks.as_strided(
      flat[offset:], shape=size,
      strides=tuple(s * flat.itemsize for s in stride), writeable=False)
  return np.array(view, copy=True, order='C')


def materialise(obj: Any, budget: Optional[Budget]) -> Any:
  """`obj` with every `TensorRef` replaced by its array (a copy).

  Shared and cyclic references stay shared: each object is converted once.
  With `budget=None` no storage is read: each tensor becomes a read-only
  zero array of its shape and dtype that takes no memory (for checking a
  file's shapes before reading it).
  """
  done: dict[int, Any] = {}

  def walk(o):
    if id(o) in done:
      return done[id(o)]
    if isinstance(o, TensorRef) and budget is None:
      done[id(o)] = np.broadcast_to(np.zeros((), o.storage.dtype),
                                    tuple(o.size))
    elif isinstance(o, TensorRef):
      done[id(o)] = _tensor_array(o, budget)
    elif isinstance(o, ScriptObject):
      done[id(o)] = o
      o.state = walk(getattr(o, 'state', {}))
    elif isinstance(o, dict):
      out = done[id(o)] = type(o)()
      out.update((k, walk(v)) for k, v in o.items())
    elif isinstance(o, list):
      out = done[id(o)] = []
      out.extend(walk(v) for v in o)
    elif isinstance(o, tuple):
      done[id(o)] = tuple(walk(v) for v in o)
    else:
      return o
    return done[id(o)]

  return walk(obj)


# ------- The one restricted unpickler for PyTorch files: no torch, no code run
#
# `torch.save` checkpoints and TorchScript archives are pickles whose tensors
# point, through persistent ids, at raw storages kept outside the pickle
# (`torch_pickle` reads those). This unpickler
#
# * resolves globals from a whitelist: OrderedDict, the tensor and parameter
#   rebuild functions and the storage types, plus, for TorchScript, the
#   `__torch__.*` module classes and `build_intlist`. Any other global is
#   refused by name;
# * hands out guard objects only, so whatever the opcodes do, nothing but the
#   whitelisted functions runs, on checked arguments: calling a storage type
#   (REDUCE), setting state (BUILD) on a tensor, storage or whitelisted
#   function, and NEWOBJ on anything but a TorchScript module class are
#   refused;
# * returns the stand-ins above (tensors not yet copied, see
#   `materialise`).
#
# Every refusal is an `errors.ConfigError` of one line naming the file.


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
    raise errors.InputError(
        f'{self._where}: the pickle calls torch.{self.name} itself; a '
        'PyTorch file\'s storages come from persistent ids '
        f'({NOTHING_RUN}).')

  def __setstate__(self, state):
    raise build_refused(self._where, f'torch.{self.name}')


class _Global:
  """A whitelisted callable: runs `fn(where, *args)`; refuses BUILD."""

  def __init__(self, name: str, fn: Callable[..., Any], where: str):
    self._name, self._fn, self._where = name, fn, where

  def __call__(self, *args):
    return self._fn(self._where, *args)

  def __setstate__(self, state):
    raise build_refused(self._where, self._name)


def _ints(where: str, value, what: str) -> tuple[int, ...]:
  if not isinstance(value, (tuple, list)) or not all(
      isinstance(v, int) and not isinstance(v, bool) for v in value):
    raise errors.InputError(
        f'{where}: a tensor {what} is not a tuple of integers '
        f'({printable(repr(value))}).')
  return tuple(value)


def _rebuild_tensor(where, storage, offset, size, stride, *unused):
  """`torch._utils._rebuild_tensor(_v2)`: a checked `TensorRef`."""
  if not isinstance(storage, Storage):
    raise errors.InputError(
        f'{where}: a tensor is built on a {type(storage).__name__}, not on '
        'a storage.')
  (offset,) = _ints(where, (offset,), 'offset')
  return TensorRef(storage, offset, _ints(where, size, 'size'),
                   _ints(where, stride, 'stride'), where)


def _rebuild_parameter(where, data, *unused):
  """`torch._utils._rebuild_parameter`: the tensor itself."""
  if not isinstance(data, TensorRef):
    raise errors.InputError(f'{where}: a parameter is built on a '
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
                                             Storage]] = None,
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
            name, (ScriptObject,),
            {'type_name': qualname, 'where': self._where})
      return self._classes[qualname]
    qualname = printable(f'{module}.{name}')
    raise errors.InputError(
        f'{self._where}: refusing to load global {qualname}: not a tensor, '
        'storage or container a PyTorch file holds '
        f'({NOTHING_RUN}).')

  def persistent_load(self, pid):
    if self._storage_fn is None:
      raise errors.InputError(f'{self._where}: unexpected persistent id in '
                              'a pickle that holds no tensors.')
    if not (isinstance(pid, tuple) and len(pid) in (5, 6) and
            pid[0] == 'storage' and isinstance(pid[1], StorageType) and
            isinstance(pid[2], (str, int)) and isinstance(pid[4], int) and
            not isinstance(pid[4], bool) and pid[4] >= 0):
      raise errors.InputError(f'{self._where}: unknown persistent id '
                              f'{printable(repr(pid))}.')
    view = pid[5] if len(pid) == 6 else None
    return self._storage_fn(pid[1], str(pid[2]), pid[4], view)
