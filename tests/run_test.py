"""End-to-end tests of run.py: train, sample and eval, and bad input.

Bad config fields (checked before any work) are tested in
config_checks_test.py.
"""

import json
import os
import subprocess
import sys

from absl.testing import absltest
import numpy as np

from ncsn_jax import outputs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WRAPPER = os.path.join(ROOT, 'tests', 'run_with_mock_data.py')


def run(workdir, mode, *overrides, config='configs/tiny.py:cifar10'):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', JAX_PLATFORMS='cpu')
  cmd = [sys.executable, WRAPPER, f'--config={os.path.join(ROOT, config)}',
         f'--workdir={workdir}', f'--mode={mode}', *overrides]
  return subprocess.run(cmd, env=env, capture_output=True, text=True,
                        timeout=600, cwd=ROOT)


def error_line(result):
  lines = [l for l in result.stderr.splitlines() if l.startswith('error: ')]
  return lines[-1] if lines else result.stderr[-2000:]


class RunTest(absltest.TestCase):

  def test_train_sample_eval_and_errors(self):
    workdir = self.create_tempdir().full_path
    # Missing checkpoint: sample before training fails cleanly.
    result = run(workdir, 'sample')
    self.assertEqual(result.returncode, 2)
    self.assertIn('no checkpoint', error_line(result))

    result = run(workdir, 'train')
    self.assertEqual(result.returncode, 0, result.stderr[-3000:])
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

    result = run(workdir, 'sample', '--config.sampling.tag=grid')
    self.assertEqual(result.returncode, 0, result.stderr[-3000:])
    images = np.load(os.path.join(workdir, 'samples', 'grid.npz'))['images']
    self.assertEqual(images.shape, (4, 8, 8, 3))
    self.assertEqual(images.dtype, np.uint8)
    self.assertTrue(os.path.exists(os.path.join(workdir, 'samples',
                                                'grid.png')))

    result = run(workdir, 'eval')
    self.assertEqual(result.returncode, 0, result.stderr[-3000:])
    with open(os.path.join(workdir, 'eval', 'report_4.json')) as f:
      report = json.load(f)
    self.assertEqual(report['step'], 4)
    self.assertIn(f'fid={report["fid"]:.4g}', result.stdout)
    self.assertTrue(np.isfinite(report['test_dsm_loss']))
    self.assertGreater(report['test_dsm_loss'], 0)
    # IS/FID/KID with the real FID trunk (make test fetches it); no cached
    # reference stats for 8 px mock data: the test split, on the fly.
    self.assertGreater(report['fid'], 0)
    self.assertTrue(np.isfinite(report['kid']))
    self.assertIn('fc head', report['inception_score_note'])
    self.assertEqual(report['inception']['num_samples'], 8)
    self.assertEqual(report['inception']['num_reference'], 16)
    self.assertIn('on the fly', report['inception']['reference'])
    self.assertEqual(len(report['inception']['weights_trunk_sha256']), 64)
    self.assertFalse(report['inception']['comparable_to_papers'])

    # A fast-FID sweep over both checkpoints names the best one, labelled
    # as not comparable with the papers' 50k-sample FID.
    result = run(workdir, 'eval', '--config.eval.begin_ckpt=1')
    self.assertEqual(result.returncode, 0, result.stderr[-3000:])
    with open(os.path.join(workdir, 'eval', 'sweep.json')) as f:
      sweep = json.load(f)
    self.assertEqual(sweep['criterion'], 'fid')
    fids = {r['step']: r['fid'] for r in sweep['rows']}
    self.assertEqual(sweep['best_step'], min(fids, key=fids.get))
    self.assertIn('not comparable', sweep['note'])

    # Without samples, a sweep ranks by the test loss.
    result = run(workdir, 'eval', '--config.eval.begin_ckpt=1',
                 '--config.eval.num_samples=0')
    self.assertEqual(result.returncode, 0, result.stderr[-3000:])
    with open(os.path.join(workdir, 'eval', 'sweep.json')) as f:
      sweep = json.load(f)
    self.assertEqual([r['step'] for r in sweep['rows']], [2, 4])
    self.assertEqual(sweep['criterion'], 'test_dsm_loss')
    losses = {r['step']: r['test_dsm_loss'] for r in sweep['rows']}
    self.assertEqual(sweep['best_step'], min(losses, key=losses.get))
    with open(os.path.join(workdir, 'eval', 'sweep.csv')) as f:
      self.assertTrue(f.readline().startswith('step,'))

    # A missing checkpoint step names the ones that exist.
    result = run(workdir, 'sample', '--config.sampling.ckpt_id=3')
    self.assertEqual(result.returncode, 2)
    self.assertIn('[2, 4]', error_line(result))

    # A corrupt checkpoint: clear error, and nothing is deleted.
    data_dir = os.path.join(workdir, 'checkpoints', '4', 'state')
    for dirpath, _, files in os.walk(data_dir):
      for name in files:
        if name not in ('commit_success.txt',):
          with open(os.path.join(dirpath, name), 'wb') as f:
            f.write(b'garbage')
    result = run(workdir, 'sample')
    self.assertEqual(result.returncode, 2)
    self.assertIn('checkpoints/4', error_line(result))
    self.assertIn('unreadable', error_line(result))
    self.assertTrue(os.path.isdir(data_dir))
    self.assertEqual(sorted(os.listdir(os.path.join(workdir, 'checkpoints'))),
                     ['2', '4'])
    result = run(workdir, 'sample', '--config.sampling.ckpt_id=2')
    self.assertEqual(result.returncode, 0, result.stderr[-3000:])

  def test_unwritable_workdir(self):
    parent = self.create_tempdir().full_path
    blocker = os.path.join(parent, 'file')
    with open(blocker, 'w') as f:
      f.write('not a folder')
    result = run(os.path.join(blocker, 'run'), 'train')
    self.assertEqual(result.returncode, 2)
    self.assertIn('--workdir', error_line(result))
    with open(blocker) as f:
      self.assertEqual(f.read(), 'not a folder')


if __name__ == '__main__':
  absltest.main()
