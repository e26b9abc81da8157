"""2 processes x 2 CPU devices on localhost, against 1 process x 4 devices."""

import os
import socket
import subprocess
import sys

from absl.testing import absltest
import jax
import numpy as np

from ncsn_jax.training import checkpointing
from tests import multihost_common

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, 'tests', 'multihost_worker.py')


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def run_two_processes(workdir: str, mode: str):
  port = str(free_port())
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
  env.pop('XLA_FLAGS', None)
  procs = [subprocess.Popen(
      [sys.executable, WORKER, str(i), port, workdir, mode], env=env,
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i in range(2)]
  outputs = [p.communicate(timeout=600) for p in procs]
  for p, (_, err) in zip(procs, outputs):
    assert p.returncode == 0, err[-4000:]
  return [np.load(os.path.join(workdir, f'{mode}_params_{i}.npz'))
          for i in range(2)]


def assert_same(a, b, rtol, atol):
  assert sorted(a.files) == sorted(b.files)
  for name in a.files:
    np.testing.assert_allclose(a[name], b[name], rtol=rtol, atol=atol)


class MultihostTest(absltest.TestCase):

  def test_two_processes_equal_one_process_four_devices(self):
    workdir = self.create_tempdir().full_path
    p0, p1 = run_two_processes(workdir, 'step')
    assert_same(p0, p1, rtol=0, atol=0)
    config = multihost_common.config()
    self.assertEqual(jax.local_device_count(), 4)
    single = multihost_common.run_steps(
        config, multihost_common.global_batches(config))
    leaves = jax.tree.leaves(single.params)
    for i, leaf in enumerate(leaves):
      np.testing.assert_allclose(p0[f'arr_{i}'], leaf, rtol=1e-4, atol=1e-6)

  def test_two_process_training_loop(self):
    workdir = self.create_tempdir().full_path
    p0, p1 = run_two_processes(workdir, 'train')
    assert_same(p0, p1, rtol=0, atol=0)
    # Stopped at step 2 and resumed: bit-identical, both processes.
    part = self.create_tempdir().full_path
    run_two_processes(part, 'train:2')
    r0, r1 = run_two_processes(part, 'train:4')
    assert_same(r0, p0, rtol=0, atol=0)
    assert_same(r1, p1, rtol=0, atol=0)
    manager = checkpointing.create_manager(workdir, create=False)
    self.assertEqual(sorted(manager.all_steps()), [2, 4])
    for i in range(2):
      self.assertTrue(os.path.isfile(os.path.join(
          workdir, 'checkpoints', '4', 'data', f'process_{i}',
          'position.json')))


if __name__ == '__main__':
  absltest.main()
