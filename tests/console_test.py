"""run.py's console (short, no C++ start-up chatter) and TensorBoard files.

Trains the tiny digits config, samples, and sweeps its two checkpoints, in
subprocesses as a user runs them (offline, no tfds data); then reads the
event files and the reports back.
"""

import collections
import glob
import json
import os
import subprocess
import sys

from absl.testing import absltest
import numpy as np
import tensorflow as tf

from ncsn_jax import console

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHATTER = ('cpu_feature_guard', 'oneDNN', 'backend', 'absl::InitializeLog',
           'logging_writer', 'Setting work unit notes')


def run(workdir, mode, *flags):
  env = dict(os.environ)
  for name in ('TF_CPP_MIN_LOG_LEVEL', 'TF_ENABLE_ONEDNN_OPTS',
               'JAX_PLATFORMS'):
    env.pop(name, None)  # As on a user's machine.
  cmd = [
      sys.executable,
      os.path.join(ROOT, 'run.py'),
      f'--config={os.path.join(ROOT, "configs", "tiny.py")}',
      f'--workdir={workdir}', f'--mode={mode}', *flags
  ]
  result = subprocess.run(cmd,
                          env=env,
                          capture_output=True,
                          text=True,
                          timeout=600,
                          cwd=ROOT)
  return result, (result.stdout + result.stderr).splitlines()


def event_tags(logdir: str) -> dict[str, set[int]]:
  """{tag: steps} of every event file directly in `logdir`."""
  tags = collections.defaultdict(set)
  for path in glob.glob(os.path.join(logdir, 'events.out.tfevents.*')):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        tags[value.tag].add(event.step)
  return tags


class FlagsTest(absltest.TestCase):

  def test_verbosity_and_environment(self):
    self.assertEqual(console.normalize_argv(['run.py', '-v', '--mode=x']),
                     ['run.py', '--verbosity=1', '--mode=x'])
    for argv, level in ((['run.py'], 0), (['run.py', '--verbosity=1'], 1),
                        (['run.py', '-v', '2'], 2), (['run.py', '-v=1'], 1),
                        (['run.py', '--verbosity', 'x'], 0)):
      self.assertEqual(console.verbosity(argv), level, argv)
    quiet, verbose = {}, {'TF_CPP_MIN_LOG_LEVEL': '0'}
    console.set_environment(False, quiet)
    console.set_environment(True, verbose)
    self.assertEqual(quiet, {
        'TF_CPP_MIN_LOG_LEVEL': '2',
        'TF_ENABLE_ONEDNN_OPTS': '0'
    })
    self.assertEqual(verbose, {
        'TF_CPP_MIN_LOG_LEVEL': '0',
        'TF_ENABLE_ONEDNN_OPTS': '0'
    })


class ConsoleTest(absltest.TestCase):

  def assert_quiet(self, result, lines):
    text = '\n'.join(lines)
    self.assertEqual(result.returncode, 0, text[-3000:])
    self.assertLess(len(lines), 25, text)
    for word in CHATTER:
      self.assertNotIn(word, text)
    self.assertIn('devices: ', lines[1])

  def test_train_sample_eval_console_and_tensorboard(self):
    workdir = self.create_tempdir().full_path
    result, lines = run(workdir, 'train')
    self.assert_quiet(result, lines)
    self.assertTrue(lines[0].startswith('train: '), lines[0])
    self.assertIn('tiny.py', lines[0])
    final = [l for l in lines if l.startswith('training: 4/4 steps in ')]
    self.assertLen(final, 1, lines)
    self.assertIn('loss ', final[0])
    tags = event_tags(workdir)
    self.assertEqual(tags['samples'], {2, 4})  # The snapshot grids.
    self.assertEqual(tags['test_loss'], {2, 4})
    self.assertEqual(tags['loss'], {1, 2, 3, 4})

    result, lines = run(workdir, 'sample')
    self.assert_quiet(result, lines)
    self.assertTrue(
        any(l.startswith('sampling: 4/4 samples in ') for l in lines), lines)
    self.assertTrue(any(l.startswith('grid: ') for l in lines), lines)

    # -v brings back the logs (here the INFO lines of sample mode).
    result, lines = run(workdir, 'sample', '-v')
    self.assertEqual(result.returncode, 0)
    self.assertTrue(any('Sampled checkpoint' in l for l in lines), lines)

    result, lines = run(workdir, 'eval', '--config.eval.begin_ckpt=1')
    self.assert_quiet(result, lines)
    self.assertTrue(
        any(l.startswith('eval sweep: 2/2 checkpoints in ') for l in lines),
        lines)
    eval_dir = os.path.join(workdir, 'eval')
    self.assertTrue(os.path.getsize(os.path.join(eval_dir, 'sweep.png')))
    tags = event_tags(eval_dir)
    for tag in ('eval/test_dsm_loss', 'eval/digits_classifier/score_ratio',
                'eval/digits_classifier/frechet_distance'):
      self.assertEqual(tags[tag], {2, 4}, tag)
    # The tiny config runs offline on its own (digits, no tfds): each
    # checkpoint's report has the test loss and the digits scores.
    for step in (2, 4):
      with open(os.path.join(eval_dir, f'report_{step}.json')) as f:
        report = json.load(f)
      self.assertTrue(np.isfinite(report['test_dsm_loss']))
      self.assertIn('digits_classifier', report)


if __name__ == '__main__':
  absltest.main()
