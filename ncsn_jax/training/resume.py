"""Resuming a training run: train state, input position, metrics, exactness.

`resume` restores the latest checkpoint (or `config.training.resume_step`,
after moving the later ones aside), moves the input iterators to the
position saved with it, and drops `metrics.jsonl` records written after it.
A checkpoint without an input position continues from a fresh shuffle and
counts as an inexact resume, which the run then reports.
"""

import json
import os
from typing import Any

from absl import logging
from jax.experimental import multihost_utils

from ncsn_jax import errors
from ncsn_jax import files
from ncsn_jax.training import checkpointing
from ncsn_jax.training import outputs

SET_ASIDE_DIR = 'checkpoints_set_aside'


def _set_aside_later(manager, workdir: str, step: int, is_main: bool):
  """Moves checkpoints after `step` to WORKDIR/checkpoints_set_aside/."""
  steps = sorted(manager.all_steps())
  if step not in steps:
    raise errors.ConfigError(
        f'config.training.resume_step={step} is not a checkpoint of '
        f'{manager.directory} (have {steps}).')
  later = [s for s in steps if s > step]
  if later and is_main:
    aside = os.path.join(workdir, SET_ASIDE_DIR)
    os.makedirs(aside, exist_ok=True)
    for s in later:
      target = os.path.join(aside, str(s))
      while os.path.exists(target):
        target += '_'
      os.replace(checkpointing.step_dir(manager, s), target)
    logging.warning(
        'config.training.resume_step=%d: moved the later '
        'checkpoints %s to %s.', step, later, aside)
  multihost_utils.sync_global_devices('ncsn_jax_set_aside')
  manager.reload()


def truncate_metrics(workdir: str, step: int) -> None:
  """Drops `metrics.jsonl` records after `step` (written after its save)."""
  path = os.path.join(workdir, outputs.METRICS_FILE)
  if not os.path.exists(path):
    return
  with open(path) as f:
    lines = [l for l in f if l.strip()]
  kept = [l for l in lines if json.loads(l).get('step', 0) <= step]
  if len(kept) != len(lines):
    files.save_text(path, ''.join(kept))


def resume(manager, workdir: str, config, state, datasets: dict, iters: dict,
           is_main: bool) -> tuple[Any, int]:
  """Restores the run's checkpoint into `state` and `iters` (in place).

  Returns:
    (state, inexact_resumes: this run's resumes without an input position,
    this one included).
  """
  want = config.training.resume_step
  if want:
    _set_aside_later(manager, workdir, want, is_main)
  state, start = checkpointing.restore(manager, state, want, config)
  meta = checkpointing.read_meta(manager, start) or {}
  inexact = int(meta.get('inexact_resumes', 0))
  record = checkpointing.restore_data(manager, workdir, start, iters)
  if not record or 'train' not in record:
    inexact += 1
    logging.warning(
        'Checkpoint %s has no input-pipeline position (imported or older '
        'checkpoint): continuing from a freshly shuffled pipeline, so this '
        'run will not match an uninterrupted one.',
        checkpointing.step_dir(manager, start))
  else:
    for name, entry in record.items():
      if not entry['tf_data'] and name in datasets:
        iters[name] = iter(datasets[name].skip(entry['batches']))
  if is_main:
    truncate_metrics(workdir, start)
  logging.info('Resumed from checkpoint step %d.', start)
  return state, inexact
