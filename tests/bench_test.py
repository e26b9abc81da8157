"""Tests for bench/: interleaving, the worker protocol, the chip table, the
plain config, the backend's CPU-only choices off the CPU, and the GPU script
run end to end on the CPU (tiny model) without tensorflow, tfds, clu or
ml_collections importable."""

import json
import os
import subprocess
import sys
import textwrap
from unittest import mock

from absl.testing import absltest
import jax
import jax.numpy as jnp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
from bench import chips
from bench import interleave
from bench import jax_timers
from bench import plain_config
from configs import tiny
from ncsn_jax import backend
from ncsn_jax import models
from ncsn_jax import parallel
from ncsn_jax.training import losses
from ncsn_jax.training import step as step_lib
from ncsn_jax import train_state

BLOCKED = ('tensorflow', 'tensorflow_datasets', 'clu', 'ml_collections')

# Installed as sitecustomize.py: the path finder no longer sees these
# packages, as if they were not installed (find_spec gives None, import
# raises ModuleNotFoundError).
_BLOCKER = f"""
import importlib.machinery
BLOCKED = {BLOCKED!r}
_find_spec = importlib.machinery.PathFinder.find_spec

def _hidden(cls, fullname, path=None, target=None):
  if fullname.split('.')[0] in BLOCKED:
    return None
  return _find_spec(fullname, path, target)

importlib.machinery.PathFinder.find_spec = classmethod(_hidden)
"""


class InterleaveTest(absltest.TestCase):

  def test_sides_alternate_after_warmup_and_ratio_of_medians(self):
    calls = []

    def side(name, seconds):

      def timer(what, n):
        calls.append((name, what, n))
        return seconds.pop(0) * n

      return timer

    times = interleave.interleave(
        {
            'a': side('a', [9.0, 1.0, 3.0, 2.0]),
            'b': side('b', [9.0, 4.0, 8.0, 6.0])
        },
        'train',
        steps=2,
        rounds=3,
        pause=0.0)
    self.assertEqual(calls, [('a', 'train', 1), ('b', 'train', 1)] +
                     [(s, 'train', 2) for _ in range(3) for s in 'ab'])
    self.assertEqual(times, {'a': [1.0, 3.0, 2.0], 'b': [4.0, 8.0, 6.0]})
    out = interleave.compare(times, items=4)
    self.assertEqual(out['a']['median_s'], 2.0)
    self.assertEqual(out['a']['median_per_s'], 2.0)
    self.assertEqual(out['a']['spread'], 1.0)
    self.assertEqual(out['b']['best_per_s'], 1.0)
    self.assertEqual(out['ratio'], 3.0)  # a's median step is 3x shorter.

  def test_worker_serves_timed_steps_over_pipes(self):
    script = textwrap.dedent("""
        import time
        from bench import interleave
        n = []
        interleave.serve({'nap': lambda: time.sleep(0.05),
                          'count': lambda: n.append(1)}, {'kind': 'fake'})
        """)
    worker = interleave.Worker([sys.executable, '-c', script])
    try:
      self.assertEqual(worker.info, {'kind': 'fake'})
      self.assertGreaterEqual(worker('nap', 3), 0.15)
      self.assertLess(worker('count', 1000), 0.15)
    finally:
      worker.close()


class ChipsTest(absltest.TestCase):

  def test_peaks_and_fid_time(self):
    self.assertEqual(chips.peak_tflops('NVIDIA H200')['bfloat16'], 989.0)
    self.assertEqual(chips.peak_tflops('NVIDIA H100 PCIe')['float32'], 51.0)
    self.assertEqual(
        chips.peak_tflops('NVIDIA H100 80GB HBM3')['float32'], 67.0)
    self.assertIsNone(chips.peak_tflops('cpu'))
    self.assertEqual(chips.fraction_of_peak(1e9, 'cpu', 'float32'), {})
    frac = chips.fraction_of_peak(67e12, 'NVIDIA H200', 'float32')
    self.assertAlmostEqual(frac['of_float32_peak'], 1.0)
    self.assertAlmostEqual(frac['of_tf32_peak'], 67 / 494)
    self.assertEqual(chips.fid50k_seconds(1161.0), 50_000.0)
    self.assertIn('50000 x (1160 + 1 denoise)',
                  chips.fid50k_formula(1161.0, 1000))


class PlainConfigTest(absltest.TestCase):

  def test_same_fields_as_the_config_dict(self):
    plain = plain_config.get_config(plain=True)
    self.assertIsInstance(plain, plain_config.AttrDict)
    self.assertEqual(plain.model.ngf, 128)
    self.assertEqual(json.loads(json.dumps(plain)),
                     plain_config.get_config().to_dict())


class BackendChoicesTest(absltest.TestCase):
  """Off the CPU, the CPU-only code paths (ncsn_jax.backend) are off."""

  def test_decisions_by_platform_name(self):
    for name in ('gpu', 'cuda', 'rocm', 'tpu'):
      self.assertFalse(backend.shifted_view_pools(name))
      self.assertEqual(backend.winograd_min_pixels(name), 0)
      self.assertIsNone(backend.inception_micro_batch(name))
      self.assertFalse(backend.unroll_train_steps(name))
    self.assertTrue(backend.shifted_view_pools('cpu'))
    self.assertTrue(backend.unroll_train_steps('cpu'))
    self.assertGreater(backend.winograd_min_pixels('cpu'), 0)

  def test_traced_programs_follow_a_faked_gpu_backend(self):
    config = tiny.get_config()
    model = models.create_model(config)
    tx = train_state.create_optimizer(config)
    state = train_state.create_train_state(config, model, tx, jax.random.key(0))
    images = jnp.zeros((2, 4, 8, 8, 3))
    keys = jax.vmap(lambda k: parallel.per_example_keys(k, 4))(
        jax.random.split(jax.random.key(1), 2))
    loss_fn = losses.get_loss_fn(config, model)
    traced = {}
    for name in ('cpu', 'gpu'):
      # New functions each time: a traced function's jaxpr is cached.
      multi = lambda s, x, k: step_lib.multi_train_step(
          s, x, k, config=config, loss_fn=loss_fn, tx=tx)
      forward = lambda x: model.apply({'params': state.params}, x,
                                      jnp.zeros((4,), jnp.int32))
      with mock.patch.object(jax, 'default_backend', return_value=name):
        traced[name] = (str(jax.make_jaxpr(forward)(images[0])),
                        str(jax.make_jaxpr(multi)(state, images, keys)))
        self.assertEqual(jax_timers.cpu_only_paths()['shifted_view_pools'],
                         name == 'cpu')
    # assertTrue, not assertIn: a failure would print the whole jaxpr.
    self.assertTrue('reduce_window' in traced['gpu'][0])
    self.assertFalse('reduce_window' in traced['cpu'][0])
    self.assertTrue('scan[' in traced['gpu'][1])
    self.assertFalse('scan[' in traced['cpu'][1])


class GpuScriptTest(absltest.TestCase):

  def test_runs_on_cpu_without_tf_tfds_clu_ml_collections(self):
    tmp = self.create_tempdir().full_path
    with open(os.path.join(tmp, 'sitecustomize.py'), 'w') as f:
      f.write(_BLOCKER)
    out = os.path.join(tmp, 'bench.json')
    env = dict(os.environ,
               PYTHONPATH=tmp,
               PYTHON=sys.executable,
               JSON=out,
               JAX_PLATFORMS='cpu',
               TORCH_PYTHON='/nonexistent')
    env.pop('NCSNV2_REPO', None)
    proc = subprocess.run([
        'bash',
        os.path.join(ROOT, 'bench', 'gpu.sh'), '--ngf=4', '--image_size=8',
        '--batch=2', '--sample_batches=2,4', '--rounds=2', '--steps=1',
        '--pause=0', '--threads=2'
    ],
                          env=env,
                          capture_output=True,
                          text=True,
                          timeout=1200,
                          check=False)
    self.assertEqual(proc.returncode, 0, proc.stderr[-3000:])
    self.assertIn('FID-50k sampling', proc.stdout)
    with open(out) as f:
      r = json.load(f)
    self.assertFalse(r['ml_collections'])
    self.assertEqual(r['backend'], 'cpu')
    self.assertTrue(r['cpu_only_paths']['shifted_view_pools'])
    for dtype in ('float32', 'bfloat16'):
      train = r['train'][f'ncsn_jax {dtype}']
      self.assertLen(train['seconds'], 2)
      for key in ('median_per_s', 'compile_s', 'flops_per_item', 'flop_per_s'):
        self.assertGreater(train[key], 0, key)
      self.assertFalse(train['hlo_has_reduce_window'])  # CPU: shifted views.
    self.assertGreater(r['ratios']['train bfloat16 / float32'], 0)
    self.assertGreater(r['forward']['ncsn_jax float32']['median_per_s'], 0)
    self.assertNotIn('pytorch', r['train'])
    sampler = r['sampler']
    self.assertEqual(set(sampler['per_batch']), {'2', '4'})
    best = sampler['per_batch'][str(sampler['best_batch'])]
    self.assertEqual(best['evals_per_call'], sampler['best_batch'] * 2 * 5)
    self.assertAlmostEqual(sampler['fid50k_seconds'],
                           50_000 * 1161 / best['score_evals_per_s'])
    self.assertGreater(sampler['compile_s_232x5'], 0)
    self.assertGreater(sampler['compile_ratio'], 0)
    self.assertIn('jax', r['versions'])


if __name__ == '__main__':
  absltest.main()
