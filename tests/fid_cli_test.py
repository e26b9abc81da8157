"""`python -m ncsn_jax.fid A B`: the numbers of `sample_metrics`, the inputs,
the one-line errors. Uses the real FID trunk (see tests/inception_test.py).
"""

import contextlib
import dataclasses
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import tempfile

from absl.testing import absltest
from configs import tiny
import numpy as np
from PIL import Image
from tests import inception_test

from ncsn_jax import fid
from ncsn_jax import outputs
from ncsn_jax.evaluation import metrics
from ncsn_jax.evaluation import sample_quality

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BATCH = 8


def _write_folder(folder, images, jpeg_every=0):
  """Writes images as PNG (every `jpeg_every`-th as JPEG) in two levels;
  returns the pixels as read back, in the CLI's (sorted path) order."""
  paths = []
  for i, image in enumerate(images):
    sub = os.path.join(folder, 'sub' if i % 3 == 0 else '')
    os.makedirs(sub, exist_ok=True)
    jpeg = jpeg_every and i % jpeg_every == 0
    path = os.path.join(sub, f'{i:02d}.{"jpg" if jpeg else "png"}')
    Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(path)
    paths.append(path)
  back = [np.asarray(Image.open(p)) for p in sorted(paths)]
  return np.stack([b[..., None] if b.ndim == 2 else b for b in back])


def _run(argv, extractor=None):
  """(exit status, stdout, stderr) of fid.main in this process."""
  out, err = io.StringIO(), io.StringIO()
  with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    rc = fid.main(argv, extractor)
  return rc, out.getvalue(), err.getvalue()


def _remembering(extractor):
  """The extractor, computing each distinct image only once in the module.

  Keyed by an image's exact uint8 pixels, so any change in what the command
  reads or feeds it still gives other features; the images not seen before
  go through the real extractor together.
  """
  seen = {}

  def fn(images):
    images = np.asarray(images)
    keys = [(x.shape, x.dtype.str, hashlib.sha256(x.tobytes()).hexdigest())
            for x in images]
    new = [i for i, k in enumerate(keys)
           if k not in seen and k not in keys[:i]]
    if new:
      feats = extractor(images[new])
      for j, i in enumerate(new):
        seen[keys[i]] = {k: np.asarray(v)[j] for k, v in feats.items()}
    return {k: np.stack([seen[key][k] for key in keys])
            for k in seen[keys[0]]}

  return dataclasses.replace(extractor, fn=fn)


def _number(stdout, name):
  return float(re.search(rf'^{name}: (\S+)', stdout, re.MULTILINE).group(1))


class FidCliTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tmp = tempfile.TemporaryDirectory()
    cls.root = cls.tmp.name
    rng = np.random.default_rng(0)
    smooth = np.kron(rng.integers(0, 256, (16, 8, 8, 3)), np.ones((1, 4, 4, 1)))
    cls.a_dir = os.path.join(cls.root, 'a')
    cls.a = _write_folder(cls.a_dir, smooth.astype(np.uint8), jpeg_every=2)
    grey = rng.integers(60, 200, (16, 32, 32, 1)).astype(np.uint8)
    cls.b_dir = os.path.join(cls.root, 'b')
    cls.b = _write_folder(cls.b_dir, grey)
    cls.extractor = _remembering(sample_quality.load_extractor(
        inception_test.real_weights_path(), 'tf', BATCH))
    extract = cls.extractor
    cls.b_feats = extract(cls.b)['pool_3']
    # Reference stats of B in the three kinds the CLI reads.
    cls.stats = {
        k: os.path.join(cls.root, f'b_{k}.npz')
        for k in ('ours', 'ttur', 'score_sde')
    }
    sample_quality.save_reference(
        cls.stats['ours'], cls.b_feats, {
            'preprocessing': 'tf',
            'weights_trunk_sha256': cls.extractor.trunk_sha256
        })
    mu, sigma = metrics.mean_and_covariance(cls.b_feats)
    np.savez(cls.stats['ttur'], mu=mu, sigma=sigma)
    np.savez(cls.stats['score_sde'], pool_3=cls.b_feats)
    cls.a_npz = os.path.join(cls.root, 'a.npz')
    outputs.save_npz_images(cls.a_npz, cls.a)
    config = tiny.get_config()
    config.eval.stats_path = cls.stats['ours']
    cls.want = sample_quality.sample_metrics(config, cls.a, cls.extractor)

  @classmethod
  def tearDownClass(cls):
    cls.tmp.cleanup()
    super().tearDownClass()

  def assertClose(self, got, want):
    self.assertAlmostEqual(got, want, delta=1e-5 * abs(want))

  def test_folders_match_sample_metrics(self):
    out = os.path.join(self.create_tempdir().full_path, 'r.json')
    rc, stdout, stderr = _run([
        self.a_dir, self.b_dir, '--kid', f'--batch_size={BATCH}',
        f'--json={out}'
    ], self.extractor)
    self.assertEqual(rc, 0, stderr)
    self.assertGreater(self.want['fid'], 1.0)
    self.assertClose(_number(stdout, 'FID'), self.want['fid'])
    with open(out) as f:
      report = json.load(f)
    self.assertClose(report['fid'], self.want['fid'])
    self.assertClose(report['kid'], self.want['kid'])
    self.assertEqual((report['a']['num'], report['b']['num']), (16, 16))
    self.assertIn(f'A: {self.a_dir} (folder, N=16)', stdout)
    self.assertIn('preprocessing: tf', stdout)
    self.assertIn(self.extractor.trunk_sha256[:16], stdout)
    self.assertIn('no 1008-way fc head', report['inception_score_note'])
    self.assertRegex(
        stderr, r'A: 16/16 images in [\d.:]+s? \([\d.]+ (images/s|s/image)\)')

  def test_stats_of_three_kinds(self):
    for kind, has_kid in (('ttur', False), ('score_sde', True)):
      rc, stdout, stderr = _run(
          [self.a_npz, self.stats[kind], '--kid', f'--batch_size={BATCH}'],
          self.extractor)
      self.assertEqual(rc, 0, stderr)
      self.assertClose(_number(stdout, 'FID'), self.want['fid'])
      if has_kid:
        self.assertClose(_number(stdout, 'KID'), self.want['kid'])
        self.assertIn('(stats, N=16)', stdout)
      else:
        self.assertIn('KID not computed: B holds mu and sigma only', stdout)
        self.assertIn('(stats, N unknown)', stdout)
    # Both sides statistics: no network at all; FID is symmetric; stats
    # made with other weights are flagged.
    a_stats = os.path.join(self.create_tempdir().full_path, 'a.npz')
    sample_quality.save_reference(a_stats, self.extractor(self.a)['pool_3'],
                                  {
                                      'preprocessing': 'tf',
                                      'weights_trunk_sha256': 'c' * 64
                                  })
    rc, stdout, _ = _run([self.stats['ours'], a_stats], self.extractor)
    self.assertEqual(rc, 0)
    self.assertClose(_number(stdout, 'FID'), self.want['fid'])
    self.assertNotIn('weights:', stdout)
    self.assertIn(
        'note: the Inception weights differ: A '
        f'{self.extractor.trunk_sha256[:12]}..., B cccc', stdout)

  def test_subprocess_images_npz_against_our_stats(self):
    env = dict(os.environ, JAX_PLATFORMS='cpu')
    env.pop('TF_CPP_MIN_LOG_LEVEL', None)  # The command quietens itself.
    result = subprocess.run([
        sys.executable, '-m', 'ncsn_jax.fid', self.a_npz, self.stats['ours'],
        '--kid', f'--batch_size={BATCH}'
    ],
                            env=env,
                            capture_output=True,
                            text=True,
                            timeout=600,
                            cwd=ROOT)
    self.assertEqual(result.returncode, 0, result.stderr[-3000:])
    lines = result.stdout.splitlines()
    self.assertEqual(lines[0], f'A: {self.a_npz} (images, N=16)')
    self.assertEqual(lines[1], f'B: {self.stats["ours"]} (stats, N=16)')
    self.assertClose(_number(result.stdout, 'FID'), self.want['fid'])
    self.assertClose(_number(result.stdout, 'KID'), self.want['kid'])
    self.assertNotIn('oneDNN', result.stderr)

  def test_sizes_are_resized_and_grey_repeated(self):
    rng = np.random.default_rng(1)
    folder = self.create_tempdir().full_path
    small = rng.integers(0, 256, (4, 20, 28, 3)).astype(np.uint8)
    for i, image in enumerate(small):
      Image.fromarray(image).save(os.path.join(folder, f'{i}.png'))
    for i, image in enumerate(self.a[:6]):
      Image.fromarray(image).save(os.path.join(folder, f'{i + 4}.png'))
    feats = np.concatenate([
        self.extractor(small)['pool_3'],
        self.extractor(self.a[:6])['pool_3']
    ])
    # Against the statistics of those very features: FID 0 (to rounding),
    # which any other resize, crop or feature order would not give.
    same = os.path.join(folder, 'same.npz')
    mu, sigma = metrics.mean_and_covariance(feats)
    np.savez(same, mu=mu, sigma=sigma)
    rc, stdout, stderr = _run([folder, same, f'--batch_size={BATCH}'],
                              self.extractor)
    self.assertEqual(rc, 0, stderr)
    self.assertIn('(folder, N=10)', stdout)
    self.assertLess(abs(_number(stdout, 'FID')), 1e-3)
    # Grey B read from its folder = the same images repeated to RGB.
    rgb = np.repeat(self.b, 3, axis=-1)
    np.testing.assert_allclose(self.extractor(rgb)['pool_3'],
                               self.b_feats,
                               rtol=1e-5,
                               atol=1e-5)

  def _error(self, argv):
    rc, stdout, stderr = _run(argv)
    self.assertEqual(rc, 2, stdout)
    self.assertEqual(stdout, '')
    lines = stderr.strip().splitlines()
    self.assertLen(lines, 1, stderr)
    self.assertTrue(lines[0].startswith('error: '), stderr)
    return lines[0]

  def test_one_line_errors(self):
    root = self.create_tempdir().full_path
    empty = os.path.join(root, 'empty')
    os.makedirs(os.path.join(empty, 'nested'))
    self.assertIn('holds no .png/.jpg/.jpeg files',
                  self._error([empty, self.b_dir]))
    bad = os.path.join(root, 'bad')
    os.makedirs(bad)
    Image.fromarray(self.a[0]).save(os.path.join(bad, 'good.png'))
    with open(os.path.join(bad, 'broken.png'), 'wb') as f:
      f.write(b'not an image at all')
    open(os.path.join(bad, 'empty.jpg'), 'wb').close()
    line = self._error([self.b_dir, bad])  # Both are checked before A runs.
    self.assertIn('B=', line)
    self.assertIn('2 of 3 image files cannot be read', line)
    self.assertIn('broken.png (not a PNG/JPEG image)', line)
    self.assertIn('empty.jpg (empty file)', line)
    self.assertIn('does not exist',
                  self._error([os.path.join(root, 'no'), self.b_dir]))
    floats = os.path.join(root, 'floats.npz')
    np.savez(floats, images=self.a / 255.0)
    self.assertIn('expected uint8 [N,H,W,C]', self._error([floats, self.b_dir]))
    other = os.path.join(root, 'other.npz')
    np.savez(other, x=np.zeros(3))
    self.assertIn("holds ['x']", self._error([self.a_dir, other]))
    self.assertIn(
        "'tf'-preprocessed statistics; pass --preprocessing=tf",
        self._error(
            [self.stats['ttur'], self.stats['ours'],
             '--preprocessing=pytorch']))


if __name__ == '__main__':
  absltest.main()
