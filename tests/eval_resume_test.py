"""Long work survives being stopped: eval, sample mode and fid_stats resume.

One tiny digits checkpoint is trained once and evaluated uninterrupted (the
reference). Then evals are killed with SIGKILL after some sample batches,
stopped with SIGTERM, run with other settings, and run by two processes; a
sample-mode run and a fid_stats pass are stopped half-way. Each rerun of the
same command must end with the reference's numbers, reusing what was kept.
"""

import dataclasses
import functools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from unittest import mock

from absl.testing import absltest
from configs import tiny
import numpy as np
import tensorflow_datasets as tfds
from tests import inception_metrics_test
from tests import multihost_common

from ncsn_jax import errors
from ncsn_jax import outputs
from ncsn_jax.evaluation import evaluate
from ncsn_jax.evaluation import sample_quality
from ncsn_jax.sampling import langevin
from ncsn_jax.sampling import sample_mode
from ncsn_jax.training import loop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OVERRIDES = {
    'data.channels': 1,
    'training.snapshot_sampling': False,
    'eval.num_samples': 24,
    'sampling.batch_size': 4,  # 6 sample batches, 6 files.
}


def config():
  c = tiny.get_config()
  for field, value in OVERRIDES.items():
    section, name = field.split('.')
    c[section][name] = value
  return c


def run_py(workdir: str, *extra, wrapper=(), **popen):
  """`run.py --mode=eval` on the test config (through a test wrapper)."""
  cmd = [sys.executable, *(wrapper or [os.path.join(ROOT, 'run.py')]),
         f'--config={os.path.join(ROOT, "configs", "tiny.py")}',
         f'--workdir={workdir}', '--mode=eval',
         *[f'--config.{k}={v}' for k, v in OVERRIDES.items()], *extra]
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', JAX_PLATFORMS='cpu')
  env.update(popen.pop('env', {}))
  return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, cwd=ROOT,
                          **popen)


def report(workdir: str) -> dict:
  with open(os.path.join(workdir, 'eval', 'report_4.json')) as f:
    return json.load(f)


def batches(workdir: str) -> dict[str, float]:
  """{sample batch file: its modification time} of checkpoint 4's eval."""
  folder = os.path.join(workdir, 'eval', 'step_4')
  if not os.path.isdir(folder):
    return {}
  return {n: os.stat(os.path.join(folder, n)).st_mtime_ns
          for n in os.listdir(folder) if n.endswith('.npz')}


@functools.cache
def trained() -> str:
  """A workdir of `config()` trained once for the module (4 steps, two
  checkpoints); sampling and eval settings do not change the training."""
  workdir = os.path.join(absltest.get_default_test_tmpdir(),
                         f'trained_{os.getpid()}')
  loop.train(config(), workdir)
  return workdir


class EvalResumeTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.root = absltest.get_default_test_tmpdir()
    cls.trained = trained()
    cls.reference = cls.copy()
    evaluate.evaluate(config(), cls.reference)
    cls.want = report(cls.reference)

  @classmethod
  def copy(cls) -> str:
    workdir = os.path.join(cls.root, f'w_{time.monotonic_ns()}')
    shutil.copytree(os.path.join(cls.trained, 'checkpoints'),
                    os.path.join(workdir, 'checkpoints'))
    return workdir

  def test_reference_keeps_one_file_per_sample_batch(self):
    self.assertLen(batches(self.reference), 6)
    self.assertEqual(self.want['num_samples'], 24)
    self.assertIn('score_ratio', self.want['digits_classifier'])

  def test_sigkill_after_two_batches_then_rerun_gives_the_same_report(self):
    workdir = self.copy()
    proc = run_py(workdir,
                  wrapper=[os.path.join(ROOT, 'tests', 'run_killed.py'),
                           'part:2'])
    _, err = proc.communicate(timeout=600)
    self.assertEqual(proc.returncode, -signal.SIGKILL, err[-3000:])
    kept = batches(workdir)
    self.assertLen(kept, 2)
    self.assertFalse(os.path.exists(
        os.path.join(workdir, 'eval', 'report_4.json')))
    evaluate.evaluate(config(), workdir)  # What the rerun of run.py calls.
    self.assertEqual(report(workdir), self.want)
    after = batches(workdir)
    self.assertLen(after, 6)
    for name, mtime in kept.items():  # Reused, not drawn again.
      self.assertEqual(after[name], mtime, name)

  def test_sigterm_stops_promptly_and_the_rerun_continues(self):
    workdir = self.copy()
    proc = run_py(workdir)
    while not batches(workdir) and proc.poll() is None:
      time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    signalled = time.time()
    _, err = proc.communicate(timeout=300)
    self.assertEqual(proc.returncode, 0, err[-3000:])
    self.assertLess(time.time() - signalled, 20)
    self.assertIn('stopped: ', err)
    self.assertIn('rerun the same command to continue', err)
    self.assertLess(len(batches(workdir)), 6)
    self.assertFalse(os.path.exists(
        os.path.join(workdir, 'eval', 'report_4.json')))
    evaluate.evaluate(config(), workdir)
    self.assertEqual(report(workdir), self.want)

  def test_batches_of_other_settings_are_refused_never_mixed(self):
    workdir = self.copy()
    shutil.copytree(os.path.join(self.reference, 'eval'),
                    os.path.join(workdir, 'eval'))
    os.remove(os.path.join(workdir, 'eval', 'report_4.json'))
    before = batches(workdir)
    c = config()
    c.sampling.step_lr = 2e-3
    with self.assertRaises(errors.InputError) as e:
      evaluate.evaluate(c, workdir)
    self.assertIn('sampling.step_lr=0.001, this run has 0.002', str(e.exception))
    self.assertNotIn('\n', str(e.exception))
    self.assertEqual(batches(workdir), before)
    c = config()
    c.seed = 7
    with self.assertRaisesRegex(errors.InputError, 'seed=42, this run has 7'):
      evaluate.evaluate(c, workdir)
    # More samples reuse the six batches and draw the rest.
    c = config()
    c.eval.num_samples = 28
    evaluate.evaluate(c, workdir)
    after = batches(workdir)
    self.assertLen(after, 7)
    self.assertEqual({k: after[k] for k in before}, before)

  def test_two_processes_share_the_batches_and_one_report(self):
    workdir = self.copy()
    with socket.socket() as s:
      s.bind(('localhost', 0))
      port = s.getsockname()[1]
    env = {'XLA_FLAGS': multihost_common.xla_flags(2)}
    procs = [run_py(workdir, '--multihost',
                    f'--coordinator_address=localhost:{port}',
                    '--num_processes=2', f'--process_id={i}',
                    env=env)
             for i in range(2)]
    for proc in procs:
      _, err = proc.communicate(timeout=600)
      self.assertEqual(proc.returncode, 0, err[-3000:])
    got = report(workdir)
    # The same samples (per-example keys); the test loss splits the test set
    # between the processes, so only its order of summation may differ.
    self.assertEqual(got['digits_classifier'], self.want['digits_classifier'])
    self.assertAlmostEqual(got['test_dsm_loss'], self.want['test_dsm_loss'],
                           delta=0.05 * self.want['test_dsm_loss'])
    self.assertLen(batches(workdir), 6)


class SampleModeResumeTest(absltest.TestCase):

  def test_stopped_sample_mode_continues_to_the_same_files(self):
    c = config()
    c.sampling.batch_size, c.sampling.chains_per_call = 8, 4
    c.sampling.record_every = 2
    workdir = self.create_tempdir().full_path
    shutil.copytree(trained(), workdir, dirs_exist_ok=True)
    want = sample_mode.sample(c, workdir)
    with open(want['npz'], 'rb') as f:
      want_npz = f.read()
    os.remove(want['npz'])
    calls = []
    draw = langevin.sample_batch

    def stop_after_first(*args, **kwargs):
      calls.append(1)
      out = draw(*args, **kwargs)
      if len(calls) == 1:
        os.kill(os.getpid(), signal.SIGTERM)  # The watcher asks to stop.
      return out

    with mock.patch.object(langevin, 'sample_batch', stop_after_first):
      with self.assertRaisesRegex(errors.Interrupted, '4 of 8 samples'):
        sample_mode.sample(c, workdir)
    parts = os.path.join(workdir, 'samples', '.samples_parts')
    self.assertEqual(os.listdir(parts), ['part_0.npz'])
    with mock.patch.object(langevin, 'sample_batch',
                           side_effect=draw) as drawn:
      got = sample_mode.sample(c, workdir)
    self.assertEqual(drawn.call_count, 1)  # Only the missing call.
    with open(got['npz'], 'rb') as f:
      self.assertEqual(f.read(), want_npz)
    self.assertFalse(os.path.exists(parts))  # Removed once written.


class FidStatsResumeTest(absltest.TestCase):

  def test_stopped_feature_pass_continues_to_the_same_features(self):
    c = tiny.get_config('cifar10')
    c.eval.inception_batch_size = 1  # Batches of 8 images, 2 for 16 images.
    folder = os.path.join(self.create_tempdir().full_path, 'ref.npz.parts')
    extract = inception_metrics_test.stub_extractor(False)
    meta = {'split': 'train'}
    with tfds.testing.mock_data(num_examples=16):
      want = sample_quality.split_features(c, 'train', extract)
      with self.assertRaisesRegex(errors.Interrupted, '8 images'):
        sample_quality.split_features(c, 'train', extract, folder=folder,
                                      meta=meta, stop=lambda: True,
                                      part_batches=1)
      self.assertEqual(os.listdir(folder), ['features_0.npz'])
      calls = mock.Mock(side_effect=extract.fn)
      got = sample_quality.split_features(
          c, 'train', dataclasses.replace(extract, fn=calls), folder=folder,
          meta=meta, part_batches=1)
      self.assertEqual(calls.call_count, 1)  # The second batch only.
      np.testing.assert_array_equal(got, want)
      with self.assertRaisesRegex(errors.InputError, 'split'):
        sample_quality.split_features(c, 'train', extract, folder=folder,
                                      meta={'split': 'test'}, part_batches=1)
    outputs.load_shard(os.path.join(folder, 'features_0.npz'),
                       dict(meta, part=0, batch=8, part_batches=1))


if __name__ == '__main__':
  absltest.main()
