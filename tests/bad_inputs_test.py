"""Inputs found by probing the commands: each gets one clear line, or works.

A folder that links back into itself, a resume with other batch sizes, an
import into a smaller model, an unwritable report path or samples folder, a
read-only workdir for export, statistics with NaN, and image folders that
mix modes.
"""

import contextlib
import io
import os
import shutil
import subprocess
import sys

from absl.testing import absltest
from configs import tiny
import numpy as np
from PIL import Image
from tests import checkpoint_errors_test
from tests import checkpoint_import_test
from tests import inception_metrics_test

from ncsn_jax import errors
from ncsn_jax import fid
from ncsn_jax.data import sources
from ncsn_jax.evaluation import image_sets
from ncsn_jax.evaluation import metrics
from ncsn_jax.evaluation import sample_quality
from ncsn_jax.interop import official_checkpoint
from ncsn_jax.sampling import sample_mode
from ncsn_jax.training import loop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _fid(argv, extractor=None):
  """(exit status, stdout, stderr) of `python -m ncsn_jax.fid` in-process."""
  out, err = io.StringIO(), io.StringIO()
  with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    rc = fid.main(argv, extractor)
  return rc, out.getvalue(), err.getvalue()


def _grey_config():
  c = tiny.get_config()
  c.data.channels = 1
  c.training.snapshot_sampling = False
  c.training.n_iters = c.training.snapshot_freq = 2
  return c


class ImageFolderTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.folder = self.create_tempdir().full_path
    rng = np.random.default_rng(0)
    self.rgb = rng.integers(0, 256, (4, 8, 8, 3)).astype(np.uint8)
    for i, image in enumerate(self.rgb):
      Image.fromarray(image).save(os.path.join(self.folder, f'{i}.png'))
    self.stats = os.path.join(self.create_tempdir().full_path, 'b.npz')
    extract = inception_metrics_test.stub_extractor(False)
    b = rng.integers(0, 256, (12, 8, 8, 3)).astype(np.uint8)
    sample_quality.save_reference(self.stats, extract(b)['pool_3'],
                                  {'preprocessing': 'tf'})

  def test_a_link_back_into_the_folder_is_read_once(self):
    os.makedirs(os.path.join(self.folder, 'sub'))
    for i in range(6):
      Image.fromarray(self.rgb[0]).save(
          os.path.join(self.folder, 'sub', f's{i}.png'))
    os.symlink('.', os.path.join(self.folder, 'loop'))
    os.symlink('..', os.path.join(self.folder, 'sub', 'up'))
    with self.assertLogs(level='WARNING') as logs:
      paths = sources.list_image_files(self.folder)
    self.assertLen(paths, 10)
    self.assertLen(set(os.path.realpath(p) for p in paths), 10)
    self.assertIn('2 folder link(s) lead back into folders already read',
                  logs.output[0])
    side = image_sets.open_side(self.folder, 'A', 'tf', 8)
    self.assertEqual(side.n, 10)
    # The training data reads the same files.
    c = tiny.get_config()
    c.data.dataset, c.data.data_dir = 'image_folder', self.folder
    self.assertLen(sources.usable_image_files(c), 10)

  def test_mixed_modes_are_converted_to_rgb_and_counted(self):
    images = {'grey.png': Image.fromarray(self.rgb[0, ..., 0]),
              'alpha.png': Image.fromarray(
                  np.concatenate([self.rgb[1], self.rgb[1, ..., :1]], -1)),
              'palette.png': Image.fromarray(self.rgb[2]).convert('P')}
    for name, image in images.items():
      image.save(os.path.join(self.folder, name))
    extract = inception_metrics_test.stub_extractor(False)
    rc, stdout, stderr = _fid([self.folder, self.stats, '--kid'], extract)
    self.assertEqual(rc, 0, stderr)
    self.assertIn('note: A: converted 3 file(s) to RGB (1 L, 1 P, 1 RGBA)',
                  stdout)
    # The numbers of the same files converted by PIL, as pytorch-fid does.
    paths = sorted(os.path.join(self.folder, n)
                   for n in os.listdir(self.folder))
    rgb = np.stack([np.asarray(Image.open(p).convert('RGB')) for p in paths])
    want = sample_quality.scores(
        sample_quality.statistics(extract(rgb)['pool_3']),
        sample_quality.load_reference(self.stats), inception_score=False)
    got = float(stdout.split('FID: ')[1].split()[0])
    self.assertAlmostEqual(got, want['fid'], places=5)

  def test_nan_statistics_name_the_side_and_file(self):
    bad = os.path.join(self.create_tempdir().full_path, 'nan.npz')
    mu, sigma = metrics.mean_and_covariance(np.eye(4) + 1)
    mu[1] = np.nan
    np.savez(bad, mu=mu, sigma=sigma)
    rc, stdout, stderr = _fid([self.stats, bad])
    self.assertEqual((rc, stdout), (2, ''))
    self.assertEqual(stderr.strip(), f'error: B={bad}: its mu holds NaN or '
                     'Inf values; recompute the statistics (--mode=fid_stats)'
                     ' or use another file.')

  def test_unwritable_json_is_refused_before_the_work(self):
    extract = inception_metrics_test.stub_extractor(False)
    calls = []
    counting = extract.__class__(**{**extract.__dict__, 'fn': lambda x: (
        calls.append(1), extract.fn(x))[1]})
    for target in (self.create_tempdir().full_path, '/proc/ncsn_jax.json'):
      rc, stdout, stderr = _fid([self.folder, self.stats,
                                 f'--json={target}'], counting)
      self.assertEqual((rc, stdout), (2, ''), stderr)
      lines = stderr.strip().splitlines()
      self.assertLen(lines, 1)
      self.assertIn('--json', lines[0])
    self.assertEmpty(calls)  # No image went through the network.


class CheckpointInputsTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.trained = os.path.join(absltest.get_default_test_tmpdir(),
                               f'bad_inputs_{os.getpid()}')
    loop.train(_grey_config(), cls.trained)

  def copy(self) -> str:
    workdir = self.create_tempdir().full_path
    shutil.copytree(os.path.join(self.trained, 'checkpoints'),
                    os.path.join(workdir, 'checkpoints'))
    return workdir

  def test_resume_with_other_batch_sizes_is_one_line(self):
    for field, value, saved in (('training.batch_size', 8, 4),
                                ('eval.batch_size', 8, 4)):
      c = _grey_config()
      c.training.n_iters = 4
      section, name = field.split('.')
      c[section][name] = value
      with self.assertRaises(errors.CheckpointError) as e:
        loop.train(c, self.copy())
      message = str(e.exception)
      self.assertIn(f'config.{field}={value} vs {saved}', message)
      self.assertIn('Resume with the saved values', message)
      self.assertNotIn('\n', message)

  def test_unwritable_samples_folder_is_refused_before_sampling(self):
    workdir = self.copy()
    with open(os.path.join(workdir, 'samples'), 'w') as f:
      f.write('a file where the folder goes')
    with self.assertRaises(errors.InputError) as e:
      sample_mode.sample(_grey_config(), workdir)
    self.assertIn(os.path.join(workdir, 'samples'), str(e.exception))
    self.assertIn('--workdir', str(e.exception))

  def test_export_reads_a_read_only_workdir(self):
    workdir = self.create_tempdir().full_path
    mounted = checkpoint_errors_test.mount_tmpfs(workdir, 'size=50m')
    try:
      shutil.copytree(os.path.join(self.trained, 'checkpoints'),
                      os.path.join(workdir, 'checkpoints'))
      if mounted:
        subprocess.run(['mount', '-o', 'remount,ro', workdir], check=True)
      else:  # Not root: the permissions make it read-only.
        os.chmod(workdir, 0o555)
      out = os.path.join(self.create_tempdir().full_path, 'x.pth')
      result = subprocess.run(
          [sys.executable, os.path.join(ROOT, 'run.py'),
           f'--config={os.path.join(ROOT, "configs", "tiny.py")}',
           '--config.data.channels=1', f'--workdir={workdir}',
           '--mode=export', f'--checkpoint={out}'],
          capture_output=True, text=True, timeout=600, cwd=ROOT,
          env=dict(os.environ, JAX_PLATFORMS='cpu'))
    finally:
      if mounted:
        subprocess.run(['umount', workdir], check=True)
      os.chmod(workdir, 0o755)
    self.assertEqual(result.returncode, 0, result.stderr[-3000:])
    self.assertTrue(os.path.getsize(out) > 0)

  def test_import_into_a_smaller_model_names_the_shapes(self):
    config = checkpoint_import_test.make_config('ncsnv2')
    path = checkpoint_import_test.fixture('ncsnv2_zip.pth')
    official_checkpoint.read_checkpoint(config, path)  # The right model.
    config.model.ngf = 1
    with self.assertRaises(errors.InputError) as e:
      official_checkpoint.read_checkpoint(config, path)
    self.assertIn('does the config', str(e.exception))
    self.assertNotIn('corrupt or crafted', str(e.exception))


if __name__ == '__main__':
  absltest.main()
