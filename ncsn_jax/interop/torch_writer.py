"""Writes PyTorch `.pth` files with NumPy and the standard library only.

The output is what `torch.save` writes by default (the zip serialisation that
`torch_pickle` reads): a stored (uncompressed) zip archive with

  archive/data.pkl            the object, pickled with protocol 2; each
                              tensor is `torch._utils._rebuild_tensor_v2`
                              on a storage named by a persistent id
                              ('storage', torch.<Type>Storage, key, 'cpu',
                              numel)
  archive/.format_version     '1'
  archive/.storage_alignment  '64'
  archive/byteorder           'little'
  archive/data/<key>          the raw little-endian bytes of storage <key>,
                              starting at a multiple of 64 bytes in the file
  archive/version             '3'

Objects may nest dicts (`collections.OrderedDict` stays one), lists, tuples,
str, int, float, bool and None; `np.ndarray` leaves become tensors (one
storage each) and NumPy scalars become Python numbers. The pickle is written
opcode by opcode: it references only the globals `torch.load(...,
weights_only=True)` allows (OrderedDict, the tensor-rebuild function and the
storage types) and no torch is needed to write it.
"""

import collections
import struct
import zipfile
from typing import Any, BinaryIO

import numpy as np

ARCHIVE = 'archive'
ALIGNMENT = 64

# NumPy dtype -> torch storage class (the storage types torch_pickle reads).
_STORAGE_TYPES = {
    np.dtype(np.float32): 'FloatStorage',
    np.dtype(np.float64): 'DoubleStorage',
    np.dtype(np.float16): 'HalfStorage',
    np.dtype(np.int64): 'LongStorage',
    np.dtype(np.int32): 'IntStorage',
    np.dtype(np.int16): 'ShortStorage',
    np.dtype(np.int8): 'CharStorage',
    np.dtype(np.uint8): 'ByteStorage',
    np.dtype(np.bool_): 'BoolStorage',
}


class _Pickler:
  """Protocol-2 opcodes for the few types a checkpoint holds."""

  def __init__(self):
    self.out = bytearray(b'\x80\x02')  # PROTO 2
    self.storages: list[np.ndarray] = []

  def global_(self, module: str, name: str) -> None:
    self.out += b'c' + f'{module}\n{name}\n'.encode('ascii')

  def tuple_(self, items) -> None:
    if not items:
      self.out += b')'  # EMPTY_TUPLE
      return
    self.out += b'('  # MARK
    for item in items:
      self.save(item)
    self.out += b't'  # TUPLE

  def int_(self, value: int) -> None:
    if 0 <= value < 256:
      self.out += b'K' + struct.pack('<B', value)
    elif 0 <= value < 65536:
      self.out += b'M' + struct.pack('<H', value)
    elif -2**31 <= value < 2**31:
      self.out += b'J' + struct.pack('<i', value)
    else:
      n = (value.bit_length() + 8) // 8  # Room for the sign bit.
      self.out += b'\x8a' + struct.pack('<B', n) + value.to_bytes(
          n, 'little', signed=True)

  def str_(self, value: str) -> None:
    data = value.encode('utf-8')
    self.out += b'X' + struct.pack('<I', len(data)) + data

  def tensor(self, array: np.ndarray) -> None:
    """`_rebuild_tensor_v2(storage, 0, size, stride, False, OrderedDict())`."""
    array = np.asarray(array, order='C')  # Keeps 0-d arrays 0-d.
    storage_type = _STORAGE_TYPES.get(array.dtype)
    if storage_type is None:
      raise ValueError(f'cannot write a tensor of dtype {array.dtype}.')
    key = str(len(self.storages))
    self.storages.append(array.astype(array.dtype.newbyteorder('<')))
    self.global_('torch._utils', '_rebuild_tensor_v2')
    self.out += b'(('  # MARK (args), MARK (persistent id)
    self.str_('storage')
    self.global_('torch', storage_type)
    self.str_(key)
    self.str_('cpu')
    self.int_(int(array.size))
    self.out += b'tQ'  # TUPLE, BINPERSID
    self.int_(0)  # storage offset
    self.tuple_([int(n) for n in array.shape])
    self.tuple_([int(s) // array.itemsize for s in array.strides])
    self.out += b'\x89'  # NEWFALSE: requires_grad
    self.global_('collections', 'OrderedDict')
    self.out += b')R'  # backward hooks: OrderedDict()
    self.out += b'tR'  # TUPLE, REDUCE

  def save(self, obj: Any) -> None:
    """Appends the opcodes that rebuild `obj`."""
    if obj is None:
      self.out += b'N'
    elif isinstance(obj, (bool, np.bool_)):
      self.out += b'\x88' if obj else b'\x89'
    elif isinstance(obj, (int, np.integer)):
      self.int_(int(obj))
    elif isinstance(obj, (float, np.floating)):
      self.out += b'G' + struct.pack('>d', float(obj))
    elif isinstance(obj, str):
      self.str_(obj)
    elif isinstance(obj, np.ndarray):
      self.tensor(obj)
    elif isinstance(obj, tuple):
      self.tuple_(obj)
    elif isinstance(obj, list):
      self.out += b']'  # EMPTY_LIST
      if obj:
        self.out += b'('
        for item in obj:
          self.save(item)
        self.out += b'e'  # APPENDS
    elif isinstance(obj, dict):
      if isinstance(obj, collections.OrderedDict):
        self.global_('collections', 'OrderedDict')
        self.out += b')R'
      else:
        self.out += b'}'  # EMPTY_DICT
      if obj:
        self.out += b'('
        for key, value in obj.items():
          self.save(key)
          self.save(value)
        self.out += b'u'  # SETITEMS
    else:
      raise ValueError(
          f'cannot write a {type(obj).__name__} into a .pth file.')


def _write_record(archive: zipfile.ZipFile, f: BinaryIO, name: str,
                  data: bytes) -> None:
  """One stored record whose data start on an ALIGNMENT boundary."""
  info = zipfile.ZipInfo(f'{ARCHIVE}/{name}', date_time=(1980, 1, 1, 0, 0, 0))
  info.compress_type = zipfile.ZIP_STORED
  start = f.tell() + 30 + len(info.filename.encode('utf-8'))
  pad = -(start + 4) % ALIGNMENT  # 4 = the extra field's own header.
  info.extra = struct.pack('<HH', 0x4246, pad) + b'Z' * pad  # 'FB' padding
  archive.writestr(info, data)


def write_pth(f: BinaryIO, obj: Any) -> None:
  """Writes `obj` into the open binary file `f` in torch's zip format.

  Args:
    f: a seekable binary file positioned at its start (e.g. from
      `files.atomic_open`).
    obj: the object to save (see the module docstring for what it may hold).
  """
  pickler = _Pickler()
  pickler.save(obj)
  pickler.out += b'.'  # STOP
  with zipfile.ZipFile(f, 'w', zipfile.ZIP_STORED) as archive:
    _write_record(archive, f, 'data.pkl', bytes(pickler.out))
    _write_record(archive, f, '.format_version', b'1')
    _write_record(archive, f, '.storage_alignment', str(ALIGNMENT).encode())
    _write_record(archive, f, 'byteorder', b'little')
    for key, array in enumerate(pickler.storages):
      _write_record(archive, f, f'data/{key}', array.tobytes())
    _write_record(archive, f, 'version', b'3\n')
