"""Imports official NCSN / NCSNv2 PyTorch checkpoints as ncsn_jax checkpoints.

  python run.py --mode=import --config=configs/cifar10_ncsnv2.py \
      --workdir=runs/c10_official --checkpoint=/path/to/checkpoint.pth
  python run.py --mode=sample --config=configs/cifar10_ncsnv2.py \
      --workdir=runs/c10_official

The official runners save a list (read without torch by `torch_pickle`,
bounded by what a checkpoint of the config's model can hold):

  NCSN v1 (AnnealRunner): [model_state_dict, optimizer_state_dict]
  NCSNv2 (NCSNRunner):    [model_state_dict, optimizer_state_dict, epoch,
                           step, ema_shadow]   (ema_shadow only with EMA)

Model keys carry the DataParallel prefix `module.`; the NCSNv2 model dict also
holds the `sigmas` buffer; the EMA shadow has neither. A bare model state
dict is accepted too. `param_mapping` maps the keys onto our parameter tree.

The written TrainState holds the model weights as `params`, the EMA shadow
(when the file has one, else the weights) as `ema_params`, the file's step
(v2; v1 files carry none: the number in a `checkpoint_<N>.pth` file name, else
0, unless `step` is given) and the optimizer state of `config.optim`. Adam's
moments (`exp_avg`, `exp_avg_sq`, `step`) are carried over when the file has
them for every parameter and the config uses plain Adam (not AMSGrad, whose
PyTorch and optax forms keep different maxima); otherwise the optax state is
fresh, as at the start of training.
"""

import math
import os
import re
from typing import Any, Optional

from absl import logging
import jax
import numpy as np
import optax

from ncsn_jax import checkpoints
from ncsn_jax import console
from ncsn_jax import errors
from ncsn_jax import outputs
from ncsn_jax import train_state
from ncsn_jax.interop import param_mapping
from ncsn_jax.interop import torch_pickle
from ncsn_jax.models import score

# A checkpoint holds at most four copies of the parameters (weights, EMA
# shadow, Adam's two moments), at most 8 bytes each, plus small buffers.
_COPIES = 4
_SLACK_BYTES = 1 << 20


def split_official(states) -> dict[str, Any]:
  """The parts of an official checkpoint object.

  Returns:
    dict with 'model' (state dict), 'optimizer' (dict or None), 'epoch' and
    'step' (int or None) and 'ema' (EMA shadow or None), and 'format'
    ('ncsn', 'ncsnv2' or 'state_dict').
  """
  def is_state_dict(obj):
    return hasattr(obj, 'items') and all(
        isinstance(k, str) for k in obj) and all(
            isinstance(v, np.ndarray) for v in obj.values())

  parts = dict(model=None, optimizer=None, epoch=None, step=None, ema=None)
  if is_state_dict(states) and states:
    return dict(parts, model=states, format='state_dict')
  if not isinstance(states, (list, tuple)) or len(states) not in (2, 4, 5):
    kind = (f'a list of {len(states)}' if isinstance(states, (list, tuple))
            else f'a {type(states).__name__}')
    raise errors.InputError(
        f'the checkpoint holds {kind}; expected an official NCSN '
        '[model, optimizer] or NCSNv2 [model, optimizer, epoch, step'
        '(, ema)] list, or a model state dict.')
  if not is_state_dict(states[0]):
    raise errors.InputError(
        'the first item of the checkpoint list is not a model '
        'state dict (a mapping of names to tensors).')
  parts.update(model=states[0],
               optimizer=states[1],
               format='ncsn' if len(states) == 2 else 'ncsnv2')
  if len(states) >= 4:
    for i, name in ((2, 'epoch'), (3, 'step')):
      value = states[i]
      if isinstance(value, np.ndarray) and value.size == 1:
        value = value.item()
      if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise errors.InputError(f'checkpoint list item {i} ({name}) is a '
                         f'{type(value).__name__}, not an integer.')
      parts[name] = int(value)
  if len(states) == 5:
    if not is_state_dict(states[4]):
      raise errors.InputError('checkpoint list item 4 (EMA shadow) is not a '
                       'mapping of names to tensors.')
    parts['ema'] = states[4]
  return parts


def _adam_moments(optimizer, model_sd, target_params):
  """(count, mu, nu) from a torch Adam state dict, or None (with a reason)."""
  if not isinstance(optimizer, dict) or not isinstance(
      optimizer.get('param_groups'), list):
    return None, 'no optimizer state dict in the file'
  state = optimizer.get('state') or {}
  if not state:
    return None, 'the optimizer state in the file is empty'
  groups = optimizer['param_groups']
  if any(g.get('amsgrad') for g in groups if isinstance(g, dict)):
    return None, 'the file was trained with AMSGrad'
  ids = [i for g in groups if isinstance(g, dict)
         for i in g.get('params', [])]
  names = [k for k in model_sd
           if param_mapping.strip_prefix(k) != param_mapping.SIGMAS]
  if len(ids) != len(names):
    return None, (f'the optimizer lists {len(ids)} parameters, the model '
                  f'{len(names)}')
  steps, mu_sd, nu_sd = set(), {}, {}
  for i, name in zip(ids, names):
    entry = state.get(i)
    if not isinstance(entry, dict) or not {'step', 'exp_avg',
                                           'exp_avg_sq'} <= set(entry):
      return None, f'no Adam moments for parameter {name!r}'
    steps.add(int(np.asarray(entry['step']).item()))
    mu_sd[name], nu_sd[name] = entry['exp_avg'], entry['exp_avg_sq']
  if len(steps) != 1:
    return None, f'the parameters have different Adam steps {sorted(steps)}'
  try:
    mu = param_mapping.torch_to_flax_params(mu_sd, target_params)
    nu = param_mapping.torch_to_flax_params(nu_sd, target_params)
  except ValueError as e:
    raise errors.InputError(f'optimizer state: {e}') from e
  return (steps.pop(), mu, nu), ''


def _set_adam_state(opt_state, count: int, mu, nu):
  """`opt_state` with its Adam moments and step counters replaced."""
  found = []

  def fix(s):
    if isinstance(s, optax.ScaleByAdamState):
      found.append(s)
      return s._replace(count=np.asarray(count, np.int32), mu=mu, nu=nu)
    if isinstance(s, optax.ScaleByScheduleState):
      return s._replace(count=np.asarray(count, np.int32))
    if isinstance(s, tuple) and hasattr(s, '_fields'):  # Wrapper states.
      return s._replace(**{f: fix(getattr(s, f)) for f in s._fields})
    if isinstance(s, tuple):  # optax.chain
      return tuple(fix(x) for x in s)
    return s

  new = fix(opt_state)
  return new if found else None


def _step_from_name(path: str) -> Optional[int]:
  match = re.fullmatch(r'checkpoint_(\d+)\.pth', os.path.basename(path))
  return int(match.group(1)) if match else None


def max_checkpoint_bytes(params) -> int:
  """The most bytes an official checkpoint of a parameter tree can hold."""
  count = sum(math.prod(p.shape) for p in jax.tree.leaves(params))
  return _COPIES * 8 * count + _SLACK_BYTES


def read_checkpoint(config, path: str) -> Any:
  """`torch_pickle.load_pth` of `path`, bounded by the config's model.

  The file's tensor shapes are compared with the config's model before any
  storage is read, so a checkpoint of another model (larger or smaller) is
  named as such, not as a file too large to be a checkpoint of this one.
  """
  abstract = train_state.abstract_train_state(config)

  def check_shapes(shapes):  # Values are zeros here: shapes only.
    _convert_params(split_official(shapes), abstract.params, None)

  return torch_pickle.load_pth(path, max_checkpoint_bytes(abstract.params),
                               check_shapes)


def _convert_params(parts, target, sigmas):
  """(params, ema_params) of `split_official`'s parts."""
  params = param_mapping.torch_to_flax_params(parts['model'], target, sigmas)
  if parts['ema'] is None:
    return params, params
  try:
    return params, param_mapping.torch_to_flax_params(parts['ema'], target,
                                                      sigmas)
  except ValueError as e:
    raise errors.InputError(f'EMA shadow: {e}') from e


def convert(config, states, step: Optional[int] = None, path: str = ''):
  """Builds our TrainState from a loaded official checkpoint object.

  Args:
    config: the experiment config whose model the checkpoint holds.
    states: the object `read_checkpoint` returned.
    step: the step to record; default the file's (v2), else the number in a
      `checkpoint_<N>.pth` name of `path`, else 0.
    path: the file the object came from (messages, step from the name).

  Returns:
    (train_state.TrainState of host arrays, info dict: format, step, ema
    (bool), adam ('imported' or why fresh)).
  """
  tx = train_state.create_optimizer(config)
  abstract = train_state.abstract_train_state(config)
  parts = split_official(states)
  params, ema_params = _convert_params(parts, abstract.params,
                                       score.get_sigmas(config))
  for candidate in (step, parts['step'], _step_from_name(path), 0):
    if candidate is not None:
      step = candidate
      break
  if step < 0:
    raise errors.InputError(f'step {step} must be >= 0.')
  opt_state = tx.init(params)
  moments, adam = _adam_moments(parts['optimizer'], parts['model'],
                                abstract.params)
  if moments is not None:
    new = _set_adam_state(opt_state, *moments)
    if new is None:
      adam = 'the config does not use plain Adam (optim.amsgrad)'
    else:
      opt_state, adam = new, 'imported'
  state = train_state.TrainState(
      step=np.asarray(step, np.int32), params=params, opt_state=opt_state,
      ema_params=ema_params)
  info = dict(format=parts['format'], step=int(step),
              ema=parts['ema'] is not None, adam=adam, epoch=parts['epoch'])
  return state, info


def import_checkpoint(config, workdir: str, path: str,
                      step: Optional[int] = None) -> int:
  """Converts the official checkpoint `path` into a checkpoint of `workdir`.

  Afterwards `run.py --mode=sample|eval --config=CONFIG --workdir=WORKDIR`
  use it (the EMA weights when config.model.ema and the file has them).

  Returns:
    The step of the written checkpoint.
  """
  # Stages: read the .pth, convert it, write the checkpoint.
  with console.Progress(3, 'import', unit='stages') as bar:
    states = read_checkpoint(config, path)
    bar.update()
    state, info = convert(config, states, step, path)
    bar.update()
    outputs.check_writable(
        os.path.join(workdir, checkpoints.CHECKPOINT_DIR), '--workdir')
    manager = checkpoints.create_manager(workdir)
    try:
      if info['step'] in manager.all_steps():
        raise errors.ConfigError(
            f'{os.path.join(workdir, checkpoints.CHECKPOINT_DIR)} already '
            f'has a checkpoint at step {info["step"]}; import into another '
            '--workdir or choose another step.')
      # No input position: a run resumed from it says it is not exact.
      checkpoints.save(manager, info['step'], state, config)
    finally:
      manager.close()
    bar.update()
  logging.info('Imported %s (%s layout, EMA shadow: %s, Adam state: %s) as '
               'step %d of %s.', path, info['format'],
               'yes' if info['ema'] else 'no', info['adam'], info['step'],
               workdir)
  if info['ema'] and not config.model.ema:
    logging.warning('config.model.ema is False: sample/eval will use the raw '
                    'weights, not the EMA shadow the authors evaluated.')
  return info['step']
