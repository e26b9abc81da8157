"""Exports ncsn_jax checkpoints as official NCSN / NCSNv2 PyTorch checkpoints.

  python run.py --mode=export --config=configs/cifar10_ncsnv2.py \
      --workdir=runs/c10 --checkpoint=runs/c10/checkpoint.pth

writes checkpoint `config.sampling.ckpt_id` (0 = the latest) of the workdir
in the list layout the official runners save and load (see
`official_checkpoint`, which reads it back):

  NCSN v1 (model.name 'ncsn'):  [model_state_dict, optimizer_state_dict]
  NCSNv2 (and Deeper/Deepest):  [model_state_dict, optimizer_state_dict,
                                 epoch, step, ema_shadow]  (no ema_shadow
                                 when config.model.ema is False)

The model state dict has the DataParallel `module.` prefix, the registered
`sigmas` buffer (NCSNv2 only, as in the official models) and the raw
weights, with the official key names (the inverse of
`param_mapping.torch_key_to_flax_path`), the official parameter order
and OIHW conv weights. The EMA shadow has neither prefix nor buffer. The
optimizer state dict is torch's Adam layout: per parameter index (the
position in `model.parameters()`) `step`, `exp_avg`, `exp_avg_sq`, and one
param group with the config's lr, betas, eps, weight_decay and amsgrad.
AMSGrad moments are not written (optax and torch keep different maxima: the
state is left empty, i.e. fresh). ncsn_jax counts no epochs: epoch is 0.
"""

import collections
import os
import re
import struct
from typing import Any, BinaryIO
import zipfile

from absl import logging
import flax
import numpy as np
import optax

from ncsn_jax import checkpoints
from ncsn_jax import errors
from ncsn_jax import outputs
from ncsn_jax.interop import param_mapping
from ncsn_jax.models import score

# Sibling order of the official modules' attributes (registration order,
# which is the order of `state_dict()` and `parameters()`).
_ORDER = {name: i for i, name in enumerate((
    'sigmas', 'begin_conv', 'normalizer', 'end_conv', 'res', 'refine',
    'adapt_convs', 'output_convs', 'msf', 'crp', 'rcu', 'conv1',
    'normalize2', 'conv2', 'shortcut', 'normalize1', 'convs', 'norms',
    'conv', 'embed', 'weight', 'bias', 'alpha', 'gamma', 'beta'))}
_STAGE = re.compile(r'(res|refine)(\d)(\d?)')  # res31 sits after res3.
_RCU = re.compile(r'(\d+)_(\d+)_(norm|conv)')  # CondRCUBlock: norm, conv.
_INDEXED = re.compile(r'(.*[^\d_].*)_(\d+)')  # res1_0 -> res1.0


def _segment_order(segment: str) -> tuple[int, ...]:
  if segment.isdigit():
    return (0, int(segment))
  match = _STAGE.fullmatch(segment)
  if match:
    return (_ORDER[match[1]], int(match[2]), int(match[3] or 0))
  match = _RCU.fullmatch(segment)
  if match:
    return (_ORDER['rcu'], int(match[1]), int(match[2]),
            int(match[3] == 'conv'))
  if segment not in _ORDER:
    raise ValueError(f'no official position known for {segment!r}.')
  return (_ORDER[segment],)


def official_order(key: str) -> tuple[tuple[int, ...], ...]:
  """Sort key putting state-dict keys (no prefix) in the official order."""
  return tuple(_segment_order(s) for s in key.split('.'))


def flax_path_to_torch_key(path: tuple[str, ...]) -> str:
  """`('res1_0', 'conv1', 'kernel')` -> `'res1.0.conv1.weight'`."""
  parts = []
  for name in path[:-1]:
    match = _INDEXED.fullmatch(name)
    parts += [match[1], match[2]] if match else [name]
  leaf = path[-1]
  parts += {'kernel': ['weight'], 'embed': ['embed', 'weight']}.get(
      leaf, [leaf])
  key = '.'.join(parts)
  if param_mapping.torch_key_to_flax_path(key) != tuple(path):
    raise ValueError(f'parameter {"/".join(path)} has no official name.')
  return key


def _to_torch_value(path, value) -> np.ndarray:
  value = np.asarray(value, np.float32)
  if path[-1] == 'kernel':  # HWIO -> OIHW
    value = value.transpose(3, 2, 0, 1)
  return np.asarray(value, order='C')


def flax_to_torch_params(params) -> collections.OrderedDict:
  """Our parameter tree as an official state dict (no prefix), in order."""
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(params))
  named = {flax_path_to_torch_key(p): _to_torch_value(p, v)
           for p, v in flat.items()}
  return collections.OrderedDict(
      (k, named[k]) for k in sorted(named, key=official_order))


def _find_adam(opt_state):
  """The ScaleByAdamState inside an optax chain state, or None."""
  found = []

  def visit(s):
    if isinstance(s, optax.ScaleByAdamState):
      found.append(s)
    elif isinstance(s, tuple):
      for x in s:
        visit(x)

  visit(opt_state)
  return found[0] if found else None


def optimizer_state_dict(config, opt_state, names) -> dict[str, Any]:
  """torch `Adam.state_dict()` of our optax state; `names` in param order."""
  o = config.optim
  group = dict(lr=float(o.lr), betas=(float(o.beta1), 0.999),
               eps=float(o.eps), weight_decay=float(o.weight_decay),
               amsgrad=bool(o.amsgrad), maximize=False, foreach=None,
               capturable=False, differentiable=False, fused=None,
               decoupled_weight_decay=False, params=list(range(len(names))))
  adam = _find_adam(opt_state)
  state = {}
  if adam is not None:
    count = np.asarray(np.asarray(adam.count).item(), np.float32)
    mu, nu = flax_to_torch_params(adam.mu), flax_to_torch_params(adam.nu)
    if int(count) > 0:
      state = {i: dict(step=count, exp_avg=mu[n], exp_avg_sq=nu[n])
               for i, n in enumerate(names)}
  elif o.amsgrad:
    logging.warning('AMSGrad moments are not exported (torch and optax keep '
                    'different maxima): the optimizer state is fresh.')
  return dict(state=state, param_groups=[group])


def official_states(config, state) -> list[Any]:
  """The official checkpoint list of a TrainState (host arrays)."""
  kind = config.model.name
  params = flax_to_torch_params(state.params)
  names = list(params)
  model = collections.OrderedDict()
  if kind != 'ncsn':  # The NCSNv2 models register their sigmas.
    model['module.sigmas'] = np.asarray(score.get_sigmas(config), np.float32)
  model.update((f'module.{k}', v) for k, v in params.items())
  optimizer = optimizer_state_dict(config, state.opt_state, names)
  if kind == 'ncsn':
    if config.model.ema:
      logging.warning('The NCSN v1 layout has no EMA slot: exporting the raw '
                      'weights only.')
    return [model, optimizer]
  states = [model, optimizer, 0, int(np.asarray(state.step))]
  if config.model.ema:
    states.append(flax_to_torch_params(state.ema_params))
  return states


def export_checkpoint(config, workdir: str, path: str,
                      overwrite: bool = False) -> int:
  """Writes a checkpoint of `workdir` to `path` in the official layout.

  Returns:
    The step exported.
  """
  if os.path.exists(path) and not overwrite:
    raise errors.InputError(
        f'{path} already exists; pass --overwrite to replace it.')
  state, step = checkpoints.load_state(config, workdir,
                                       config.sampling.ckpt_id)
  states = official_states(config, state)
  with outputs.atomic_open(path) as f:
    write_pth(f, states)
  logging.info('Exported step %d of %s as %s (%s layout).', step, workdir,
               path, config.model.name)
  return step


# -------- Writes PyTorch `.pth` files with NumPy and the standard library only
#
# The output is what `torch.save` writes by default (the zip serialisation that
# `torch_pickle` reads): a stored (uncompressed) zip archive with
#
#   archive/data.pkl            the object, pickled with protocol 2; each
#                               tensor is `torch._utils._rebuild_tensor_v2`
#                               on a storage named by a persistent id
#                               ('storage', torch.<Type>Storage, key, 'cpu',
#                               numel)
#   archive/.format_version     '1'
#   archive/.storage_alignment  '64'
#   archive/byteorder           'little'
#   archive/data/<key>          the raw little-endian bytes of storage <key>,
#                               starting at a multiple of 64 bytes in the file
#   archive/version             '3'
#
# Objects may nest dicts (`collections.OrderedDict` stays one), lists, tuples,
# str, int, float, bool and None; `np.ndarray` leaves become tensors (one
# storage each) and NumPy scalars become Python numbers. The pickle is written
# opcode by opcode: it references only the globals `torch.load(...,
# weights_only=True)` allows (OrderedDict, the tensor-rebuild function and the
# storage types) and no torch is needed to write it.


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
      `outputs.atomic_open`).
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
