"""Tests of the NCSNv2 hyperparameter tool and the blocked distance pass."""

import json
import os
import subprocess
import sys

from absl.testing import absltest
from absl.testing import parameterized
from configs import digits
import numpy as np
from scipy import spatial

from ncsn_jax.data import distances
from ncsn_jax.data import input_pipeline
from ncsn_jax.experiments import tune

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# NCSNv2 paper (its table of hyperparameters): image size, sigma_1, L, T, eps.
PAPER = {
    'cifar10': (32, 50, 232, 5, 6.2e-6),
    'celeba': (64, 90, 500, 5, 3.3e-6),
    'church': (96, 140, 788, 4, 4.9e-6),
    'bedroom_tower': (128, 190, 1086, 3, 1.8e-6),
    'ffhq': (256, 348, 2311, 3, 0.9e-6),
}


def brute_force_max_distance(x):
  x = np.asarray(x, np.float64).reshape(len(x), -1)
  return float(np.max(spatial.distance.pdist(x)))


class RulesTest(parameterized.TestCase):

  @parameterized.named_parameters((k, k) for k in PAPER)
  def test_paper_table(self, name):
    size, sigma_1, levels, steps, eps = PAPER[name]
    r = tune.recommend(sigma_1, 3 * size * size, 0.01, steps)
    self.assertAlmostEqual(r['num_classes'] / levels, 1.0, delta=0.1)
    if name == 'church':
      # The church row's eps is twice the formula's optimum (2.44e-6 at 96
      # px, 3.6e-6 at the official config's 64 px); the other rows match.
      self.assertAlmostEqual(eps / r['step_lr'], 2.0, delta=0.1)
    else:
      self.assertAlmostEqual(r['step_lr'] / eps, 1.0, delta=0.1)
    # By the criterion itself the paper's eps is as good as the optimum on
    # every row, church included: s_T^2 / sigma^2 is nearly flat in eps
    # there (1.0235 at the optimum, 1.0257 at 4.9e-6).
    at_paper = float(tune.langevin_variance_ratio(
        eps, r['schedule_ratio'], 0.01, steps))
    self.assertAlmostEqual(at_paper, r['variance_ratio'], delta=0.003)

  def test_gamma_solves_the_equation(self):
    for dim in (64, 3072, 196_608):
      gamma = tune.solve_gamma(dim)
      self.assertGreater(gamma, 1.0)
      self.assertAlmostEqual(float(tune.gamma_criterion(gamma, dim)), 0.5,
                             places=9)

  def test_levels_and_step_size(self):
    r = tune.recommend(50.0, 3072, 0.01, 5)
    # The schedule's ratio is at most gamma, and one level fewer exceeds it.
    self.assertLessEqual(r['schedule_ratio'], r['gamma'])
    self.assertGreater(tune.schedule_ratio(50.0, 0.01, r['num_classes'] - 1),
                       r['gamma'])
    self.assertGreaterEqual(r['gamma_criterion'], 0.5)
    # The ratio stays above 1 for T = 5; eps minimises its distance to 1.
    near = tune.langevin_variance_ratio(
        r['step_lr'] * np.array([0.98, 1.02]), r['schedule_ratio'], 0.01, 5)
    self.assertTrue((np.abs(near - 1) >= abs(r['variance_ratio'] - 1)).all())
    self.assertLess(r['variance_ratio'], 1.1)
    # More steps per level need smaller steps.
    self.assertLess(tune.recommend(50.0, 3072, 0.01, 10)['step_lr'],
                    r['step_lr'])


class DistancesTest(parameterized.TestCase):

  @parameterized.parameters(1, 7, 64, 1000)
  def test_max_pairwise_distance_matches_brute_force(self, block):
    x = np.random.RandomState(0).rand(50, 3, 4, 2).astype(np.float32)
    self.assertAlmostEqual(distances.max_pairwise_distance(x, block),
                           brute_force_max_distance(x), places=4)

  @parameterized.parameters(1, 7, 64)
  def test_nearest_neighbors_match_brute_force(self, block):
    rng = np.random.RandomState(1)
    data = rng.rand(45, 5, 5, 1).astype(np.float32)
    queries = rng.rand(6, 5, 5, 1).astype(np.float32)
    dist, idx = distances.nearest_neighbors(queries, data, 4, block)
    d = np.sqrt(np.sum((queries.reshape(6, 1, -1) -
                        data.reshape(1, 45, -1))**2, axis=-1))
    np.testing.assert_array_equal(idx, np.argsort(d, axis=1)[:, :4])
    np.testing.assert_allclose(dist, np.sort(d, axis=1)[:, :4], rtol=1e-4)
    # A training image is its own nearest neighbour, at distance 0.
    dist, idx = distances.nearest_neighbors(data[:3], data, 1, block)
    np.testing.assert_array_equal(idx[:, 0], [0, 1, 2])
    np.testing.assert_array_equal(dist, 0.0)


class TuneModeTest(absltest.TestCase):

  def test_data_pass_on_digits(self):
    config = digits.get_config()
    workdir = self.create_tempdir().full_path
    result = tune.tune(config, workdir)
    train = input_pipeline.load_split_arrays(config, 'train')
    self.assertEqual(result['num_images'], len(train))
    self.assertAlmostEqual(result['sigma_begin'],
                           brute_force_max_distance(train), places=3)
    with open(os.path.join(workdir, 'tune.json')) as f:
      saved = json.load(f)
    for key in ('sigma_begin', 'num_classes', 'step_lr', 'n_steps_each',
                'gamma', 'variance_ratio'):
      self.assertIn(key, saved)
    self.assertEqual(saved['dim'], 64)
    # The snippet sets the tuned fields of a config.
    with open(os.path.join(workdir, 'tune_config.py')) as f:
      snippet = f.read()
    exec(snippet, {'config': config})  # pylint: disable=exec-used
    self.assertEqual(config.model.num_classes, result['num_classes'])
    self.assertAlmostEqual(config.model.sigma_begin, result['sigma_begin'],
                           places=4)

    # Larger than tune.max_images: a random subset of tune.subset_size.
    config = digits.get_config()
    config.tune.max_images = 1000
    config.tune.subset_size = 300
    images, total = tune.training_images(config, 0)
    self.assertEqual((len(images), total), (300, len(train)))
    flat = train.reshape(len(train), -1)
    for image in images[:20]:
      self.assertIn(0.0, np.abs(flat - image.reshape(-1)).sum(axis=1))

  def test_given_sigma_skips_the_data_pass_through_run_py(self):
    workdir = self.create_tempdir().full_path
    env = dict(os.environ, JAX_PLATFORMS='cpu')
    # An unknown dataset would fail if the data were read.
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, 'run.py'),
         f'--config={os.path.join(ROOT, "configs", "cifar10_ncsnv2.py")}',
         f'--workdir={workdir}', '--mode=tune',
         '--config.tune.sigma_begin=50', '--config.data.dataset=none'],
        env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    self.assertEqual(result.returncode, 0, result.stderr[-3000:])
    self.assertIn('config.model.num_classes = 220', result.stdout)
    with open(os.path.join(workdir, 'tune.json')) as f:
      saved = json.load(f)
    self.assertEqual(saved['sigma_begin'], 50.0)
    self.assertEqual(saved['sigma_begin_source'], 'config.tune.sigma_begin')


if __name__ == '__main__':
  absltest.main()
