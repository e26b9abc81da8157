"""Reads PyTorch files with NumPy only: `.pth` checkpoints and TorchScript.

`torch.save` writes a pickle whose tensors point, through pickle persistent
ids, at raw storages kept outside the pickle. Two layouts exist:

* zip (torch >= 1.6, and every TorchScript archive): `<name>/data.pkl` (the
  pickle), `<name>/data/<key>` (one raw storage per key) and
  `<name>/byteorder` ('little' or 'big'; absent = little) among other small
  records; TorchScript archives also hold `constants.pkl` and code.
* legacy (torch <= 1.5 default), one stream: see the legacy section below.

The pickles go through `unpickler.Unpickler` (a whitelist; nothing from the
file runs), their tensors are copied out by `unpickler.materialise`.
Memory is bounded: the storages a file declares and the tensors it
materialises may not exceed the caller's `max_bytes` (what the target
network can hold), a zip member is decompressed in 1 MiB chunks and never
past the size its tensors declare, and a tensor may not view its storage
more than once. Whatever is wrong with a file, the error is one
`errors.ConfigError` line naming it.
"""

import contextlib
import io
import os
import pickle
import struct
from typing import Any, Callable, Optional
import zipfile
import zlib

import numpy as np

from ncsn_jax import errors
from ncsn_jax.interop import unpickler

_CHUNK = 1 << 20

# Whatever a crafted or damaged file makes the parsers raise.
_PARSE_ERRORS = (pickle.UnpicklingError, EOFError, zipfile.BadZipFile,
                 zlib.error, LookupError, TypeError, AttributeError,
                 ValueError, struct.error, ArithmeticError, MemoryError,
                 RecursionError, NotImplementedError, OSError)


@contextlib.contextmanager
def _refusals(where: str):
  """Turns any parse failure into one ConfigError line naming `where`."""
  try:
    yield
  except errors.InputError:
    raise
  except _PARSE_ERRORS as e:
    raise errors.InputError(
        f'{where}: not a readable PyTorch file; it is truncated, corrupt or '
        f'not written by torch ({type(e).__name__}: '
        f'{unpickler.printable(e, 120)}).') from e


def _read_member(archive: zipfile.ZipFile, name: str, nbytes: int,
                 where: str) -> bytearray:
  """Exactly the `nbytes` of member `name`, decompressed chunk by chunk."""
  info = archive.getinfo(name)
  if info.file_size != nbytes:
    state = 'truncated' if info.file_size < nbytes else 'not torch\'s'
    raise errors.InputError(
        f'{where}: record {name!r} holds {info.file_size:,} bytes where its '
        f'tensors declare {nbytes:,}; the file is {state}.')
  buf = bytearray(nbytes)
  pos = 0
  with archive.open(info) as f:
    while pos < nbytes:
      chunk = f.read(min(_CHUNK, nbytes - pos))
      if not chunk:
        raise errors.InputError(f'{where}: record {name!r} ends after '
                                f'{pos:,} of {nbytes:,} bytes.')
      buf[pos:pos + len(chunk)] = chunk
      pos += len(chunk)
  return buf


def _read_small(archive: zipfile.ZipFile, name: str, where: str) -> bytes:
  """A pickle or text record, refused past `unpickler.MAX_PICKLE_BYTES`."""
  info = archive.getinfo(name)
  if info.file_size > unpickler.MAX_PICKLE_BYTES:
    raise errors.InputError(f'{where}: record {name!r} declares '
                            f'{info.file_size:,} bytes, more than any '
                            'PyTorch file\'s pickles.')
  return bytes(_read_member(archive, name, info.file_size, where))


def _zip_byteorder(archive: zipfile.ZipFile, prefix: str, where: str) -> str:
  if prefix + 'byteorder' not in archive.namelist():
    return '<'
  text = _read_small(archive, prefix + 'byteorder', where).decode().strip()
  if text not in ('little', 'big'):
    raise errors.InputError(
        f'{where}: unknown byteorder record '
        f'{unpickler.printable(text)!r}.')
  return '<' if text == 'little' else '>'


def _load_zip(archive: zipfile.ZipFile, record: str, where: str,
              max_bytes: int, torchscript: bool = False,
              inspect: Optional[Callable[[Any], None]] = None) -> Any:
  """The object pickled in `record` of a zip-layout file, tensors copied."""
  prefix = record[:-len('data.pkl')]
  order = _zip_byteorder(archive, prefix, where)
  budget = unpickler.Budget(where, max_bytes)
  storages: dict[str, tuple[unpickler.Storage, np.dtype]] = {}
  names = set(archive.namelist())

  def storage_fn(storage_type, key, numel, unused_view):
    if key in storages:
      return storages[key][0]
    name = f'{prefix}data/{key}'
    if name not in names:
      raise errors.InputError(
          f'{where}: storage record {unpickler.printable(name)!r} is '
          'missing; the file is truncated or corrupt.')
    dtype = storage_type.dtype.newbyteorder(order)
    storage = unpickler.Storage(key, dtype.newbyteorder('='), numel, where)
    storages[key] = storage, dtype
    return storage

  data = _read_small(archive, record, where)
  obj = unpickler.Unpickler(io.BytesIO(data), where, storage_fn,
                            torchscript).load()
  if inspect is not None:  # Shapes first: nothing is read yet.
    inspect(unpickler.materialise(obj, None))
  for key, (storage, dtype) in storages.items():
    budget.declare(storage.numel * dtype.itemsize)
    raw = _read_member(archive, f'{prefix}data/{key}',
                       storage.numel * dtype.itemsize, where)
    array = np.frombuffer(raw, dtype)
    if not dtype.isnative:
      array = array.byteswap().view(dtype.newbyteorder('='))
    storage.array = array
  return unpickler.materialise(obj, budget)


def load_pth(path: str, max_bytes: int,
             inspect: Optional[Callable[[Any], None]] = None) -> Any:
  """Loads a `torch.save` file: dicts / lists / numbers with array leaves.

  Args:
    path: a `.pth` file in the zip or the legacy serialisation.
    max_bytes: the most bytes its storages, and its tensors, may hold.
    inspect: called with the object before any storage is read or
      bounded, its tensors as zero arrays of their shapes and dtypes that
      take no memory: a caller can refuse a file by its shapes first.

  Returns:
    The saved object; every tensor is an `np.ndarray` (a copy, native byte
    order, bfloat16 via ml_dtypes).

  Raises:
    errors.ConfigError: one line naming the file, when it is missing, not a
      PyTorch checkpoint, truncated, corrupt, larger than `max_bytes`, or
      pickles anything outside the whitelist.
  """
  if not os.path.isfile(path):
    raise errors.InputError(f'checkpoint file {path} does not exist.')
  with _refusals(path):
    if zipfile.is_zipfile(path):
      with zipfile.ZipFile(path) as archive:
        pickles = [n for n in archive.namelist() if n.endswith('data.pkl')]
        if len(pickles) != 1:
          raise errors.InputError(
              f'{path}: a zip archive but not a PyTorch checkpoint (found '
              f'{len(pickles)} data.pkl records).')
        return _load_zip(archive, pickles[0], path, max_bytes,
                         inspect=inspect)
    with open(path, 'rb') as f:
      first = f.read(2)
      if first == b'PK':
        raise errors.InputError(f'{path}: a damaged or truncated zip '
                                'archive, not a readable PyTorch checkpoint.')
      if first[:1] != b'\x80':  # Every torch pickle starts with PROTO.
        raise errors.InputError(
            f'{path}: not a PyTorch checkpoint (neither a zip archive nor a '
            'legacy torch pickle).')
      f.seek(0)
      return load(f, path, max_bytes, inspect)


def _collect_tensors(obj, prefix: str, out: dict[str, np.ndarray]) -> None:
  """Walks TorchScript modules depth first: dotted attribute path -> array."""
  for name, value in obj.state.items():
    if isinstance(value, np.ndarray):
      out[prefix + name] = value
    elif isinstance(value, unpickler.ScriptObject):
      _collect_tensors(value, f'{prefix}{name}.', out)


def load_torchscript(source, max_bytes: int,
                     where: str = '') -> dict[str, np.ndarray]:
  """Tensors of a TorchScript archive, keyed like its `state_dict()`.

  Args:
    source: path of the `.pt` file, or its bytes.
    max_bytes: the most bytes its storages, and its tensors, may hold.
    where: the name of the source in messages (default: the path).

  Returns:
    `{'net.layers.conv.weight': array, ...}` (copies).

  Raises:
    errors.ConfigError: as `load_pth`, and for a zip that is not a
      TorchScript archive.
  """
  if not where:
    where = ('the TorchScript archive' if isinstance(source, (bytes, bytearray))
             else os.fspath(source))
  with _refusals(where):
    with zipfile.ZipFile(io.BytesIO(source) if isinstance(
        source, (bytes, bytearray)) else source) as archive:
      names = archive.namelist()
      pickles = [n for n in names
                 if n.endswith('/data.pkl') and n.count('/') == 1]
      if len(pickles) != 1 or not any(
          n.endswith('/constants.pkl') for n in names):
        raise errors.InputError(
            f'{where}: not a TorchScript archive (data.pkl and '
            'constants.pkl expected at its root).')
      root = _load_zip(archive, pickles[0], where, max_bytes, True)
    if not isinstance(root, unpickler.ScriptObject):
      raise errors.InputError(
          f'{where}: the root object of the TorchScript archive is not a '
          'module.')
    out: dict[str, np.ndarray] = {}
    _collect_tensors(root, '', out)
  return out


# -------------- The legacy stream layout of `torch.save`, read with NumPy only
#
# torch <= 1.5 wrote it by default, later versions with
# `_use_new_zipfile_serialization=False`. One stream holds five things in a
# row -- pickled magic number, pickled protocol version, pickled sys-info
# dict, the main pickle, the pickled list of storage keys -- then, per key in
# that order, an int64 element count followed by the storage's raw bytes. The
# pickles may take at most `unpickler.MAX_PICKLE_BYTES`, each storage must
# hold the element count its tensors declare, and views of storages (old
# torch) must lie inside them.


LEGACY_MAGIC = 0x1950a86a20f9469cfc6c
LEGACY_PROTOCOL = 1001


class _LimitedReader:
  """The stream of a legacy file's pickles, refused past MAX_PICKLE_BYTES."""

  def __init__(self, f, where: str):
    self._f, self._where = f, where
    self._left = unpickler.MAX_PICKLE_BYTES

  def _take(self, data: bytes) -> bytes:
    self._left -= len(data)
    if self._left < 0:
      raise errors.InputError(
          f'{self._where}: its pickles run past '
          f'{unpickler.MAX_PICKLE_BYTES:,} bytes, more than any PyTorch '
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
    raise errors.InputError(
        f'{where}: not a PyTorch checkpoint (bad magic number).')
  protocol = header.load()
  if protocol != LEGACY_PROTOCOL:
    raise errors.InputError(f'{where}: unsupported legacy protocol '
                            f'{unpickler.printable(repr(protocol))}.')
  sys_info = header.load()
  if isinstance(sys_info, dict) and not sys_info.get('little_endian', True):
    return '>'
  return '<'


def _read_legacy_storage(f, storage, order: str, end: int, where: str):
  """Reads one storage's element count and data from the stream."""
  count = f.read(8)
  if len(count) != 8:
    raise errors.InputError(
        f'{where}: truncated before storage {storage.key!r}.')
  (numel,) = struct.unpack(order + 'q', count)
  dtype = storage.dtype.newbyteorder(order)
  nbytes = numel * dtype.itemsize
  if numel != storage.numel or nbytes > end - f.tell():
    raise errors.InputError(
        f'{where}: storage {storage.key!r} holds {numel:,} elements where '
        f'its tensors declare {storage.numel:,}, or fewer bytes follow; the '
        'file is truncated or corrupt.')
  storage.array = np.frombuffer(f.read(nbytes), dtype).astype(
      dtype.newbyteorder('='))


def load(f, where: str, max_bytes: int,
         inspect: Optional[Callable[[Any], None]] = None) -> Any:
  """The object of a legacy-layout stream, tensors copied (`load_pth`)."""
  pickles = _LimitedReader(f, where)
  order = _legacy_header(pickles, where)
  budget = unpickler.Budget(where, max_bytes)
  storages: dict[str, unpickler.Storage] = {}
  views: dict[str, tuple[str, int, int]] = {}

  def storage_fn(storage_type, key, numel, view):
    dtype = storage_type.dtype
    if key not in storages:
      storages[key] = unpickler.Storage(key, dtype, numel, where)
    if view is None:
      return storages[key]
    view_key, offset, size = str(view[0]), view[1], view[2]
    views[view_key] = (key, int(offset), int(size))
    return storages.setdefault(
        view_key, unpickler.Storage(view_key, dtype, int(size), where))

  obj = unpickler.Unpickler(pickles, where, storage_fn).load()
  keys = unpickler.Unpickler(pickles, where).load()
  if not isinstance(keys, list) or any(str(k) not in storages for k in keys):
    raise errors.InputError(f'{where}: malformed storage key list.')
  if inspect is not None:  # Shapes first: nothing is read yet.
    inspect(unpickler.materialise(obj, None))
  for key in keys:
    storage = storages[str(key)]
    budget.declare(storage.numel * storage.dtype.itemsize)
  end = os.fstat(f.fileno()).st_size
  for key in keys:
    _read_legacy_storage(f, storages[str(key)], order, end, where)
  for view_key, (root, offset, size) in views.items():
    base = storages[root].array
    if base is None or offset < 0 or offset + size > base.size:
      raise errors.InputError(
          f'{where}: storage view {view_key!r} is out of range.')
    storages[view_key].array = base[offset:offset + size]
  return unpickler.materialise(obj, budget)
