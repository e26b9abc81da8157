"""Tests of the NCSN toy experiments (2-D Gaussian mixture)."""

import json
import os
import re
import subprocess
import sys

from absl.testing import absltest
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ncsn_jax.experiments import toy

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class ToyTest(absltest.TestCase):

  def test_density_and_score(self):
    x = jax.random.normal(jax.random.key(0), (50, 2)) * 4
    for sigma in (0.0, 3.0):
      fd = []
      for i in range(2):
        e = jnp.zeros(2).at[i].set(1e-2)
        fd.append((toy.log_density(x + e, sigma) -
                   toy.log_density(x - e, sigma)) / 2e-2)
      np.testing.assert_allclose(toy.true_score(x, sigma),
                                 jnp.stack(fd, -1), atol=2e-2)
    # Normalised: integrates to 1 on a grid.
    axis = jnp.linspace(-12, 12, 241)
    grid = jnp.stack(jnp.meshgrid(axis, axis), -1).reshape(-1, 2)
    self.assertAlmostEqual(
        float(jnp.exp(toy.log_density(grid)).sum() * 0.1**2), 1.0,
        places=3)
    samples = toy.sample_data(jax.random.key(1), 20_000)
    self.assertAlmostEqual(toy.upper_mode_fraction(samples), 0.8,
                           delta=0.01)

  def test_train_fn_ema(self):
    # Rate 0 (EMA off): the EMA weights are the parameters, bit for bit.
    # Otherwise ema <- m ema + (1 - m) params after every step.
    loss_fn = lambda p, x, keys: (jnp.mean((x @ p['w'])**2), {})
    tx = optax.sgd(0.1)
    params = {'w': jnp.array([1.0, -2.0])}
    key = jax.random.key(0)
    p, ema, _ = toy.get_train_fn(loss_fn, tx, 3, 8)(params, key)
    np.testing.assert_array_equal(ema['w'], p['w'])
    self.assertFalse(np.allclose(p['w'], params['w']))  # It trained.
    p1, ema1, _ = toy.get_train_fn(loss_fn, tx, 1, 8, 0.5)(params, key)
    p2, ema2, _ = toy.get_train_fn(loss_fn, tx, 2, 8, 0.5)(params, key)
    np.testing.assert_allclose(ema1['w'], 0.5 * params['w'] + 0.5 * p1['w'],
                               rtol=1e-6)
    np.testing.assert_allclose(ema2['w'], 0.5 * ema1['w'] + 0.5 * p2['w'],
                               rtol=1e-6)

  def test_paper_result_with_learned_scores(self):
    # `run.py --mode=toy` end to end with the full configuration (10k steps
    # per model, ~20 s on 2 cores). Running the programs, not compiling
    # them, is most of its time, so it compiles at XLA's default
    # optimisation level (the suite's is 0: tests/conftest.py).
    workdir = self.create_tempdir().full_path
    env = dict(os.environ, XLA_FLAGS=re.sub(
        r'--xla_backend_optimization_level=\d+',
        '--xla_backend_optimization_level=3', os.environ['XLA_FLAGS']))
    result = subprocess.run([
        sys.executable, os.path.join(ROOT, 'run.py'),
        f'--config={os.path.join(ROOT, "configs", "toy_gmm.py")}',
        '--mode=toy', f'--workdir={workdir}'
    ], env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
    self.assertEqual(result.returncode, 0, result.stderr[-3000:])
    root = os.path.join(workdir, 'toy')
    with open(os.path.join(root, 'report.json')) as f:
      report = json.load(f)
    self.assertAlmostEqual(report['annealed_weight'], 0.8, delta=0.05)
    self.assertGreater(abs(report['langevin_weight'] - 0.8), 0.1)
    # SSM learns the score near the modes, not far from them.
    errors = report['score_error']
    self.assertLess(errors['high_density'], 0.05)
    self.assertGreater(errors['low_density'], 100 * errors['high_density'])
    for name in ('scores.png', 'samples.png', 'loss_curves.png'):
      self.assertGreater(os.path.getsize(os.path.join(root, name)), 1000)
    # The console line is the report's.
    self.assertIn(f'annealed_weight: {report["annealed_weight"]:.3f}, '
                  f'langevin_weight: {report["langevin_weight"]:.3f}',
                  result.stdout)


if __name__ == '__main__':
  absltest.main()
