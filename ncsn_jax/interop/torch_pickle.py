"""Reads PyTorch `.pth` files with NumPy only: no torch, no arbitrary code.

`torch.save` writes a pickle whose tensors point, through pickle persistent
ids, at raw storages kept outside the pickle. Two layouts exist:

* zip (torch >= 1.6): a zip archive `<name>/data.pkl` (the pickle),
  `<name>/data/<key>` (one raw storage per key) and `<name>/byteorder`
  ('little' or 'big'; absent = little) among other small records.
* legacy (torch <= 1.5 default, `_use_new_zipfile_serialization=False`):
  five things in a row in one stream -- pickled magic number, pickled
  protocol version, pickled sys-info dict, the main pickle, the pickled list
  of storage keys -- then, per key in that order, an int64 element count
  followed by the storage's raw bytes.

The unpickler resolves globals from a strict whitelist (OrderedDict, the
tensor-rebuild functions, the storage types); any other global raises
ValueError naming it, so a crafted file cannot run code. Tensors come back as
NumPy arrays (a copy, native byte order) with their size, stride and offset.
"""

import collections
import io
import os
import pickle
import struct
import zipfile
from typing import Any, Callable, Optional

import numpy as np

from ncsn_jax import errors

LEGACY_MAGIC = 0x1950a86a20f9469cfc6c
LEGACY_PROTOCOL = 1001


def _bfloat16():
  try:
    import ml_dtypes  # pylint: disable=g-import-not-at-top  (ships with jax)
  except ImportError as e:
    raise ValueError('bfloat16 tensors need the ml_dtypes package.') from e
  return np.dtype(ml_dtypes.bfloat16)


# torch storage class -> NumPy dtype (a callable for lazily found dtypes).
_STORAGE_DTYPES: dict[str, Any] = {
    'DoubleStorage': np.float64,
    'FloatStorage': np.float32,
    'HalfStorage': np.float16,
    'BFloat16Storage': _bfloat16,
    'LongStorage': np.int64,
    'IntStorage': np.int32,
    'ShortStorage': np.int16,
    'CharStorage': np.int8,
    'ByteStorage': np.uint8,
    'BoolStorage': np.bool_,
    'ComplexFloatStorage': np.complex64,
    'ComplexDoubleStorage': np.complex128,
    'UntypedStorage': np.uint8,
}


class _StorageType:
  """Stand-in for a torch storage class: only knows its dtype."""

  def __init__(self, name: str):
    self.name = name
    dtype = _STORAGE_DTYPES[name]
    self.dtype = np.dtype(dtype() if callable(dtype) and not isinstance(
        dtype, type) else dtype)

  def __repr__(self):
    return f'torch.{self.name}'


class _Storage:
  """A storage: the flat array once read, plus where it came from."""

  def __init__(self, key: str, dtype: np.dtype, numel: Optional[int]):
    self.key, self.dtype, self.numel = key, dtype, numel
    self.array: Optional[np.ndarray] = None


def _rebuild_tensor(storage, storage_offset, size, stride, *unused):
  """`torch._utils._rebuild_tensor(_v2)`: a strided view, copied."""
  if not isinstance(storage, _Storage):
    raise errors.ConfigError(
        f'tensor built on {type(storage).__name__}, not on a '
        'storage: not a checkpoint this reader understands.')
  if storage.array is None:  # Legacy first pass: data not read yet.
    return None
  flat = storage.array
  size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
  offset = int(storage_offset)
  if len(size) != len(stride) or offset < 0 or min(size + stride,
                                                   default=0) < 0:
    raise errors.ConfigError(
        f'tensor on storage {storage.key!r} has an invalid '
        f'layout (size {size}, stride {stride}, offset {offset}).')
  if 0 in size:
    return np.zeros(size, flat.dtype)
  last = offset + sum((n - 1) * s for n, s in zip(size, stride))
  if last >= flat.size:
    raise errors.ConfigError(
        f'tensor (size {size}, stride {stride}, offset {offset}) reaches '
        f'element {last} of storage {storage.key!r} which has {flat.size}: '
        'the file is truncated or corrupt.')
  view = np.lib.stride_tricks.as_strided(
      flat[offset:], shape=size,
      strides=tuple(s * flat.itemsize for s in stride), writeable=False)
  return np.array(view, copy=True, order='C')


def _rebuild_parameter(data, requires_grad, backward_hooks, *unused):
  del requires_grad, backward_hooks
  return data


# (module, name) -> object handed to the unpickler.
_SAFE_GLOBALS: dict[tuple[str, str], Any] = {
    ('collections', 'OrderedDict'): collections.OrderedDict,
    ('torch._utils', '_rebuild_tensor'): _rebuild_tensor,
    ('torch._utils', '_rebuild_tensor_v2'): _rebuild_tensor,
    ('torch._utils', '_rebuild_parameter'): _rebuild_parameter,
}
for _name in _STORAGE_DTYPES:
  _SAFE_GLOBALS[('torch', _name)] = _name
_SAFE_GLOBALS[('torch.storage', 'UntypedStorage')] = 'UntypedStorage'
_SAFE_GLOBALS[('torch.storage', 'TypedStorage')] = 'TypedStorage'


class _Unpickler(pickle.Unpickler):
  """Whitelisting unpickler; `storage_fn(pid)` answers persistent ids."""

  def __init__(self, file, where: str,
               storage_fn: Optional[Callable[[tuple], _Storage]] = None):
    super().__init__(file)
    self._where = where
    self._storage_fn = storage_fn

  def find_class(self, module, name):
    obj = _SAFE_GLOBALS.get((module, name))
    if obj is None:
      raise errors.ConfigError(
          f'{self._where}: refusing to load global {module}.{name}: it is '
          'not a tensor, storage or container a model checkpoint needs '
          '(nothing from the file was run).')
    if isinstance(obj, str):
      if obj == 'TypedStorage':
        raise errors.ConfigError(
            f'{self._where}: a bare torch.storage.TypedStorage '
            'is not supported.')
      return _StorageType(obj)
    return obj

  def persistent_load(self, pid):
    if self._storage_fn is None:
      raise errors.ConfigError(f'{self._where}: unexpected persistent id in a '
                               'header pickle.')
    if not (isinstance(pid, tuple) and pid and pid[0] == 'storage'):
      raise errors.ConfigError(
          f'{self._where}: unknown persistent id {pid!r:.80}.')
    return self._storage_fn(pid)


def _storage_pid(pid: tuple, where: str):
  """(storage type, key, numel, view) of a persistent id."""
  if len(pid) < 5 or not isinstance(pid[1], _StorageType):
    raise errors.ConfigError(f'{where}: malformed storage id {pid!r:.120}.')
  _, storage_type, key, _, numel = pid[:5]
  view = pid[5] if len(pid) > 5 else None
  return storage_type, str(key), int(numel), view


def _load_zip(path: str) -> Any:
  with zipfile.ZipFile(path) as archive:
    names = archive.namelist()
    pickles = [n for n in names if n.endswith('data.pkl')]
    if len(pickles) != 1:
      raise errors.ConfigError(
          f'{path}: a zip archive but not a PyTorch checkpoint '
          f'(found {len(pickles)} data.pkl records).')
    prefix = pickles[0][:-len('data.pkl')]
    order = '<'
    if prefix + 'byteorder' in names:
      text = archive.read(prefix + 'byteorder').decode().strip()
      if text not in ('little', 'big'):
        raise errors.ConfigError(f'{path}: unknown byteorder record {text!r}.')
      order = '<' if text == 'little' else '>'
    cache: dict[str, _Storage] = {}

    def storage_fn(pid):
      storage_type, key, numel, _ = _storage_pid(pid, path)
      if key in cache:
        return cache[key]
      record = f'{prefix}data/{key}'
      if record not in names:
        raise errors.ConfigError(
            f'{path}: storage record {record!r} is missing: '
            'the file is truncated or corrupt.')
      raw = archive.read(record)
      dtype = storage_type.dtype.newbyteorder(order)
      if storage_type.name == 'UntypedStorage':
        dtype = np.dtype(np.uint8)
      if len(raw) < numel * dtype.itemsize:
        raise errors.ConfigError(
            f'{path}: storage {record!r} holds {len(raw)} bytes, '
            f'{numel * dtype.itemsize} expected: the file is truncated.')
      storage = _Storage(key, dtype, numel)
      storage.array = np.frombuffer(raw, dtype, count=numel).astype(
          dtype.newbyteorder('='))
      cache[key] = storage
      return storage

    return _Unpickler(io.BytesIO(archive.read(pickles[0])), path,
                      storage_fn).load()


def _load_legacy(path: str, f) -> Any:
  header = _Unpickler(f, path)
  magic = header.load()
  if magic != LEGACY_MAGIC:
    raise errors.ConfigError(
        f'{path}: not a PyTorch checkpoint (bad magic number).')
  protocol = header.load()
  if protocol != LEGACY_PROTOCOL:
    raise errors.ConfigError(
        f'{path}: unsupported legacy protocol {protocol!r}.')
  sys_info = header.load()
  order = '<'
  if isinstance(sys_info, dict) and not sys_info.get('little_endian', True):
    order = '>'
  start = f.tell()
  file_size = os.fstat(f.fileno()).st_size

  # Pass 1 learns each storage's dtype; the data follow the pickle.
  storages: dict[str, _Storage] = {}
  views: dict[str, tuple[str, int, int]] = {}

  def storage_fn(pid):
    storage_type, key, numel, view = _storage_pid(pid, path)
    if key not in storages:
      storages[key] = _Storage(key, storage_type.dtype, numel)
    if view is not None:
      view_key, offset, view_size = view
      views[str(view_key)] = (key, int(offset), int(view_size))
      return storages.setdefault(str(view_key), _Storage(
          str(view_key), storage_type.dtype, int(view_size)))
    return storages[key]

  _Unpickler(f, path, storage_fn).load()
  keys = _Unpickler(f, path).load()
  if not isinstance(keys, list):
    raise errors.ConfigError(f'{path}: malformed storage key list.')
  for key in keys:
    storage = storages.get(str(key))
    if storage is None:
      raise errors.ConfigError(
          f'{path}: storage {key!r} is listed but no tensor '
          'uses it.')
    count = f.read(8)
    if len(count) != 8:
      raise errors.ConfigError(f'{path}: truncated before storage {key!r}.')
    (numel,) = struct.unpack(order + 'q', count)
    dtype = storage.dtype.newbyteorder(order)
    if numel < 0 or numel * dtype.itemsize > file_size - f.tell():
      raise errors.ConfigError(f'{path}: storage {key!r} is truncated ({numel} '
                       'elements announced, fewer in the file).')
    raw = f.read(numel * dtype.itemsize)
    if len(raw) != numel * dtype.itemsize:
      raise errors.ConfigError(
          f'{path}: storage {key!r} is truncated ({len(raw)} '
          f'of {numel * dtype.itemsize} bytes).')
    storage.array = np.frombuffer(raw, dtype).astype(dtype.newbyteorder('='))
  for view_key, (root, offset, size) in views.items():
    base = storages[root].array
    if base is None or offset + size > base.size:
      raise errors.ConfigError(
          f'{path}: storage view {view_key!r} is out of range.')
    storages[view_key].array = base[offset:offset + size]
  missing = [k for k, s in storages.items() if s.array is None]
  if missing:
    raise errors.ConfigError(
        f'{path}: storage data missing for keys {missing[:5]}: '
        'the file is truncated or corrupt.')

  # Pass 2 rebuilds the object with the data in hand.
  f.seek(start)
  return _Unpickler(f, path, lambda pid: storages[
      str(pid[5][0] if len(pid) > 5 and pid[5] else pid[2])]).load()


def load_pth(path: str) -> Any:
  """Loads a `torch.save` file: dicts / lists / numbers with array leaves.

  Args:
    path: a `.pth` file in the zip or the legacy serialisation.

  Returns:
    The saved object; every tensor is an `np.ndarray` (a copy, native byte
    order, bfloat16 via ml_dtypes).

  Raises:
    ValueError: naming the file, when it is missing, not a PyTorch
      checkpoint, truncated, or pickles a global outside the whitelist.
  """
  if not os.path.isfile(path):
    raise errors.ConfigError(f'checkpoint file {path} does not exist.')
  try:
    if zipfile.is_zipfile(path):
      return _load_zip(path)
    with open(path, 'rb') as f:
      first = f.read(2)
      if first == b'PK':
        raise errors.ConfigError(
            f'{path}: a damaged or truncated zip archive, not '
            'a readable PyTorch checkpoint.')
      if first[:1] != b'\x80':  # Every torch pickle starts with PROTO.
        raise errors.ConfigError(
            f'{path}: not a PyTorch checkpoint (neither a zip '
            'archive nor a legacy torch pickle).')
      f.seek(0)
      return _load_legacy(path, f)
  except ValueError:
    raise
  except (pickle.UnpicklingError, EOFError, zipfile.BadZipFile, KeyError,
          IndexError, TypeError, AttributeError, struct.error,
          UnicodeDecodeError, OverflowError, MemoryError) as e:
    raise errors.ConfigError(
        f'{path}: not a readable PyTorch checkpoint; it is '
        f'truncated or corrupt ({type(e).__name__}: '
        f'{str(e)[:120]}).') from e
