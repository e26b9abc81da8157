"""SIGKILL at any moment of a save, then resume: bit-identical to no kill.

One uninterrupted `run.py` run is the reference. A second run in another
workdir is killed with SIGKILL at each named moment of a checkpoint save
(`tests/run_killed.py`: while the input position is written, after every
item is written but before the commit, right after the commit) and at a random
moment, resumed each time, and must end with exactly the reference's
parameters, optimiser state and input position.
"""

import json
import os
import random
import signal
import subprocess
import sys
import time

from absl.testing import absltest
from configs import tiny
import jax
import numpy as np

from ncsn_jax import checkpoints
from ncsn_jax import train_state
from ncsn_jax.training import loop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N_ITERS, EVERY, KEEP = 24, 4, 3
OVERRIDES = {
    'data.channels': 1,
    'training.n_iters': N_ITERS,
    'training.snapshot_freq': EVERY,
    'training.keep_checkpoints': KEEP,
    'training.snapshot_sampling': False,
    'training.log_freq': 1,
    'training.eval_freq': 3,
}


def config():
  c = tiny.get_config()
  for field, value in OVERRIDES.items():
    section, name = field.split('.')
    c[section][name] = value
  return c


def start(workdir: str, kill_at: str = ''):
  wrapper = ([os.path.join(ROOT, 'tests', 'run_killed.py'), kill_at]
             if kill_at else [os.path.join(ROOT, 'run.py')])
  cmd = [
      sys.executable, *wrapper,
      f'--config={os.path.join(ROOT, "configs", "tiny.py")}',
      f'--workdir={workdir}', '--mode=train'
  ] + [f'--config.{k}={v}' for k, v in OVERRIDES.items()]
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', JAX_PLATFORMS='cpu')
  return subprocess.Popen(cmd,
                          env=env,
                          stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE,
                          text=True,
                          cwd=ROOT)


def last_logged_step(workdir: str) -> int:
  try:
    with open(os.path.join(workdir, 'metrics.jsonl')) as f:
      lines = [l for l in f.read().splitlines() if l.endswith('}')]
  except FileNotFoundError:
    return 0
  return json.loads(lines[-1])['step'] if lines else 0


def restore(workdir: str, step: int = 0):
  c = config()
  target = train_state.abstract_train_state(c)
  manager = checkpoints.create_manager(workdir, create=False)
  try:
    return checkpoints.restore(manager, target, step, c)[0]
  finally:
    manager.close()


def assert_identical(test, a, b):
  flat_a, tree_a = jax.tree.flatten(a)
  flat_b, tree_b = jax.tree.flatten(b)
  test.assertEqual(tree_a, tree_b)
  for x, y in zip(flat_a, flat_b):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def steps_of(workdir: str) -> list[int]:
  manager = checkpoints.create_manager(workdir, create=False)
  try:
    return sorted(manager.all_steps())
  finally:
    manager.close()


class KillAndResumeTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.root = absltest.get_default_test_tmpdir()
    cls.reference = os.path.join(cls.root, f'reference_{os.getpid()}')
    proc = start(cls.reference)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]

  def test_sigkill_at_every_moment_then_resume_is_bit_identical(self):
    workdir = self.create_tempdir().full_path
    # (kill point, the latest checkpoint the killed run must leave).
    plan = [('in_save:8', 4), ('before_commit:12', 8), ('after_commit:16', 16)]
    for kill_at, latest in plan:
      proc = start(workdir, kill_at)
      _, err = proc.communicate(timeout=600)
      self.assertEqual(proc.returncode, -signal.SIGKILL, err[-3000:])
      self.assertEqual(steps_of(workdir)[-1], latest, kill_at)
    # At a random moment: some steps after the last kill, before the end.
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    target = rng.randrange(17, N_ITERS - 4)
    proc = start(workdir)
    while proc.poll() is None and last_logged_step(workdir) < target:
      time.sleep(0.005)
    time.sleep(rng.uniform(0, 0.05))
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=600)
    self.assertIn(proc.returncode, (-signal.SIGKILL, 0), f'seed {seed}')
    # The last restart runs to the end.
    proc = start(workdir)
    out, err = proc.communicate(timeout=600)
    self.assertEqual(proc.returncode, 0, err[-3000:])
    self.assertNotIn('no input-pipeline position', err)
    self.assertEqual(steps_of(workdir)[-1], N_ITERS)
    assert_identical(self, restore(workdir), restore(self.reference))
    with open(os.path.join(workdir, 'metrics.jsonl')) as f:
      records = [json.loads(l) for l in f]
    self.assertEqual([r['step'] for r in records if 'loss' in r],
                     list(range(1, N_ITERS + 1)), f'seed {seed}')
    manager = checkpoints.create_manager(workdir, create=False)
    try:
      self.assertEqual(checkpoints.read_meta(manager, N_ITERS)[
          'inexact_resumes'], 0)
    finally:
      manager.close()

  def test_every_kept_checkpoint_restores_with_its_input_position(self):
    kept = steps_of(self.reference)
    self.assertEqual(
        kept, list(range(N_ITERS - EVERY * (KEEP - 1), N_ITERS + 1, EVERY)))
    # Deleted steps went with their input position: one folder per step.
    self.assertEqual(
        sorted(
            int(d)
            for d in os.listdir(os.path.join(self.reference, 'checkpoints'))
            if d.isdigit()), kept)
    c = config()
    fresh = iter(loop._datasets(c)['train'])  # pylint: disable=protected-access
    batches = [next(fresh)['image'] for _ in range(N_ITERS + 1)]
    manager = checkpoints.create_manager(self.reference, create=False)
    try:
      for step in kept:
        iters = {k: iter(v) for k, v in loop._datasets(c).items()}  # pylint: disable=protected-access
        record = checkpoints._restore_item(  # pylint: disable=protected-access
            manager, step, checkpoints.DATA,
            checkpoints.DataPositionRestore(iters))
        self.assertEqual(record['train'], {'batches': step, 'tf_data': True})
        self.assertEqual(record['test']['batches'], step // 3)
        np.testing.assert_array_equal(
            next(iters['train'])['image'], batches[step])
    finally:
      manager.close()


if __name__ == '__main__':
  absltest.main()
