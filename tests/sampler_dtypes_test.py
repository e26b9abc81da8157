"""Tests for bench/sampler_dtypes.py: float32 against bfloat16 sampling.

One tiny run of the script (both parts, fresh weights) is shared by the
module; the determinism and eval-mode checks run a tiny CIFAR-shaped chain.
"""

import json
import os
import tempfile

from absl.testing import absltest
import jax
import numpy as np

from bench import sampler_dtypes
from ncsn_jax import models
from ncsn_jax import outputs
from ncsn_jax import parallel
from ncsn_jax import train_state
from ncsn_jax.sampling import langevin

TINY = ['--digits_ngf=4', '--digits_levels=4', '--seeds=1,2',
        '--num_samples=8', '--sampling_batch=8', '--digits_drift_batch=0',
        '--cifar_ngf=4', '--cifar_image_size=8', '--cifar_levels=3',
        '--cifar_batch=4']


class SamplerDtypesTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tmp = tempfile.TemporaryDirectory()
    cls.json_path = os.path.join(cls.tmp.name, 'out.json')
    cls.rc = sampler_dtypes.main(TINY + [f'--json={cls.json_path}'])
    with open(cls.json_path) as f:
      cls.out = json.load(f)

  @classmethod
  def small_chain(cls):
    """The tiny CIFAR-shaped config (sigma_1 = 1), its model, parameters."""
    if not hasattr(cls, '_small'):
      config = sampler_dtypes.cifar_config(sampler_dtypes.parse_args(TINY))
      config.model.sigma_begin = 1.0  # Keeps the chains inside [0, 1].
      model = models.create_model(config)
      # Any parameters do: shapes from the abstract state (initialising
      # would cost seconds), values from a fixed NumPy generator.
      rng = np.random.default_rng(0)
      params = jax.tree.map(
          lambda s: (0.1 * rng.standard_normal(s.shape)).astype(s.dtype),
          train_state.abstract_train_state(config).params)
      cls._small = config, model, params
    config, model, params = cls._small
    return config.copy_and_resolve_references(), model, params

  @classmethod
  def tearDownClass(cls):
    cls.tmp.cleanup()
    super().tearDownClass()

  def test_json_has_both_parts_per_seed_and_level(self):
    self.assertEqual(self.rc, 0)
    for field in ('date', 'backend', 'versions', 'argv'):
      self.assertIn(field, self.out)
    digits = self.out['digits']
    self.assertEqual([r['seed'] for r in digits['rows']], [1, 2])
    for row in digits['rows']:
      for dtype in ('float32', 'bfloat16'):
        for name in ('score_ratio', 'frechet_distance', 'kid'):
          self.assertTrue(np.isfinite(row['scores'][dtype][name]))
    change = digits['summary']['frechet_distance']['bfloat16_minus_float32']
    self.assertIn('change_over_seed_std', change)
    cifar = self.out['cifar']
    self.assertEqual(cifar['levels'], 3)
    self.assertLen(cifar['sigmas'], 3)
    # One state per level, then the denoised one.
    for field in ('rel_rms', 'rms_over_sigma', 'max_abs'):
      self.assertLen(cifar['bfloat16'][field], 4)

  def test_bfloat16_differs_from_float32_but_stays_close(self):
    rel = np.asarray(self.out['cifar']['bfloat16']['rel_rms'])
    self.assertTrue(np.all(rel > 0), rel)
    self.assertTrue(np.all(rel < 0.05), rel)
    for row in self.out['digits']['rows']:
      pixels = row['pixels']['bfloat16']
      self.assertGreater(pixels['mean_abs'], 0.0)
      self.assertLess(pixels['mean_abs'], 0.05)
      self.assertLessEqual(pixels['mean_abs'], pixels['max_abs'])
      self.assertLess(pixels['uint8_fraction_differ'], 0.5)

  def test_same_dtype_twice_gives_identical_chains(self):
    config, model, params = self.small_chain()
    for dtype in ('float32', 'bfloat16'):
      drift = sampler_dtypes.level_drift(config, model, params,
                                         jax.random.key(3), 4,
                                         dtypes=(dtype, dtype))
      self.assertEqual(drift[dtype]['max_abs'], [0.0] * 4)

  def test_draw_gives_the_samples_eval_mode_scores(self):
    config, model, params = self.small_chain()
    config = sampler_dtypes.with_dtype(config, 'bfloat16')
    config.sampling.batch_size = 4  # Two batches, the last one cut.
    p_sample = parallel.pmap_sampler(langevin.get_sampler(config, model))
    key = jax.random.key(5)
    got = outputs.to_uint8(sampler_dtypes.draw(config, p_sample, params, key,
                                               6))
    want = outputs.to_uint8(langevin.generate(config, p_sample, params, key,
                                              6))
    self.assertGreater(len(np.unique(got)), 10)  # Not all clipped to 0 / 1.
    np.testing.assert_array_equal(got, want)

  def test_pixel_difference_counts(self):
    a = np.zeros((2, 2, 2, 1), np.float32)
    b = a.copy()
    b[0, 0, 0, 0] = 0.5  # 128 levels apart in uint8.
    b[1, 1, 1, 0] = 1e-3  # Rounds to the same uint8 level.
    d = sampler_dtypes.pixel_difference(a, b)
    self.assertAlmostEqual(d['mean_abs'], (0.5 + 1e-3) / 8, places=6)
    self.assertAlmostEqual(d['max_abs'], 0.5)
    self.assertEqual(d['uint8_fraction_differ'], 1 / 8)
    self.assertEqual(d['uint8_mean_abs_levels'], 128 / 8)

  def test_summary_sets_the_change_against_the_seed_spread(self):
    rows = [{'scores': {'float32': dict(score_ratio=f, frechet_distance=f,
                                        kid=f),
                        'bfloat16': dict(score_ratio=f + 0.5,
                                         frechet_distance=f + 0.5,
                                         kid=f + 0.5)},
             'pixels': {'bfloat16': {'mean_abs': 0.1}}}
            for f in (1.0, 2.0, 3.0)]
    s = sampler_dtypes.summarise(rows)['frechet_distance']
    self.assertAlmostEqual(s['float32']['std'], 1.0)
    self.assertAlmostEqual(s['bfloat16_minus_float32']['mean'], 0.5)
    self.assertAlmostEqual(s['bfloat16_minus_float32']['std'], 0.0)
    self.assertAlmostEqual(
        s['bfloat16_minus_float32']['change_over_seed_std'], 0.5)

  def test_bad_flags_exit_2_before_any_work(self):
    with self.assertRaises(SystemExit) as e:
      sampler_dtypes.parse_args(['--seeds=1,x'])
    self.assertEqual(e.exception.code, 2)
    with self.assertRaises(SystemExit) as e:
      sampler_dtypes.parse_args(['--parts=digits,fid'])
    self.assertEqual(e.exception.code, 2)
    self.assertEqual(sampler_dtypes.main(['--json=' + self.tmp.name]), 2)
    missing = os.path.join(self.tmp.name, 'no_run')
    self.assertEqual(sampler_dtypes.main(['--parts=cifar',
                                          f'--cifar_workdir={missing}']), 2)


if __name__ == '__main__':
  absltest.main()
