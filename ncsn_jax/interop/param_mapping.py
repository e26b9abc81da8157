"""PyTorch state dicts of the NCSN RefineNets -> our flax parameter trees.

Our flax parameter names mirror the PyTorch attribute names, so the mapping
is mechanical: a DataParallel `module.` prefix is dropped, a purely numeric
key segment joins the previous one with '_' (`res1.0.conv1.weight` ->
`res1_0/conv1/kernel`), conv weights `weight` (O, I, kh, kw) become `kernel`
(kh, kw, I, O), a norm's `embed.weight` table (L, 3C) becomes `embed`
unchanged, and `alpha`, `gamma`, `beta`, `bias` keep name and shape. Every
parameter of the target tree must be filled with the right shape and every
key used; the NCSNv2 `sigmas` buffer is checked against the config's noise
levels and dropped.
"""

from typing import Any, Optional

import flax
import numpy as np

from ncsn_jax import errors

PREFIX = 'module.'
SIGMAS = 'sigmas'
HINT = ('does the config (model.name, ngf, num_classes, data.channels) '
        'match the checkpoint?')


def strip_prefix(key: str) -> str:
  """`key` without leading DataParallel `module.` prefixes."""
  while key.startswith(PREFIX):
    key = key[len(PREFIX):]
  return key


def torch_key_to_flax_path(key: str) -> tuple[str, ...]:
  """Flax parameter path of a PyTorch state-dict key (prefix stripped).

  `res1.0.conv1.weight` -> ('res1_0', 'conv1', 'kernel');
  `refine2.crp.norms.1.embed.weight` -> ('refine2', 'crp', 'norms_1',
  'embed').
  """
  path: list[str] = []
  for part in strip_prefix(key).split('.'):
    if part.isdigit() and path:
      path[-1] = f'{path[-1]}_{part}'
    else:
      path.append(part)
  if path[-1] == 'weight':
    if len(path) > 1 and path[-2] == 'embed':
      path.pop()
    else:
      path[-1] = 'kernel'
  return tuple(path)


def _to_flax_value(key: str, value: Any) -> np.ndarray:
  if not isinstance(value, np.ndarray):
    raise errors.InputError(
        f'checkpoint entry {key!r} is a {type(value).__name__}, '
        'not a tensor.')
  if not (np.issubdtype(value.dtype, np.floating) or
          value.dtype.name == 'bfloat16'):
    raise errors.InputError(
        f'checkpoint entry {key!r} has dtype {value.dtype}, not '
        'a float type.')
  value = np.asarray(value, np.float32)
  if value.ndim == 4:  # Conv weight OIHW -> HWIO; cross-correlation in both.
    value = value.transpose(2, 3, 1, 0)
  return np.ascontiguousarray(value)


def torch_to_flax_params(state_dict, target_params,
                         sigmas: Optional[np.ndarray] = None):
  """Converts a PyTorch model state dict into our parameter tree.

  Args:
    state_dict: mapping of PyTorch keys (with or without `module.`) to
      arrays, e.g. from `torch_pickle.load_pth`.
    target_params: the parameter tree (arrays or `jax.ShapeDtypeStruct`s) of
      the config's model; fixes the structure and shapes.
    sigmas: the config's noise levels; when given, a `sigmas` buffer in the
      state dict must equal them (float32 tolerance). The buffer is dropped.

  Returns:
    A tree like `target_params` of float32 NumPy arrays.

  Raises:
    errors.ConfigError: naming the key, for a wrong sigmas buffer, a shape
      mismatch, a parameter the file lacks or a key the model does not use.
  """
  if not hasattr(state_dict, 'items'):
    raise errors.InputError(f'a model state dict must be a mapping, got '
                     f'{type(state_dict).__name__}.')
  target = flax.traverse_util.flatten_dict(
      flax.core.unfreeze(target_params))
  converted, unused = _convert_entries(state_dict, target, sigmas)
  if unused:
    raise errors.InputError(
        f'checkpoint entry {unused[0]!r} matches no parameter of the model '
        f'({len(unused)} unused entries in all); {HINT}')
  missing = [p for p in target if p not in converted]
  if missing:
    raise errors.InputError(
        f'the checkpoint has no entry for parameter {"/".join(missing[0])} '
        f'({len(missing)} missing in all); {HINT}')
  return flax.traverse_util.unflatten_dict(converted)


def _convert_entries(state_dict, target, sigmas):
  """Maps each state-dict entry onto its flat target path, checking shapes.

  Returns the converted `{path: array}` and the keys no parameter uses.
  """
  converted: dict[tuple[str, ...], np.ndarray] = {}
  sources: dict[tuple[str, ...], str] = {}
  unused = []
  for key, value in state_dict.items():
    if not isinstance(key, str):
      raise errors.InputError(f'state dict key {key!r} is not a string.')
    if strip_prefix(key) == SIGMAS:
      if sigmas is not None:
        check_sigmas(value, sigmas, key)
      continue
    path = torch_key_to_flax_path(key)
    if path in sources:
      raise errors.InputError(
          f'checkpoint keys {sources[path]!r} and {key!r} both '
          f'map to parameter {"/".join(path)}.')
    if path not in target:
      unused.append(key)
      continue
    torch_shape = getattr(value, 'shape', None)
    value = _to_flax_value(key, value)
    want = tuple(target[path].shape)
    if value.shape != want:
      raise errors.InputError(
          f'checkpoint entry {key!r} has shape {tuple(torch_shape)} '
          f'({value.shape} in our layout) but parameter {"/".join(path)} of '
          f'the model has {want}; {HINT}')
    converted[path], sources[path] = value, key
  return converted, unused


def check_sigmas(value, sigmas: np.ndarray, key: str = SIGMAS) -> None:
  """Raises ConfigError unless the checkpoint's sigma buffer is `sigmas`."""
  value = np.asarray(value, np.float64).reshape(-1)
  sigmas = np.asarray(sigmas, np.float64)
  if value.shape != sigmas.shape or not np.allclose(value, sigmas, rtol=1e-6,
                                                    atol=0.0):
    got = (f'{value.size} levels {value[0]:.6g} .. {value[-1]:.6g}'
           if value.size else 'no levels')
    raise errors.InputError(
        f'checkpoint buffer {key!r} ({got}) differs from the config '
        f'(model.num_classes={sigmas.size}, sigma_begin={sigmas[0]:.6g}, '
        f'sigma_end={sigmas[-1]:.6g}, sigma_dist): wrong config for this '
        'checkpoint.')
