"""One process of the 2-process x 2-CPU-device tests (see multihost_test).

Usage: multihost_worker.py PROCESS_ID PORT WORKDIR MODES, MODES a
comma-separated list of step | train | train:N (train up to step N), run in
order in one process, with the repository root on PYTHONPATH
(tests/conftest.py puts it there). Saves the parameters of each to
WORKDIR/MODE_params_PROCESS_ID.npz.
"""

import os
import sys

# The test passes its own flags with 2 devices (multihost_common.xla_flags).
os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=2')
os.environ['JAX_PLATFORMS'] = 'cpu'

from ncsn_jax import parallel

# Start-up wait for the other process: generous, for loaded test machines.
TIMEOUT_S = 600


def main(process_id: int, port: str, workdir: str, modes: str):
  parallel.initialize_distributed(f'localhost:{port}',
                                  2,
                                  process_id,
                                  timeout_s=TIMEOUT_S)
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from tests import multihost_common  # pylint: disable=g-import-not-at-top
  from ncsn_jax.training import loop
  for mode in modes.split(','):
    config = multihost_common.config()
    if mode == 'step':
      images = multihost_common.global_batches(config)
      per_process = images.shape[1] // 2
      local = images[:, process_id * per_process:(process_id + 1) *
                     per_process]
      state = multihost_common.run_steps(config, local)
    else:
      if mode.startswith('train:'):  # train:N stops after step N.
        config.training.n_iters = int(mode.split(':')[1])
      state = loop.train(config, workdir).state
    leaves = jax.tree.leaves(jax.device_get(state.params))
    np.savez(os.path.join(workdir, f'{mode}_params_{process_id}.npz'),
             *leaves)


if __name__ == '__main__':
  main(int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4])
