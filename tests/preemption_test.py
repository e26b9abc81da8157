"""SIGTERM checkpoints and exits 0 promptly; a half-written save is never
restored."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

from absl.testing import absltest
from configs import tiny

from ncsn_jax import checkpoints
from ncsn_jax.training import loop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def digits_flags():
  return ['--config.data.dataset=digits', '--config.data.channels=1',
          '--config.training.snapshot_sampling=False',
          '--config.training.eval_freq=1000']


class PreemptionTest(absltest.TestCase):

  def test_sigterm_checkpoints_exits_zero_and_resumes(self):
    workdir = self.create_tempdir().full_path
    cmd = [sys.executable, os.path.join(ROOT, 'run.py'),
           f'--config={os.path.join(ROOT, "configs", "tiny.py")}',
           f'--workdir={workdir}', '--mode=train',
           '--config.training.n_iters=100000',
           '--config.training.snapshot_freq=100000',
           '--config.training.log_freq=1'] + digits_flags()
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', JAX_PLATFORMS='cpu')
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT)
    metrics = os.path.join(workdir, 'metrics.jsonl')
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
      if os.path.exists(metrics) and os.path.getsize(metrics) > 0:
        break
      time.sleep(0.5)
    signalled = time.time()
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=300)
    self.assertEqual(proc.returncode, 0, stderr[-3000:])
    # Checkpoint written and process gone promptly (no slow teardown).
    self.assertLess(time.time() - signalled, 15)
    self.assertIn('Checkpoints: ', stdout)  # It finished and said where.
    manager = checkpoints.create_manager(workdir, create=False)
    steps = manager.all_steps()
    self.assertLen(steps, 1)
    stopped = steps[0]
    self.assertGreater(stopped, 0)
    self.assertLess(stopped, 100000)
    # The next start resumes from that step.
    config = tiny.get_config()
    config.data.dataset, config.data.channels = 'digits', 1
    config.training.snapshot_sampling = False
    config.training.n_iters = stopped + 2
    state = loop.train(config, workdir).state
    self.assertEqual(int(state.step), stopped + 2)
    with open(metrics) as f:
      logged = [json.loads(l)['step'] for l in f]
    self.assertEqual(logged[-2:], [stopped + 1, stopped + 2])

  def test_interrupted_save_is_never_restored(self):
    workdir = self.create_tempdir().full_path
    config = tiny.get_config()
    config.data.dataset, config.data.channels = 'digits', 1
    config.training.snapshot_sampling = False
    config.training.n_iters = 2
    state = loop.train(config, workdir).state
    root = os.path.join(workdir, 'checkpoints')
    # What a save killed half-way leaves behind: orbax's temporary folder.
    shutil.copytree(os.path.join(root, '2'),
                    os.path.join(root, '4.orbax-checkpoint-tmp'))
    os.remove(os.path.join(root, '4.orbax-checkpoint-tmp',
                           'commit_success.txt'))
    manager = checkpoints.create_manager(workdir, create=False)
    self.assertEqual(manager.all_steps(), [2])
    restored, step = checkpoints.restore(manager, state)
    self.assertEqual(step, 2)
    self.assertEqual(int(restored.step), 2)


if __name__ == '__main__':
  absltest.main()
