"""The legacy stream layout of `torch.save`, read with NumPy only.

torch <= 1.5 wrote it by default, later versions with
`_use_new_zipfile_serialization=False`. One stream holds five things in a
row -- pickled magic number, pickled protocol version, pickled sys-info
dict, the main pickle, the pickled list of storage keys -- then, per key in
that order, an int64 element count followed by the storage's raw bytes. The
pickles may take at most `torch_objects.MAX_PICKLE_BYTES`, each storage must
hold the element count its tensors declare, and views of storages (old
torch) must lie inside them.
"""

import os
import struct
from typing import Any

import numpy as np

from ncsn_jax import errors
from ncsn_jax.interop import torch_objects
from ncsn_jax.interop import unpickler

LEGACY_MAGIC = 0x1950a86a20f9469cfc6c
LEGACY_PROTOCOL = 1001


class _LimitedReader:
  """The stream of a legacy file's pickles, refused past MAX_PICKLE_BYTES."""

  def __init__(self, f, where: str):
    self._f, self._where = f, where
    self._left = torch_objects.MAX_PICKLE_BYTES

  def _take(self, data: bytes) -> bytes:
    self._left -= len(data)
    if self._left < 0:
      raise errors.ConfigError(
          f'{self._where}: its pickles run past '
          f'{torch_objects.MAX_PICKLE_BYTES:,} bytes, more than any PyTorch '
          'checkpoint\'s.')
    return data

  def read(self, n: int = -1) -> bytes:
    limit = self._left + 1
    return self._take(self._f.read(limit if n < 0 else min(n, limit)))

  def readline(self) -> bytes:
    return self._take(self._f.readline(self._left + 1))


def _legacy_header(f, where: str) -> str:
  """Reads magic, protocol and sys info; returns the byte order."""
  header = unpickler.Unpickler(f, where)
  if header.load() != LEGACY_MAGIC:
    raise errors.ConfigError(
        f'{where}: not a PyTorch checkpoint (bad magic number).')
  protocol = header.load()
  if protocol != LEGACY_PROTOCOL:
    raise errors.ConfigError(f'{where}: unsupported legacy protocol '
                             f'{torch_objects.printable(repr(protocol))}.')
  sys_info = header.load()
  if isinstance(sys_info, dict) and not sys_info.get('little_endian', True):
    return '>'
  return '<'


def _read_legacy_storage(f, storage, order: str, end: int, where: str):
  """Reads one storage's element count and data from the stream."""
  count = f.read(8)
  if len(count) != 8:
    raise errors.ConfigError(
        f'{where}: truncated before storage {storage.key!r}.')
  (numel,) = struct.unpack(order + 'q', count)
  dtype = storage.dtype.newbyteorder(order)
  nbytes = numel * dtype.itemsize
  if numel != storage.numel or nbytes > end - f.tell():
    raise errors.ConfigError(
        f'{where}: storage {storage.key!r} holds {numel:,} elements where '
        f'its tensors declare {storage.numel:,}, or fewer bytes follow; the '
        'file is truncated or corrupt.')
  storage.array = np.frombuffer(f.read(nbytes), dtype).astype(
      dtype.newbyteorder('='))


def load(f, where: str, max_bytes: int) -> Any:
  """The object of a legacy-layout stream, tensors copied (`torch_pickle`)."""
  pickles = _LimitedReader(f, where)
  order = _legacy_header(pickles, where)
  budget = torch_objects.Budget(where, max_bytes)
  storages: dict[str, torch_objects.Storage] = {}
  views: dict[str, tuple[str, int, int]] = {}

  def storage_fn(storage_type, key, numel, view):
    dtype = storage_type.dtype
    if key not in storages:
      budget.declare(numel * dtype.itemsize)
      storages[key] = torch_objects.Storage(key, dtype, numel, where)
    if view is None:
      return storages[key]
    view_key, offset, size = str(view[0]), view[1], view[2]
    views[view_key] = (key, int(offset), int(size))
    return storages.setdefault(
        view_key, torch_objects.Storage(view_key, dtype, int(size), where))

  obj = unpickler.Unpickler(pickles, where, storage_fn).load()
  keys = unpickler.Unpickler(pickles, where).load()
  if not isinstance(keys, list) or any(str(k) not in storages for k in keys):
    raise errors.ConfigError(f'{where}: malformed storage key list.')
  end = os.fstat(f.fileno()).st_size
  for key in keys:
    _read_legacy_storage(f, storages[str(key)], order, end, where)
  for view_key, (root, offset, size) in views.items():
    base = storages[root].array
    if base is None or offset < 0 or offset + size > base.size:
      raise errors.ConfigError(
          f'{where}: storage view {view_key!r} is out of range.')
    storages[view_key].array = base[offset:offset + size]
  return torch_objects.materialise(obj, budget)
