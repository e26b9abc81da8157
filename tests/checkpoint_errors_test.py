"""Damaged, mismatched or busy checkpoints fail with one line naming them."""

import json
import os
import subprocess
import sys
from unittest import mock

from absl.testing import absltest
from configs import tiny
import jax
import numpy as np
import orbax.checkpoint as ocp

from ncsn_jax import checkpoints
from ncsn_jax import errors
from ncsn_jax.training import loop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def config():
  c = tiny.get_config()
  c.data.channels = 1
  c.training.snapshot_sampling = False
  c.training.n_iters = 4
  c.training.snapshot_freq = 2
  return c


def run_py(workdir: str, mode: str, *overrides):
  """run.py on the tiny grey config in a subprocess."""
  cmd = [
      sys.executable,
      os.path.join(ROOT, 'run.py'),
      f'--config={os.path.join(ROOT, "configs", "tiny.py")}',
      f'--workdir={workdir}', f'--mode={mode}', '--config.data.channels=1',
      *overrides
  ]
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', JAX_PLATFORMS='cpu')
  return subprocess.run(cmd, env=env, capture_output=True, text=True,
                        timeout=600, cwd=ROOT)


def run_sample(workdir: str, *overrides):
  return run_py(workdir, 'sample', *overrides)


def run_train(workdir: str):
  return run_py(workdir, 'train', '--config.training.snapshot_sampling=False',
                '--config.training.n_iters=4')


def mount_tmpfs(folder: str, options: str) -> bool:
  """Mounts a tmpfs with `options` on `folder` where allowed (root)."""
  if os.geteuid() != 0:
    return False
  return subprocess.run(
      ['mount', '-t', 'tmpfs', '-o', options, 'tmpfs', folder],
      capture_output=True).returncode == 0


def inexact_resumes(workdir: str, step: int) -> int:
  """The `inexact_resumes` field of checkpoint `step`'s meta."""
  manager = checkpoints.create_manager(workdir, create=False)
  try:
    return checkpoints.read_meta(manager, step)['inexact_resumes']
  finally:
    manager.close()


def one_error_line(test, result) -> str:
  test.assertEqual(result.returncode, 2, result.stderr[-3000:])
  test.assertNotIn('Traceback', result.stderr)
  test.assertNotIn('Event loop is closed', result.stderr)
  lines = [l for l in result.stderr.splitlines() if l.startswith('error: ')]
  test.assertLen(lines, 1)
  return lines[0]


class CheckpointErrorsTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.trained = os.path.join(absltest.get_default_test_tmpdir(),
                               f'trained_{os.getpid()}')
    cls.state = loop.train(config(), cls.trained).state

  def copy(self) -> str:
    workdir = self.create_tempdir().full_path
    subprocess.run(
        ['cp', '-r',
         os.path.join(self.trained, 'checkpoints'), workdir],
        check=True)
    return workdir

  def test_silent_corruption_is_named_and_older_step_only_on_request(self):
    workdir = self.copy()
    # Arrays that differ from the checksums written with them: what a bit
    # flip the storage layer does not notice would restore.
    host = self.state.replace(step=np.int32(6))
    changed = jax.tree.map(lambda x: x + 1, host.params)
    meta = checkpoints._meta(config(), host, 6, 0)  # pylint: disable=protected-access
    manager = checkpoints.create_manager(workdir)
    manager.save(6,
                 args=ocp.args.Composite(state=ocp.args.StandardSave(
                     host.replace(params=changed)),
                                         meta=ocp.args.JsonSave(meta)),
                 force=True)
    manager.close()
    with self.assertRaises(errors.CheckpointError) as e:
      checkpoints.load_params(config(), workdir)
    message = str(e.exception)
    self.assertNotIn('\n', message)
    self.assertIn(os.path.join('checkpoints', '6'), message)
    self.assertIn('corrupt', message)
    self.assertIn('.params', message)
    # Never silently older: only the step asked for.
    _, params, step = checkpoints.load_params(config(), workdir, 4)
    self.assertEqual(step, 4)
    result = run_sample(workdir)
    self.assertIn('checkpoints/6 is corrupt', one_error_line(self, result))
    # Resume refuses it too, and resumes from an older step when told.
    with self.assertRaisesRegex(errors.CheckpointError, 'corrupt'):
      loop.train(config(), workdir)
    c = config()
    c.training.resume_step, c.training.n_iters = 4, 6
    result = loop.train(c, workdir)
    self.assertEqual(int(result.state.step), 6)
    self.assertEqual(inexact_resumes(workdir, 6), 0)
    self.assertTrue(
        os.path.isdir(os.path.join(workdir, 'checkpoints_set_aside', '6')))
    del params

  def test_empty_and_half_written_step_folders(self):
    for leave in ([], ['_CHECKPOINT_METADATA']):
      workdir = self.copy()
      folder = os.path.join(workdir, 'checkpoints', '8')
      os.makedirs(folder)
      for name in leave:
        with open(os.path.join(folder, name), 'w') as f:
          f.write('{}')
      line = one_error_line(self, run_sample(workdir))
      self.assertIn('checkpoints/8', line)
      self.assertIn('empty or half-written', line)
      self.assertNotIn('Composite', line)

  def test_config_mismatch_names_fields_and_both_values(self):
    workdir = self.copy()
    line = one_error_line(
        self,
        run_sample(workdir, '--config.model.ngf=8',
                   '--config.model.sigma_begin=2.0'))
    self.assertIn('config.model.ngf=8 vs 4', line)
    self.assertIn('config.model.sigma_begin=2.0 vs 1.0', line)
    self.assertNotIn('ScopeParamShapeError', line)
    self.assertNotIn('delete', line)

  def test_checkpoint_without_meta_mismatch_is_one_line(self):
    workdir = self.create_tempdir().full_path
    manager = checkpoints.create_manager(workdir)
    manager.save(2, args=ocp.args.Composite(
        state=ocp.args.StandardSave(self.state)), force=True)
    manager.close()
    self.assertEqual(
        os.listdir(os.path.join(workdir, 'checkpoints', '2', )).count('meta'),
        0)
    _, params, _ = checkpoints.load_params(config(), workdir)
    np.testing.assert_array_equal(
        jax.tree.leaves(params)[0],
        jax.tree.leaves(self.state.ema_params)[0])
    c = config()
    c.model.ngf = 8
    with self.assertRaises(errors.CheckpointError) as e:
      checkpoints.load_params(c, workdir)
    self.assertIn('checkpoints/2', str(e.exception))
    self.assertIn('config', str(e.exception))
    self.assertNotIn('\n', str(e.exception))

  def test_storage_refusing_a_save_is_one_line(self):
    workdir = self.create_tempdir().full_path
    folder = os.path.join(workdir, 'checkpoints')
    os.makedirs(folder)
    mounted = mount_tmpfs(folder, 'ro')
    if not mounted:  # Not root: permissions make it read-only instead.
      os.chmod(folder, 0o555)
    try:
      line = one_error_line(self, run_train(workdir))
    finally:
      if mounted:
        subprocess.run(['umount', folder], check=True)
      os.chmod(folder, 0o755)
    self.assertIn(folder, line)
    self.assertRegex(line, '(?i)read-only file system|permission denied')
    # A disk that fills up during the save.
    e = ValueError("RESOURCE_EXHAUSTED: Failed to write 93073 bytes: No "
                   "space left on device [os_error_code='28']")
    self.assertEqual(
        checkpoints._storage_refusal(e),  # pylint: disable=protected-access
        'no space left on device')
    workdir = self.create_tempdir().full_path
    if mount_tmpfs(workdir, 'size=300k'):
      try:
        line = one_error_line(self, run_train(workdir))
      finally:
        subprocess.run(['umount', workdir], check=True)
      self.assertIn('no space left on device', line)
      self.assertIn('checkpoint 2', line)

  def test_unwritable_checkpoint_folder_is_one_line(self):
    workdir = self.create_tempdir().full_path
    with open(os.path.join(workdir, 'checkpoints'), 'w') as f:
      f.write('not a folder')
    with self.assertRaises(errors.InputError) as e:
      loop.train(config(), workdir)
    self.assertIn('checkpoints', str(e.exception))
    self.assertNotIn('\n', str(e.exception))

  def test_resume_without_input_position_is_reported(self):
    # What an imported official checkpoint (or an older run) looks like.
    workdir = self.create_tempdir().full_path
    manager = checkpoints.create_manager(workdir)
    checkpoints.save(manager, 4, self.state, config())
    manager.close()
    c = config()
    c.training.n_iters = 6
    with self.assertLogs(level='WARNING') as logs:
      result = loop.train(c, workdir)
    notices = [
        r.getMessage()
        for r in logs.records
        if 'no input-pipeline position' in r.getMessage()
    ]
    self.assertLen(notices, 1)
    self.assertNotIn('\n', notices[0])
    self.assertIn(os.path.join('checkpoints', '4'), notices[0])
    self.assertEqual(int(result.state.step), 6)
    self.assertEqual(inexact_resumes(workdir, 6), 1)
    # The count travels with the checkpoints: a later exact resume keeps it.
    c.training.n_iters = 8
    with mock.patch.object(checkpoints.logging, 'warning') as warned:
      loop.train(c, workdir)
    self.assertFalse(any('no input-pipeline position' in str(call)
                         for call in warned.call_args_list))
    self.assertEqual(inexact_resumes(workdir, 8), 1)
    with open(os.path.join(workdir, 'metrics.jsonl')) as f:
      records = [json.loads(l) for l in f]
    self.assertEqual([r['step'] for r in records], [5, 6, 7, 8])

  def test_second_training_run_in_a_workdir_is_refused(self):
    workdir = self.create_tempdir().full_path
    with checkpoints.lock(workdir):
      with self.assertRaises(errors.ConfigError) as e:
        loop.train(config(), workdir)
    self.assertIn(workdir, str(e.exception))
    self.assertIn(f'pid {os.getpid()}', str(e.exception))
    # A lock file left by a dead process does not block.
    with open(os.path.join(workdir, '.lock'), 'w') as f:
      f.write('999999')
    with checkpoints.lock(workdir):
      pass


if __name__ == '__main__':
  absltest.main()
