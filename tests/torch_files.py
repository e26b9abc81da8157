"""Hand-made PyTorch files for reader tests: pickle opcodes, no torch.

Pickles are written opcode by opcode (protocol 2), so tests can build what
`torch.save` writes and what it never would: unknown globals, calls of
storage types, BUILD on tensors, stride-0 views, huge declared sizes.
"""

import io
import pickle
import struct
import zipfile

import numpy as np

from ncsn_jax.interop import torch_pickle

MARK, TUPLE, EMPTY_TUPLE = b'(', b't', b')'
REDUCE, BUILD, NEWOBJ, BINPERSID = b'R', b'b', b'\x81', b'Q'
EMPTY_DICT, SETITEMS, EMPTY_LIST, APPENDS = b'}', b'u', b']', b'e'
FALSE, TRUE = b'\x89', b'\x88'


def global_(module: str, name: str) -> bytes:
  return b'c' + f'{module}\n{name}\n'.encode()


def string(s: str) -> bytes:
  b = s.encode()
  return b'X' + struct.pack('<I', len(b)) + b


def integer(i: int) -> bytes:
  if -2**31 <= i < 2**31:
    return b'J' + struct.pack('<i', i)
  data = i.to_bytes((i.bit_length() + 8) // 8, 'little', signed=True)
  return b'\x8a' + bytes([len(data)]) + data


def tuple_(items) -> bytes:
  return MARK + b''.join(items) + TUPLE


def dict_(pairs: dict) -> bytes:
  """A dict of already-encoded values, str keys."""
  return EMPTY_DICT + MARK + b''.join(
      string(k) + v for k, v in pairs.items()) + SETITEMS


def list_(items) -> bytes:
  return EMPTY_LIST + MARK + b''.join(items) + APPENDS


def ordered_dict() -> bytes:
  return global_('collections', 'OrderedDict') + EMPTY_TUPLE + REDUCE


def storage(key: str, numel: int, kind: str = 'FloatStorage',
            legacy: bool = False, view=None) -> bytes:
  """A storage persistent id (zip layout: 5 items; legacy: + the view)."""
  items = [string('storage'), global_('torch', kind), string(key),
           string('cpu'), integer(numel)]
  if legacy:
    items.append(b'N' if view is None else tuple_(
        [string(view[0]), integer(view[1]), integer(view[2])]))
  return tuple_(items) + BINPERSID


def tensor(key: str, numel: int, offset: int, size, stride,
           legacy: bool = False) -> bytes:
  """`_rebuild_tensor_v2(storage, offset, size, stride, False, {})`."""
  args = tuple_([storage(key, numel, legacy=legacy),
                 integer(offset), tuple_(map(integer, size)),
                 tuple_(map(integer, stride)), FALSE, ordered_dict()])
  return global_('torch._utils', '_rebuild_tensor_v2') + args + REDUCE


def module(cls: str, attrs: dict) -> bytes:
  """A TorchScript module object: NEWOBJ of its class, BUILD of its dict."""
  mod, name = cls.rsplit('.', 1)
  return global_(mod, name) + EMPTY_TUPLE + NEWOBJ + dict_(attrs) + BUILD


def pickled(body: bytes) -> bytes:
  return b'\x80\x02' + body + b'.'


def zip_archive(body: bytes, storages: dict, prefix: str = 'archive',
                torchscript: bool = False) -> bytes:
  """A zip-layout file; `storages` maps keys to arrays or raw bytes."""
  buf = io.BytesIO()
  with zipfile.ZipFile(buf, 'w') as z:
    z.writestr(f'{prefix}/data.pkl', pickled(body))
    z.writestr(f'{prefix}/byteorder', 'little')
    if torchscript:
      z.writestr(f'{prefix}/constants.pkl', pickled(EMPTY_TUPLE))
      z.writestr(f'{prefix}/code/__torch__/m.py', 'class M(Module): ...')
    for key, data in storages.items():
      if isinstance(data, np.ndarray):
        data = np.ascontiguousarray(data, data.dtype.newbyteorder('<'))
        data = data.tobytes()
      z.writestr(f'{prefix}/data/{key}', data)
  return buf.getvalue()


def legacy_header() -> bytes:
  """Magic number, protocol and sys info of the legacy layout, pickled."""
  return b''.join(
      pickle.dumps(x, protocol=2)
      for x in (torch_pickle.LEGACY_MAGIC, torch_pickle.LEGACY_PROTOCOL,
                {'little_endian': True}))


def legacy_file(body: bytes, storages: dict) -> bytes:
  """A legacy-layout file; `storages` maps keys to arrays (in that order)."""
  out = [legacy_header(), pickled(body),
         pickled(list_([string(k) for k in storages]))]
  for array in storages.values():
    out.append(struct.pack('<q', array.size) +
               np.ascontiguousarray(array, array.dtype.newbyteorder('<'))
               .tobytes())
  return b''.join(out)


def write(path: str, data: bytes) -> str:
  with open(path, 'wb') as f:
    f.write(data)
  return path
