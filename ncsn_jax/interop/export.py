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
from typing import Any

from absl import logging
import flax
import jax
import numpy as np
import optax

from ncsn_jax import errors
from ncsn_jax import files
from ncsn_jax import models
from ncsn_jax import noise
from ncsn_jax.interop import param_mapping
from ncsn_jax.interop import torch_writer
from ncsn_jax.training import checkpointing
from ncsn_jax.training import train_state

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
    model['module.sigmas'] = np.asarray(noise.get_sigmas(config), np.float32)
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


def restore_state(config, workdir: str):
  """(TrainState of host arrays, step) of checkpoint sampling.ckpt_id."""
  model = models.create_model(config)
  tx = train_state.create_optimizer(config)
  target = jax.eval_shape(lambda: train_state.create_train_state(
      config, model, tx, jax.random.key(0)))
  directory = os.path.join(workdir, checkpointing.CHECKPOINT_DIR)
  if not os.path.isdir(directory):
    raise errors.CheckpointError(
        f'no checkpoint folder {directory}; train first (--mode=train) or '
        'point --workdir at a run that has checkpoints.')
  manager = checkpointing.create_manager(workdir, create=False)
  try:
    return checkpointing.restore(manager, target, config.sampling.ckpt_id,
                                 config)
  finally:
    manager.close()


def export_checkpoint(config, workdir: str, path: str,
                      overwrite: bool = False) -> int:
  """Writes a checkpoint of `workdir` to `path` in the official layout.

  Returns:
    The step exported.
  """
  if os.path.exists(path) and not overwrite:
    raise errors.ConfigError(
        f'{path} already exists; pass --overwrite to replace it.')
  state, step = restore_state(config, workdir)
  states = official_states(config, state)
  with files.atomic_open(path) as f:
    torch_writer.write_pth(f, states)
  logging.info('Exported step %d of %s as %s (%s layout).', step, workdir,
               path, config.model.name)
  return step
