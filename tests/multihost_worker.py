"""One process of the 2-process x 2-CPU-device tests (see multihost_test).

Usage: multihost_worker.py PROCESS_ID PORT WORKDIR MODES, MODES a
comma-separated list of step | train | resume, run in order in one process,
with the repository root on PYTHONPATH (tests/conftest.py puts it there).
`resume` copies WORKDIR's step-2 checkpoint (nothing later) to
WORKDIR_resume and trains it on to the end. Saves the parameters of each
mode to WORKDIR/MODE_params_PROCESS_ID.npz.
"""

import functools
import os
import shutil
import sys
from unittest import mock

# The test passes its own flags with 2 devices (multihost_common.xla_flags).
os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=2')
os.environ['JAX_PLATFORMS'] = 'cpu'

from ncsn_jax import parallel

# Start-up wait for the other process: generous, for loaded test machines.
TIMEOUT_S = 600


def built_once(make):
  """`make(config, model)` memoised on the config within this process.

  The modes build the same train and eval programs. JAX writes persistent
  cache entries from process 0 only (and process 1's keys differ), so
  without this process 1 would compile each of them once per mode.
  """
  built = {}

  @functools.wraps(make)
  def wrapper(config, model, *args):
    key = (config.to_json(), args)
    if key not in built:
      built[key] = make(config, model, *args)
    return built[key]

  return wrapper


def copy_until_step_2(workdir: str, copy: str):
  """WORKDIR without its step-4 checkpoint and the saved parameters."""
  def ignore(folder, names):
    if folder.endswith(os.sep + 'checkpoints'):
      return ['4']
    return [n for n in names if n.endswith('.npz')] if folder == (
        workdir) else []
  shutil.copytree(workdir, copy, ignore=ignore)


def main(process_id: int, port: str, workdir: str, modes: str):
  parallel.initialize_distributed(f'localhost:{port}',
                                  2,
                                  process_id,
                                  timeout_s=TIMEOUT_S)
  import jax  # pylint: disable=g-import-not-at-top
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from tests import multihost_common  # pylint: disable=g-import-not-at-top
  from ncsn_jax import checkpoints  # pylint: disable=g-import-not-at-top
  from ncsn_jax.training import loop  # pylint: disable=g-import-not-at-top
  from ncsn_jax.training import step  # pylint: disable=g-import-not-at-top
  with mock.patch.object(step, 'make_train_step',
                         built_once(step.make_train_step)), \
      mock.patch.object(step, 'make_eval_step',
                        built_once(step.make_eval_step)):
    for mode in modes.split(','):
      config = multihost_common.config()
      if mode == 'step':
        images = multihost_common.global_batches(config)
        per_process = images.shape[1] // 2
        local = images[:, process_id * per_process:(process_id + 1) *
                       per_process]
        state = multihost_common.run_steps(config, local)
      elif mode == 'train':
        state = loop.train(config, workdir).state
      else:  # resume: from a copy of the run stopped after step 2.
        copy = workdir + '_resume'
        if process_id == 0:
          copy_until_step_2(workdir, copy)
        multihost_utils.sync_global_devices('copied')
        assert checkpoints.steps(copy) == [2], checkpoints.steps(copy)
        state = loop.train(config, copy).state
      leaves = jax.tree.leaves(jax.device_get(state.params))
      np.savez(os.path.join(workdir, f'{mode}_params_{process_id}.npz'),
               *leaves)


if __name__ == '__main__':
  main(int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4])
