"""Reads PyTorch files with NumPy only: `.pth` checkpoints and TorchScript.

`torch.save` writes a pickle whose tensors point, through pickle persistent
ids, at raw storages kept outside the pickle. Two layouts exist:

* zip (torch >= 1.6, and every TorchScript archive): `<name>/data.pkl` (the
  pickle), `<name>/data/<key>` (one raw storage per key) and
  `<name>/byteorder` ('little' or 'big'; absent = little) among other small
  records; TorchScript archives also hold `constants.pkl` and code.
* legacy (torch <= 1.5 default), one stream: see `legacy_pth`.

The pickles go through `unpickler.Unpickler` (a whitelist; nothing from the
file runs), their tensors are copied out by `torch_objects.materialise`.
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
import zipfile
import zlib
from typing import Any

import numpy as np

from ncsn_jax import errors
from ncsn_jax.interop import legacy_pth
from ncsn_jax.interop import torch_objects
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
  except errors.ConfigError:
    raise
  except _PARSE_ERRORS as e:
    raise errors.ConfigError(
        f'{where}: not a readable PyTorch file; it is truncated, corrupt or '
        f'not written by torch ({type(e).__name__}: '
        f'{torch_objects.printable(e, 120)}).') from e


def _read_member(archive: zipfile.ZipFile, name: str, nbytes: int,
                 where: str) -> bytearray:
  """Exactly the `nbytes` of member `name`, decompressed chunk by chunk."""
  info = archive.getinfo(name)
  if info.file_size != nbytes:
    state = 'truncated' if info.file_size < nbytes else 'not torch\'s'
    raise errors.ConfigError(
        f'{where}: record {name!r} holds {info.file_size:,} bytes where its '
        f'tensors declare {nbytes:,}; the file is {state}.')
  buf = bytearray(nbytes)
  pos = 0
  with archive.open(info) as f:
    while pos < nbytes:
      chunk = f.read(min(_CHUNK, nbytes - pos))
      if not chunk:
        raise errors.ConfigError(f'{where}: record {name!r} ends after '
                                 f'{pos:,} of {nbytes:,} bytes.')
      buf[pos:pos + len(chunk)] = chunk
      pos += len(chunk)
  return buf


def _read_small(archive: zipfile.ZipFile, name: str, where: str) -> bytes:
  """A pickle or text record, refused past `torch_objects.MAX_PICKLE_BYTES`."""
  info = archive.getinfo(name)
  if info.file_size > torch_objects.MAX_PICKLE_BYTES:
    raise errors.ConfigError(f'{where}: record {name!r} declares '
                             f'{info.file_size:,} bytes, more than any '
                             'PyTorch file\'s pickles.')
  return bytes(_read_member(archive, name, info.file_size, where))


def _zip_byteorder(archive: zipfile.ZipFile, prefix: str, where: str) -> str:
  if prefix + 'byteorder' not in archive.namelist():
    return '<'
  text = _read_small(archive, prefix + 'byteorder', where).decode().strip()
  if text not in ('little', 'big'):
    raise errors.ConfigError(
        f'{where}: unknown byteorder record '
        f'{torch_objects.printable(text)!r}.')
  return '<' if text == 'little' else '>'


def _load_zip(archive: zipfile.ZipFile, record: str, where: str,
              max_bytes: int, torchscript: bool = False) -> Any:
  """The object pickled in `record` of a zip-layout file, tensors copied."""
  prefix = record[:-len('data.pkl')]
  order = _zip_byteorder(archive, prefix, where)
  budget = torch_objects.Budget(where, max_bytes)
  storages: dict[str, torch_objects.Storage] = {}
  names = set(archive.namelist())

  def storage_fn(storage_type, key, numel, unused_view):
    if key in storages:
      return storages[key]
    name = f'{prefix}data/{key}'
    if name not in names:
      raise errors.ConfigError(
          f'{where}: storage record {torch_objects.printable(name)!r} is '
          'missing; the file is truncated or corrupt.')
    dtype = storage_type.dtype.newbyteorder(order)
    budget.declare(numel * dtype.itemsize)
    raw = _read_member(archive, name, numel * dtype.itemsize, where)
    array = np.frombuffer(raw, dtype)
    if not dtype.isnative:
      array = array.byteswap().view(dtype.newbyteorder('='))
    storage = torch_objects.Storage(key, array.dtype, numel, where)
    storage.array = array
    storages[key] = storage
    return storage

  data = _read_small(archive, record, where)
  obj = unpickler.Unpickler(io.BytesIO(data), where, storage_fn,
                            torchscript).load()
  return torch_objects.materialise(obj, budget)


def load_pth(path: str, max_bytes: int) -> Any:
  """Loads a `torch.save` file: dicts / lists / numbers with array leaves.

  Args:
    path: a `.pth` file in the zip or the legacy serialisation.
    max_bytes: the most bytes its storages, and its tensors, may hold.

  Returns:
    The saved object; every tensor is an `np.ndarray` (a copy, native byte
    order, bfloat16 via ml_dtypes).

  Raises:
    errors.ConfigError: one line naming the file, when it is missing, not a
      PyTorch checkpoint, truncated, corrupt, larger than `max_bytes`, or
      pickles anything outside the whitelist.
  """
  if not os.path.isfile(path):
    raise errors.ConfigError(f'checkpoint file {path} does not exist.')
  with _refusals(path):
    if zipfile.is_zipfile(path):
      with zipfile.ZipFile(path) as archive:
        pickles = [n for n in archive.namelist() if n.endswith('data.pkl')]
        if len(pickles) != 1:
          raise errors.ConfigError(
              f'{path}: a zip archive but not a PyTorch checkpoint (found '
              f'{len(pickles)} data.pkl records).')
        return _load_zip(archive, pickles[0], path, max_bytes)
    with open(path, 'rb') as f:
      first = f.read(2)
      if first == b'PK':
        raise errors.ConfigError(f'{path}: a damaged or truncated zip '
                                 'archive, not a readable PyTorch checkpoint.')
      if first[:1] != b'\x80':  # Every torch pickle starts with PROTO.
        raise errors.ConfigError(
            f'{path}: not a PyTorch checkpoint (neither a zip archive nor a '
            'legacy torch pickle).')
      f.seek(0)
      return legacy_pth.load(f, path, max_bytes)


def _collect_tensors(obj, prefix: str, out: dict[str, np.ndarray]) -> None:
  """Walks TorchScript modules depth first: dotted attribute path -> array."""
  for name, value in obj.state.items():
    if isinstance(value, np.ndarray):
      out[prefix + name] = value
    elif isinstance(value, torch_objects.ScriptObject):
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
        raise errors.ConfigError(
            f'{where}: not a TorchScript archive (data.pkl and '
            'constants.pkl expected at its root).')
      root = _load_zip(archive, pickles[0], where, max_bytes, True)
    if not isinstance(root, torch_objects.ScriptObject):
      raise errors.ConfigError(
          f'{where}: the root object of the TorchScript archive is not a '
          'module.')
    out: dict[str, np.ndarray] = {}
    _collect_tensors(root, '', out)
  return out
