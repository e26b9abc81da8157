"""2 processes x 2 CPU devices on localhost, against 1 process x 4 devices."""

import os
import socket
import subprocess
import sys
import tempfile
from unittest import mock

from absl.testing import absltest
from absl.testing import flagsaver
from configs import digits
import jax
import orbax.checkpoint as ocp
import numpy as np
from tests import multihost_common

from ncsn_jax import checkpoints
from ncsn_jax import parallel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, 'tests', 'multihost_worker.py')


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def start_two_processes(workdir: str, modes: str):
  """Two workers running `modes` (comma-separated, see multihost_worker)."""
  port = str(free_port())
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2',
             XLA_FLAGS=multihost_common.xla_flags(2))
  procs = []
  for i in range(2):  # Output to files: a full pipe would stall a worker.
    with open(f'{workdir}.log_{i}.txt', 'w') as log:
      procs.append(subprocess.Popen(
          [sys.executable, WORKER, str(i), port, workdir, modes], env=env,
          stdout=log, stderr=subprocess.STDOUT))
  return procs


def wait(workdir: str, procs) -> None:
  for i, p in enumerate(procs):
    p.wait(timeout=600)
    with open(f'{workdir}.log_{i}.txt') as log:
      assert p.returncode == 0, log.read()[-4000:]


def params(workdir: str, mode: str):
  """Both workers' parameters after `mode`."""
  return [np.load(os.path.join(workdir, f'{mode}_params_{i}.npz'))
          for i in range(2)]


def assert_same(a, b, rtol, atol):
  assert sorted(a.files) == sorted(b.files)
  for name in a.files:
    np.testing.assert_allclose(a[name], b[name], rtol=rtol, atol=atol)


class MultihostTest(absltest.TestCase):
  """One pair of workers takes the fixed-batch steps, trains 4 steps, then
  resumes a copy of that run's step-2 checkpoint.

  Their start-up (imports, connection) and their compiled programs are paid
  once for both tests.
  """

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    root = absltest.get_default_test_tmpdir()  # Absent on a fresh machine.
    os.makedirs(root, exist_ok=True)
    cls.workdir = tempfile.mkdtemp(dir=root)
    cls.procs = start_two_processes(cls.workdir, 'step,train,resume')

  @classmethod
  def tearDownClass(cls):
    for p in cls.procs:  # Still running only when a test failed early.
      if p.poll() is None:
        p.kill()
        p.wait()
    super().tearDownClass()

  def test_two_processes_equal_one_process_four_devices(self):
    # The reference run overlaps the workers' start-up and compilation.
    config = multihost_common.config()
    self.assertEqual(jax.local_device_count(), 4)
    single = multihost_common.run_steps(
        config, multihost_common.global_batches(config))
    wait(self.workdir, self.procs)
    p0, p1 = params(self.workdir, 'step')
    assert_same(p0, p1, rtol=0, atol=0)
    leaves = jax.tree.leaves(single.params)
    for i, leaf in enumerate(leaves):
      np.testing.assert_allclose(p0[f'arr_{i}'], leaf, rtol=1e-4, atol=1e-6)

  def test_two_process_training_loop(self):
    wait(self.workdir, self.procs)
    p0, p1 = params(self.workdir, 'train')
    assert_same(p0, p1, rtol=0, atol=0)
    manager = checkpoints.create_manager(self.workdir, create=False)
    self.assertEqual(sorted(manager.all_steps()), [2, 4])
    for i in range(2):
      self.assertTrue(os.path.isfile(os.path.join(
          self.workdir, 'checkpoints', '4', 'data', f'process_{i}',
          'position.json')))
    # Stopped after step 2 (a copy of the run's own checkpoint, nothing
    # later) and resumed: bit-identical, both processes.
    r0, r1 = params(self.workdir, 'resume')
    assert_same(r0, p0, rtol=0, atol=0)
    assert_same(r1, p1, rtol=0, atol=0)
    self.assertEqual(checkpoints.steps(self.workdir + '_resume'), [2, 4])


class DistributedStartTest(absltest.TestCase):
  """The start-up timeout reaches jax.distributed (fakes, one process)."""

  def test_timeout_reaches_initialize_and_the_barrier(self):
    with mock.patch.object(jax.distributed, 'initialize') as initialize, \
        mock.patch.object(jax.config, 'update'), \
        mock.patch.object(jax, 'process_count', return_value=2), \
        mock.patch.object(parallel, 'connect_collectives') as connect:
      parallel.initialize_distributed('localhost:1234', 2, 1, timeout_s=450)
    initialize.assert_called_once_with(
        initialization_timeout=450, coordinator_address='localhost:1234',
        num_processes=2, process_id=1)
    connect.assert_called_once_with(450)

  def test_connect_waits_at_a_barrier_then_sums_over_every_device(self):
    self.assertLen(jax.devices(), 4)  # The backend exists before the fake.
    barrier = mock.Mock()
    with mock.patch.object(ocp.multihost, 'get_barrier_sync_fn',
                           return_value=barrier):
      parallel.connect_collectives(12)
    barrier.assert_called_once_with(key='ncsn_jax_connect_collectives',
                                    timeout_ms=12000)

  def test_run_py_flag_reaches_initialize_distributed(self):
    import run  # pylint: disable=g-import-not-at-top
    config = digits.get_config()
    config.model.name = 'foo'  # Stops run.py right after the start-up.
    saved = flagsaver.flagsaver(
        config=config, workdir=self.create_tempdir().full_path,
        multihost=True, coordinator_address='localhost:1', num_processes=2,
        process_id=0, distributed_timeout=7)
    # run.py leaves with os._exit after an error line: exit normally here.
    with saved, mock.patch.object(parallel,
                                  'initialize_distributed') as initialize, \
        mock.patch.object(run.console, 'exit_now', side_effect=sys.exit):
      with self.assertRaises(SystemExit) as exit_:
        run.main(['run.py'])
    self.assertEqual(exit_.exception.code, 2)
    initialize.assert_called_once_with('localhost:1', 2, 0, timeout_s=7)


if __name__ == '__main__':
  absltest.main()
