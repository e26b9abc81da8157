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

import math
from typing import Any, Optional

import numpy as np

from ncsn_jax import errors

NOTHING_RUN = 'nothing from the file was run'
MAX_PICKLE_BYTES = 16 << 20  # Far above any model's pickles (KBs).


def printable(text: Any, limit: int = 100) -> str:
  """`text` on one line (control characters escaped), at most `limit` chars."""
  text = str(text).encode('unicode_escape').decode('ascii')
  return text if len(text) <= limit else text[:limit - 3] + '...'


def build_refused(where: str, what: str):
  return errors.ConfigError(
      f'{where}: the pickle sets the state of {what} (BUILD), which no '
      f'PyTorch file does ({NOTHING_RUN}).')


class Budget:
  """Bytes a file may declare as storages and materialise as tensors."""

  def __init__(self, where: str, max_bytes: int):
    self.where, self.max_bytes = where, int(max_bytes)
    self.declared = self.materialised = 0

  def _check(self, total: int, what: str) -> None:
    if total > self.max_bytes:
      raise errors.ConfigError(
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
      raise errors.ConfigError(
          f'{self.where}: module {printable(self.type_name)} has a pickled '
          f'state of type {type(state).__name__}, not a dict.')
    self.state = state


def _tensor_array(ref: TensorRef, budget: Budget) -> np.ndarray:
  """The C-ordered copy of a tensor, checked against its storage."""
  where, storage = budget.where, ref.storage
  flat, size, stride, offset = storage.array, ref.size, ref.stride, ref.offset
  layout = f'size {size}, stride {stride}, offset {offset}'
  if flat is None:
    raise errors.ConfigError(f'{where}: the data of storage {storage.key!r} '
                             'are missing; the file is truncated or corrupt.')
  if len(size) != len(stride) or offset < 0 or min(size + stride,
                                                   default=0) < 0:
    raise errors.ConfigError(f'{where}: a tensor on storage {storage.key!r} '
                             f'has an invalid layout ({printable(layout)}).')
  numel = math.prod(size)
  if numel == 0:
    return np.zeros(size, flat.dtype)
  last = offset + sum((n - 1) * s for n, s in zip(size, stride))
  if last >= flat.size:
    raise errors.ConfigError(
        f'{where}: a tensor ({printable(layout)}) reaches past the '
        f'{flat.size} elements of storage {storage.key!r}; the file is '
        'truncated or corrupt.')
  if numel > flat.size - offset:
    raise errors.ConfigError(
        f'{where}: a tensor ({printable(layout)}) holds {numel:,} elements '
        f'but only {flat.size - offset:,} of storage {storage.key!r} lie '
        'from its offset on: a stride-0 or overlapping view, which no model '
        'or checkpoint saves.')
  budget.materialise(numel * flat.itemsize)
  view = np.lib.stride_tricks.as_strided(
      flat[offset:], shape=size,
      strides=tuple(s * flat.itemsize for s in stride), writeable=False)
  return np.array(view, copy=True, order='C')


def materialise(obj: Any, budget: Budget) -> Any:
  """`obj` with every `TensorRef` replaced by its array (a copy).

  Shared and cyclic references stay shared: each object is converted once.
  """
  done: dict[int, Any] = {}

  def walk(o):
    if id(o) in done:
      return done[id(o)]
    if isinstance(o, TensorRef):
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
