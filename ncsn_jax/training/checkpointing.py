"""Checkpoints: orbax for the train state, tf.data state for the input stream.

The train state is saved by an orbax `CheckpointManager` under
`WORKDIR/checkpoints/<step>`; orbax writes each step to a temporary folder
and renames it when complete, so a save that dies half-way is never taken as
a checkpoint. The training-data iterator of each process is saved beside it
(`WORKDIR/data_state/process_<i>/step_<k>`, written to a temporary folder and
renamed), so a resumed run sees exactly the batches an uninterrupted run
would have seen. `load_params` gives sample and eval modes the (EMA)
parameters of a checkpoint.
"""

import os
import shutil
from typing import Any

from absl import logging
import jax
import orbax.checkpoint as ocp
import tensorflow as tf

from ncsn_jax import errors
from ncsn_jax import models
from ncsn_jax.training import train_state

CHECKPOINT_DIR = 'checkpoints'
DATA_STATE_DIR = 'data_state'
_DATA_STATES_KEPT = 2


def create_manager(workdir: str, keep: int = 0,
                   create: bool = True) -> ocp.CheckpointManager:
  """Orbax manager of `WORKDIR/checkpoints`; `keep=0` keeps every step."""
  directory = os.path.abspath(os.path.join(workdir, CHECKPOINT_DIR))
  options = ocp.CheckpointManagerOptions(
      max_to_keep=keep or None, create=create,
      enable_async_checkpointing=False)
  return ocp.CheckpointManager(directory, options=options)


def save(manager: ocp.CheckpointManager, step: int, state: Any) -> None:
  """Saves a host copy of `state` as checkpoint `step` (all processes call)."""
  manager.save(step, args=ocp.args.StandardSave(jax.device_get(state)),
               force=True)
  manager.wait_until_finished()


def resolve_step(manager: ocp.CheckpointManager, step: int = 0) -> int:
  """`step`, or the latest step when 0; raises CheckpointError if absent."""
  steps = manager.all_steps()
  where = manager.directory
  if not steps:
    raise errors.CheckpointError(
        f'no checkpoint in {where}; train first (--mode=train) or point '
        '--workdir at a run that has checkpoints.')
  if step == 0:
    return max(steps)
  if step not in steps:
    raise errors.CheckpointError(
        f'checkpoint step {step} not found in {where} (have '
        f'{sorted(steps)}); set the ckpt_id config field to one of them.')
  return step


def restore(manager: ocp.CheckpointManager, target: Any, step: int = 0):
  """Restores checkpoint `step` (0 = latest) into the structure of `target`.

  Returns:
    (restored state as host arrays, the step restored).
  """
  step = resolve_step(manager, step)
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
  try:
    state = manager.restore(step, args=ocp.args.StandardRestore(abstract))
  except Exception as e:  # orbax raises many types for damaged files.
    path = os.path.join(str(manager.directory), str(step))
    raise errors.CheckpointError(
        f'checkpoint {path} is unreadable or does not match this config '
        f'({type(e).__name__}: {str(e)[:200]}); delete that folder to fall '
        'back to the previous checkpoint, or check the config.') from e
  return state, step


def _data_state_dir(workdir: str) -> str:
  return os.path.join(workdir, DATA_STATE_DIR,
                      f'process_{jax.process_index()}')


def save_data_iterator(workdir: str, step: int, iterator) -> None:
  """Saves a tf.data iterator's position next to checkpoint `step`."""
  root = _data_state_dir(workdir)
  final = os.path.join(root, f'step_{step}')
  tmp = final + '.tmp'
  shutil.rmtree(tmp, ignore_errors=True)
  try:
    tf.train.Checkpoint(iterator=iterator).write(os.path.join(tmp, 'data'))
  except (tf.errors.OpError, ValueError, TypeError) as e:
    logging.warning('input pipeline state not saved (%s); a resumed run '
                    'will see a fresh shuffle.', e)
    shutil.rmtree(tmp, ignore_errors=True)
    return
  shutil.rmtree(final, ignore_errors=True)
  os.replace(tmp, final)
  kept = sorted((d for d in os.listdir(root) if d.startswith('step_') and
                 not d.endswith('.tmp')), key=lambda d: int(d[5:]))
  for old in kept[:-_DATA_STATES_KEPT]:
    shutil.rmtree(os.path.join(root, old), ignore_errors=True)


def restore_data_iterator(workdir: str, step: int, iterator) -> bool:
  """Moves `iterator` to where it was at checkpoint `step`, if saved."""
  path = os.path.join(_data_state_dir(workdir), f'step_{step}', 'data')
  if not tf.io.gfile.exists(path + '.index'):
    logging.warning('no input pipeline state for step %d; the resumed run '
                    'sees a fresh shuffle of the data.', step)
    return False
  tf.train.Checkpoint(iterator=iterator).read(path).assert_consumed()
  return True


def load_params(config, workdir: str, step: int = 0, ema: bool = True):
  """Parameters of checkpoint `step` (0 = latest) in `workdir`.

  Returns:
    (model, params: the EMA parameters when `ema` and config.model.ema, the
    step restored).
  """
  model = models.create_model(config)
  tx = train_state.create_optimizer(config)
  target = jax.eval_shape(lambda: train_state.create_train_state(
      config, model, tx, jax.random.key(0)))
  directory = os.path.join(workdir, CHECKPOINT_DIR)
  if not os.path.isdir(directory):
    raise errors.CheckpointError(
        f'no checkpoint folder {directory}; train first (--mode=train) or '
        'point --workdir at a run that has checkpoints.')
  manager = create_manager(workdir, create=False)
  state, step = restore(manager, target, step)
  params = state.ema_params if ema and config.model.ema else state.params
  return model, params, step
