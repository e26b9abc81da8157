"""End-to-end tests of run.py: train, sample and eval, bad input, console.

Trains the tiny digits config (offline, no tfds data), samples, evaluates
and sweeps its two checkpoints, in subprocesses as a user runs them (their
environment, without the variables that quiet TensorFlow and pick the
platform); checks the short console, the TensorBoard files and the reports,
then breaks the run in ways a user meets. Bad config fields (checked before
any work) are tested in config_checks_test.py; IS/FID/KID end to end, on
real CIFAR-10 files, in data_end_to_end_test.py.
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
  """`run.py --mode=MODE` on configs/tiny.py: (result, output lines)."""
  env = dict(os.environ)
  for name in ('TF_CPP_MIN_LOG_LEVEL', 'TF_ENABLE_ONEDNN_OPTS',
               'JAX_PLATFORMS'):
    env.pop(name, None)  # As on a user's machine.
  cmd = [sys.executable, os.path.join(ROOT, 'run.py'),
         f'--config={os.path.join(ROOT, "configs", "tiny.py")}',
         f'--workdir={workdir}', f'--mode={mode}', *flags]
  result = subprocess.run(cmd, env=env, capture_output=True, text=True,
                          timeout=600, cwd=ROOT)
  return result, (result.stdout + result.stderr).splitlines()


def error_line(result):
  lines = [l for l in result.stderr.splitlines() if l.startswith('error: ')]
  return lines[-1] if lines else result.stderr[-2000:]


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


class RunTest(absltest.TestCase):

  def assert_quiet(self, result, lines):
    text = '\n'.join(lines)
    self.assertEqual(result.returncode, 0, text[-3000:])
    self.assertLess(len(lines), 25, text)
    for word in CHATTER:
      self.assertNotIn(word, text)
    self.assertIn('devices: ', lines[1])

  def test_train_sample_eval_and_errors(self):
    workdir = self.create_tempdir().full_path
    # Missing checkpoint: sample before training fails cleanly.
    result, _ = run(workdir, 'sample')
    self.assertEqual(result.returncode, 2)
    self.assertIn('no checkpoint', error_line(result))

    result, lines = run(workdir, 'train')
    self.assert_quiet(result, lines)
    self.assertTrue(lines[0].startswith('train: '), lines[0])
    self.assertIn('tiny.py', lines[0])
    final = [l for l in lines if l.startswith('training: 4/4 steps in ')]
    self.assertLen(final, 1, lines)
    self.assertIn('loss ', final[0])
    self.assertEqual(sorted(os.listdir(os.path.join(workdir, 'checkpoints'))),
                     ['2', '4'])
    for name in ('step_2.png', 'step_4.png'):
      self.assertTrue(os.path.exists(os.path.join(workdir, 'samples', name)))
    self.assertTrue(os.path.exists(os.path.join(workdir, 'loss_curve.png')))
    with open(os.path.join(workdir, 'metrics.jsonl')) as f:
      records = [json.loads(l) for l in f]
    self.assertEqual([r['step'] for r in records], [1, 2, 3, 4])
    self.assertIn('loss_sigma_group_0', records[0])
    self.assertIn('test_loss', records[1])
    tags = event_tags(workdir)
    self.assertEqual(tags['samples'], {2, 4})  # The snapshot grids.
    self.assertEqual(tags['test_loss'], {2, 4})
    self.assertEqual(tags['loss'], {1, 2, 3, 4})

    result, lines = run(workdir, 'sample', '--config.sampling.tag=grid')
    self.assert_quiet(result, lines)
    self.assertTrue(
        any(l.startswith('sampling: 4/4 samples in ') for l in lines), lines)
    self.assertTrue(any(l.startswith('grid: ') for l in lines), lines)
    images = np.load(os.path.join(workdir, 'samples', 'grid.npz'))['images']
    self.assertEqual(images.shape, (4, 8, 8, 3))
    self.assertEqual(images.dtype, np.uint8)
    self.assertTrue(os.path.exists(os.path.join(workdir, 'samples',
                                                'grid.png')))

    result, lines = run(workdir, 'eval')
    self.assert_quiet(result, lines)
    with open(os.path.join(workdir, 'eval', 'report_4.json')) as f:
      report = json.load(f)
    self.assertEqual(report['step'], 4)
    score = report['digits_classifier']['score_ratio']
    self.assertIn(f'score_ratio={score:.4g}', result.stdout)
    self.assertTrue(np.isfinite(report['test_dsm_loss']))
    self.assertGreater(report['test_dsm_loss'], 0)

    # A sweep over both checkpoints names the best one; each has a report
    # with the test loss and the digits scores, plotted and in TensorBoard.
    result, lines = run(workdir, 'eval', '--config.eval.begin_ckpt=1')
    self.assert_quiet(result, lines)
    self.assertTrue(
        any(l.startswith('eval sweep: 2/2 checkpoints in ') for l in lines),
        lines)
    eval_dir = os.path.join(workdir, 'eval')
    with open(os.path.join(eval_dir, 'sweep.json')) as f:
      sweep = json.load(f)
    self.assertEqual(sweep['criterion'], 'digits_classifier.frechet_distance')
    distances = {r['step']: r['digits_classifier.frechet_distance']
                 for r in sweep['rows']}
    self.assertEqual(sweep['best_step'], min(distances, key=distances.get))
    self.assertIn(f'best checkpoint by {sweep["criterion"]}: '
                  f'{sweep["best_step"]}', result.stdout)
    self.assertTrue(os.path.getsize(os.path.join(eval_dir, 'sweep.png')))
    tags = event_tags(eval_dir)
    for tag in ('eval/test_dsm_loss', 'eval/digits_classifier/score_ratio',
                'eval/digits_classifier/frechet_distance'):
      self.assertEqual(tags[tag], {2, 4}, tag)
    for step in (2, 4):
      with open(os.path.join(eval_dir, f'report_{step}.json')) as f:
        report = json.load(f)
      self.assertTrue(np.isfinite(report['test_dsm_loss']))
      self.assertIn('digits_classifier', report)

    # A missing checkpoint step names the ones that exist.
    result, _ = run(workdir, 'sample', '--config.sampling.ckpt_id=3')
    self.assertEqual(result.returncode, 2)
    self.assertIn('[2, 4]', error_line(result))

    # A corrupt checkpoint: clear error, and nothing is deleted.
    data_dir = os.path.join(workdir, 'checkpoints', '4', 'state')
    for dirpath, _, files in os.walk(data_dir):
      for name in files:
        if name not in ('commit_success.txt',):
          with open(os.path.join(dirpath, name), 'wb') as f:
            f.write(b'garbage')
    result, _ = run(workdir, 'sample')
    self.assertEqual(result.returncode, 2)
    self.assertIn('checkpoints/4', error_line(result))
    self.assertIn('unreadable', error_line(result))
    self.assertTrue(os.path.isdir(data_dir))
    self.assertEqual(sorted(os.listdir(os.path.join(workdir, 'checkpoints'))),
                     ['2', '4'])
    # The older one still samples; -v brings back the logs (here the INFO
    # lines of sample mode).
    result, lines = run(workdir, 'sample', '--config.sampling.ckpt_id=2',
                        '-v')
    self.assertEqual(result.returncode, 0, result.stderr[-3000:])
    self.assertTrue(any('Sampled checkpoint' in l for l in lines), lines)

  def test_unwritable_workdir(self):
    parent = self.create_tempdir().full_path
    blocker = os.path.join(parent, 'file')
    with open(blocker, 'w') as f:
      f.write('not a folder')
    result, _ = run(os.path.join(blocker, 'run'), 'train')
    self.assertEqual(result.returncode, 2)
    self.assertIn('--workdir', error_line(result))
    with open(blocker) as f:
      self.assertEqual(f.read(), 'not a folder')


if __name__ == '__main__':
  absltest.main()
