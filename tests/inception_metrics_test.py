"""Tests for inception.sample_quality: reference stats and sample metrics.

Most tests inject a stub extractor (a fixed random projection of the
pixels), so they need no weights; `FidStatsModeTest` runs
`run.py --mode=fid_stats` with the real FID trunk on tfds mock data.
"""

import json
import os
import subprocess
import sys

from absl.testing import absltest
from configs import tiny
import numpy as np
import tensorflow_datasets as tfds
from tests import inception_test

from ncsn_jax import outputs
from ncsn_jax.evaluation import metrics
from ncsn_jax.evaluation import sample_quality as im
from ncsn_jax.evaluation.inception import extractor as inception
from ncsn_jax.evaluation.inception import weight_files

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def stub_extractor(with_logits: bool, dim: int = 64, trunk: str = 'b' * 64):
  """pool_3 = relu(pixels @ P), logits = pool_3 @ Q, as an `Extractor`."""
  rng = np.random.default_rng(0)
  proj = rng.normal(size=(8 * 8 * 3, dim)) / 8
  head = rng.normal(size=(dim, 20))

  def extract(images):
    x = images.reshape(images.shape[0], -1).astype(np.float64) / 255
    pool_3 = np.maximum(x @ proj, 0).astype(np.float32)
    out = {'pool_3': pool_3}
    if with_logits:
      out['logits'] = (pool_3 @ head).astype(np.float32)
    return out

  return inception.Extractor(
      fn=extract, preprocessing='tf', path='stub', source='stub',
      source_sha256='a' * 64, trunk_sha256=trunk, has_head=with_logits)


def _images(seed, n):
  return np.random.default_rng(seed).integers(0, 256, (n, 8, 8, 3), np.uint8)


class ReferenceFilesTest(absltest.TestCase):

  def test_round_trip_and_foreign_formats(self):
    root = self.create_tempdir().full_path
    feats = stub_extractor(False)(_images(1, 40))['pool_3']
    path = os.path.join(root, 'ours.npz')
    meta = im.save_reference(path, feats, {'dataset': 'x'})
    self.assertEqual(meta['num_examples'], 40)
    ref = im.load_reference(path)
    mu, sigma = metrics.mean_and_covariance(feats)
    np.testing.assert_allclose(ref['mu'], mu)
    np.testing.assert_allclose(ref['sigma'], sigma)
    np.testing.assert_array_equal(ref['pool_3'], feats)
    self.assertEqual(ref['meta']['dataset'], 'x')
    # score_sde: pool_3 only.
    np.savez(os.path.join(root, 'score_sde.npz'), pool_3=feats)
    ref = im.load_reference(os.path.join(root, 'score_sde.npz'))
    np.testing.assert_allclose(ref['sigma'], sigma)
    self.assertEqual(ref['meta']['num_examples'], 40)
    # TTUR / pytorch-fid: mu and sigma only.
    np.savez(os.path.join(root, 'ttur.npz'), mu=mu, sigma=sigma)
    ref = im.load_reference(os.path.join(root, 'ttur.npz'))
    self.assertIsNone(ref['pool_3'])
    np.savez(os.path.join(root, 'bad.npz'), mu=mu)
    with self.assertRaisesRegex(ValueError, 'pool_3 or mu and sigma'):
      im.load_reference(os.path.join(root, 'bad.npz'))

  def test_default_stats_path(self):
    config = tiny.get_config('cifar10')
    path = im.stats_path(config)
    self.assertEqual(path, os.path.join(weight_files.default_cache_dir(),
                                        'stats', 'cifar10_8px_train_tf.npz'))
    config.eval.stats_path = '/x/y.npz'
    self.assertEqual(im.stats_path(config), '/x/y.npz')


class SampleMetricsTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.config = tiny.get_config()
    root = self.create_tempdir().full_path
    self.config.eval.stats_path = os.path.join(root, 'ref.npz')
    self.real = _images(2, 60)
    self.ref_feats = stub_extractor(False)(self.real)['pool_3']
    im.save_reference(self.config.eval.stats_path, self.ref_feats,
                      {'split': 'train', 'preprocessing': 'tf',
                       'weights_trunk_sha256': 'b' * 64})

  def test_numbers_match_the_metric_functions(self):
    samples = _images(3, 30)
    report = im.sample_metrics(self.config, samples, stub_extractor(True))
    feats = stub_extractor(True)(samples)
    gaussians = (*metrics.mean_and_covariance(feats['pool_3']),
                 *metrics.mean_and_covariance(self.ref_feats))
    want_fid = metrics.frechet_distance(*gaussians, method='eigh')
    self.assertAlmostEqual(report['fid'], want_fid, delta=1e-10 * want_fid)
    # 30 samples in 64-D: singular covariances; sqrtm agrees to ~1e-8.
    self.assertAlmostEqual(report['fid'], metrics.frechet_distance(
        *gaussians), delta=1e-6 * want_fid)
    kid, kid_std = metrics.kernel_inception_distance(self.ref_feats,
                                                     feats['pool_3'])
    self.assertAlmostEqual(report['kid'], kid, places=12)
    self.assertIsNone(report['kid_std'])  # One block: NaN -> null.
    self.assertTrue(np.isnan(kid_std))
    score, std = metrics.inception_score(feats['logits'], splits=10,
                                         from_logits=True)
    self.assertAlmostEqual(report['inception_score'], score, places=12)
    self.assertAlmostEqual(report['inception_score_std'], std, places=12)
    info = report['inception']
    self.assertEqual(info['num_samples'], 30)
    self.assertEqual(info['num_reference'], 60)
    self.assertIn('split train', info['reference'])
    self.assertTrue(info['preprocessing'].startswith('tf: TF1 legacy'))
    self.assertIn('floor(clip(x, 0, 1) * 255 + 0.5)', info['quantisation'])
    self.assertEqual(info['weights_trunk_sha256'], 'b' * 64)
    self.assertFalse(info['comparable_to_papers'])
    self.assertLen(info['notes'], 1)  # Only the small-N bias warning.
    self.assertIn('30 samples: FID and IS are biased', info['notes'][0])
    json.dumps(report, allow_nan=False)
    # Floats in [0, 1] are rounded to the same uint8 images.
    again = im.sample_metrics(
        self.config, outputs.to_uint8(samples / np.float32(255)),
        stub_extractor(True))
    self.assertEqual(again['fid'], report['fid'])

  def test_missing_head_and_other_weights_give_notes(self):
    report = im.sample_metrics(self.config, _images(3, 8),
                               stub_extractor(False, trunk='c' * 64))
    self.assertNotIn('inception_score', report)
    self.assertIn('no 1008-way fc head', report['inception_score_note'])
    self.assertIn('pt_inception-2015-12-05-6726825d.pth',
                  report['inception_score_note'])
    self.assertIn('the Inception weights differ',
                  report['inception']['notes'][0])
    self.assertIn('fid', report)
    report = im.sample_metrics(self.config, _images(3, 8),
                               stub_extractor(True))
    self.assertIn('>= 10 samples', report['inception_score_note'])

  def test_mu_sigma_reference_has_no_kid(self):
    mu, sigma = metrics.mean_and_covariance(self.ref_feats)
    np.savez(self.config.eval.stats_path, mu=mu, sigma=sigma)
    report = im.sample_metrics(self.config, _images(3, 20),
                               stub_extractor(False))
    self.assertIn('fid', report)
    self.assertNotIn('kid', report)
    self.assertIn('mu and sigma only', report['kid_note'])

  def test_preprocessing_mismatch_is_an_error(self):
    self.config.eval.inception_preprocessing = 'pytorch'
    with self.assertRaisesRegex(ValueError, "'tf'-preprocessed"):
      im.sample_metrics(self.config, _images(3, 20), stub_extractor(False))


class ScorerTest(absltest.TestCase):

  def test_network_and_reference_are_made_once(self):
    config = tiny.get_config('cifar10')
    config.eval.stats_path = os.path.join(self.create_tempdir().full_path,
                                          'absent.npz')
    made = []

    def create_extractor(c):
      made.append(c)
      return stub_extractor(True)

    original = im.create_extractor
    im.create_extractor = create_extractor
    self.addCleanup(setattr, im, 'create_extractor', original)
    with tfds.testing.mock_data(num_examples=16):
      scorer = im.create_scorer(config)
      self.assertEmpty(made)  # Nothing is made before the first call.
      first = scorer(_images(3, 12))
      second = scorer(_images(4, 12))
      want = im.sample_metrics(config, _images(4, 12), stub_extractor(True))
    self.assertLen(made, 1)
    self.assertNotEqual(first['fid'], second['fid'])
    self.assertEqual(second['fid'], want['fid'])
    self.assertEqual(second['kid'], want['kid'])
    # Each report has its own notes: the on-the-fly note and the small-N
    # warning once, not accumulated across calls.
    self.assertEqual(second['inception']['notes'], want['inception']['notes'])
    self.assertLen(second['inception']['notes'], 2)


class OnTheFlyTest(absltest.TestCase):

  def test_test_split_is_used_without_cached_stats(self):
    config = tiny.get_config('cifar10')
    config.eval.stats_path = os.path.join(self.create_tempdir().full_path,
                                          'absent.npz')
    with tfds.testing.mock_data(num_examples=16):
      report = im.sample_metrics(config, _images(3, 12),
                                 stub_extractor(False))
      self.assertEqual(report['inception']['num_reference'], 16)
      self.assertIn('computed on the fly', report['inception']['reference'])
      self.assertIn('--mode=fid_stats', report['inception']['notes'][0])
      self.assertIn('kid', report)
      config.eval.stats_split = 'test'
      path = im.reference_stats(config, stub_extractor(False))
    ref = im.load_reference(path)
    self.assertEqual(ref['meta']['num_examples'], 16)
    self.assertEqual(ref['meta']['split'], 'test')
    self.assertEqual(ref['meta']['weights_trunk_sha256'], 'b' * 64)
    self.assertEqual(ref['pool_3'].shape, (16, 64))


class FidStatsModeTest(absltest.TestCase):

  def test_run_py_fid_stats_with_real_weights(self):
    inception_test.real_weights_path()
    root = self.create_tempdir().full_path
    out = os.path.join(root, 'stats', 'c10.npz')
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', JAX_PLATFORMS='cpu')
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, 'tests', 'run_with_mock_data.py'),
         f'--config={os.path.join(ROOT, "configs", "tiny.py:cifar10")}',
         f'--workdir={root}', '--mode=fid_stats',
         f'--config.eval.stats_path={out}'],
        env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
    self.assertEqual(result.returncode, 0, result.stderr[-3000:])
    self.assertIn(out, result.stdout)
    ref = im.load_reference(out)
    meta = ref['meta']
    self.assertEqual((meta['dataset'], meta['split'], meta['num_examples'],
                      meta['preprocessing']), ('cifar10', 'train', 16, 'tf'))
    self.assertEqual(len(meta['weights_trunk_sha256']), 64)
    self.assertEqual(ref['pool_3'].shape, (16, 2048))
    self.assertTrue(np.all(ref['pool_3'] >= 0))
    self.assertEqual(ref['sigma'].shape, (2048, 2048))


if __name__ == '__main__':
  absltest.main()
