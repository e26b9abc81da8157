"""Tests for bench/: interleaving, the worker protocol, the chip table, the
FLOP count (by hand, against XLA:CPU, the CIFAR-10 network, a faked GPU),
the plain config, the backend's CPU-only choices off the CPU, and the GPU
script (bench.py, the compile-cache and the loop benchmarks) run end to end
on the CPU (tiny model) without tensorflow, tfds, clu or ml_collections
importable."""

import glob
import json
import os
import subprocess
import sys
import textwrap
from unittest import mock

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
from bench import chips
from bench import flops
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
    frac = chips.fraction_of_peak(2 * 494e12, 'NVIDIA H200', 'float32', 4)
    self.assertAlmostEqual(frac['of_tf32_peak'], 0.5)
    self.assertEqual(chips.fid50k_seconds(1161.0), 50_000.0)
    self.assertIn('50000 x (1160 + 1 denoise)',
                  chips.fid50k_formula(1161.0, 1000))
    # 50,000 x 1161 evaluations of 18 GFLOP at 989 TFLOP/s.
    bound = chips.fid50k_bound_seconds(18e9, 'NVIDIA H200', 'bfloat16')
    self.assertEqual(set(bound), {'bfloat16'})
    self.assertAlmostEqual(bound['bfloat16'], 50_000 * 1161 * 18e9 / 989e12)
    bound = chips.fid50k_bound_seconds(18e9, 'NVIDIA H200', 'float32')
    self.assertAlmostEqual(bound['tf32'], 50_000 * 1161 * 18e9 / 494e12)
    self.assertAlmostEqual(bound['float32'], 50_000 * 1161 * 18e9 / 67e12)
    self.assertEqual(chips.fid50k_bound_seconds(18e9, 'cpu', 'float32'), {})


def _xla_cpu_flops(fn, *args) -> float:
  """XLA:CPU's own count (it counts convolutions, unlike a GPU's)."""
  cost = jax.jit(fn).lower(*args).compile().cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0]
  return float(cost['flops'])


_DN = ('NHWC', 'HWIO', 'NHWC')
_CONVS = {
    'same': dict(window_strides=(1, 1), padding='SAME'),
    'stride2': dict(window_strides=(2, 2), padding='SAME'),
    'dilated': dict(window_strides=(1, 1), padding=((2, 2), (2, 2)),
                    rhs_dilation=(2, 2)),
    'valid': dict(window_strides=(1, 1), padding='VALID'),
    'groups': dict(window_strides=(1, 1), padding='SAME',
                   feature_group_count=2),
}


class FlopsTest(parameterized.TestCase):

  def test_by_hand(self):
    x = jax.ShapeDtypeStruct((2, 5, 5, 3), jnp.float32)
    w = jax.ShapeDtypeStruct((3, 3, 3, 4), jnp.float32)
    conv = lambda x, w: jax.lax.conv_general_dilated(
        x, w, (1, 1), 'VALID', dimension_numbers=_DN)
    # 2 images x 3x3 outputs x 4 features, each 3x3x3 multiply-adds.
    self.assertEqual(flops.count(conv, x, w), 2 * (2 * 9 * 4) * 27)
    a = jax.ShapeDtypeStruct((6, 7), jnp.float32)
    b = jax.ShapeDtypeStruct((7, 5), jnp.float32)
    self.assertEqual(flops.count(jnp.dot, a, b), 2 * 6 * 7 * 5)
    # Sub-programs: jit inside scan (x its length), cond (costliest branch).
    body = lambda c, _: (jax.jit(jnp.dot)(c, jnp.ones((7, 7))), None)
    scanned = lambda a: jax.lax.scan(body, a, None, length=3)[0]
    self.assertEqual(flops.count(scanned, a), 3 * 2 * 6 * 7 * 7)
    cond = lambda p, a, b: jax.lax.cond(p, lambda: a @ b,
                                        lambda: jnp.zeros((6, 5)))
    self.assertEqual(flops.count(cond, True, a, b), 2 * 6 * 7 * 5)
    loop = lambda a: jax.lax.while_loop(lambda c: c[0, 0] < 1, lambda c: c @ c,
                                        jnp.ones((3, 3)))
    with self.assertRaisesRegex(ValueError, 'while loop'):
      flops.count(loop, a)

  @parameterized.named_parameters(
      dict(testcase_name=name, kwargs=kwargs)
      for name, kwargs in _CONVS.items())
  def test_convolutions_as_xla_cpu_counts_them(self, kwargs):
    k1, k2 = jax.random.split(jax.random.key(0))
    x = jax.random.normal(k1, (2, 12, 12, 8))
    groups = kwargs.get('feature_group_count', 1)
    w = jax.random.normal(k2, (3, 3, 8 // groups, 6))
    conv = lambda x, w: jax.lax.conv_general_dilated(
        x, w, dimension_numbers=_DN, **kwargs)

    def with_grads(x, w, ct):  # Forward, input and kernel gradient.
      out, vjp = jax.vjp(conv, x, w)
      return out, vjp(ct)

    ct = conv(x, w)
    self.assertEqual(flops.count(conv, x, w), _xla_cpu_flops(conv, x, w))
    self.assertEqual(flops.count(with_grads, x, w, ct),
                     _xla_cpu_flops(with_grads, x, w, ct))

  def test_pmapped_step_counts_every_device(self):
    config = tiny.get_config()
    config.training.batch_size = 8
    model = models.create_model(config)
    state = train_state.abstract_train_state(config)
    images, keys = jax_timers.train_inputs(config, abstract=True)
    step = lambda s, x, k: step_lib.multi_train_step(
        s, x, k, config=config, loss_fn=losses.get_loss_fn(config, model),
        tx=train_state.create_optimizer(config))
    self.assertEqual(jax.local_device_count(), 4)  # conftest.
    self.assertEqual(jax_timers.train_flops(config),
                     flops.count(step, state, images, keys))

  def test_cifar10_forward_is_18_gflop_and_train_3x(self):
    """The route bench.py takes, for configs/cifar10_ncsnv2.py."""
    config = plain_config.get_config()
    self.assertEqual((config.model.ngf, config.data.image_size,
                      config.data.channels), (128, 32, 3))
    forward = jax_timers.forward_flops(config)
    self.assertBetween(forward / 18.0e9, 0.98, 1.02)
    train = jax_timers.train_flops(jax_timers.train_config(config, 4)) / 4
    # Forward, input and kernel gradients, less the input gradient of the
    # first layer (the data needs none).
    self.assertBetween(train / forward, 2.99, 3.0)

  def test_never_from_cost_analysis_on_a_gpu(self):
    config = tiny.get_config()
    cpu = {'forward': jax_timers.forward_flops(config),
           'train': jax_timers.train_flops(config)}
    seen = []
    original = jax.stages.Compiled.cost_analysis

    def spy(compiled):
      seen.append(jax.default_backend())
      return original(compiled)

    with mock.patch.object(jax, 'default_backend', return_value='gpu'), \
        mock.patch.object(jax.stages.Compiled, 'cost_analysis', spy):
      self.assertFalse(jax_timers.cpu_only_paths()['shifted_view_pools'])
      _, forward = jax_timers.forward(config, 4)
      _, sampler = jax_timers.sampler(config, 4, levels=1)
      self.assertEqual(jax_timers.train_flops(config), cpu['train'])
    self.assertEqual(seen, [])
    self.assertEqual(forward['flops_per_item'], cpu['forward'])
    # A chain step is one network evaluation (plus elementwise work).
    self.assertEqual(sampler['flops_per_item'], cpu['forward'])
    for path in glob.glob(os.path.join(ROOT, 'bench', '*.py')):
      with open(path) as f:
        self.assertNotIn('cost_analysis', f.read(), path)


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
    # Only traced: shapes are enough.
    state = train_state.abstract_train_state(config)
    images = jnp.zeros((2, 4, 8, 8, 3))
    keys = jax.vmap(lambda k: parallel.per_example_keys(k, 4))(
        jax.random.split(jax.random.key(1), 2))
    loss_fn = losses.get_loss_fn(config, model)
    traced = {}
    for name in ('cpu', 'gpu'):
      # New functions each time: a traced function's jaxpr is cached.
      multi = lambda s, x, k: step_lib.multi_train_step(
          s, x, k, config=config, loss_fn=loss_fn, tx=tx)
      forward = lambda p, x: model.apply({'params': p}, x,
                                         jnp.zeros((4,), jnp.int32))
      with mock.patch.object(jax, 'default_backend', return_value=name):
        traced[name] = (
            str(jax.make_jaxpr(forward)(state.params, images[0])),
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
    tiny_flags = '--ngf=4 --image_size=8 --batch=4'
    env = dict(os.environ,
               PYTHONPATH=tmp,
               PYTHON=sys.executable,
               JSON=out,
               JAX_PLATFORMS='cpu',
               TORCH_PYTHON='/nonexistent',
               CACHE_FLAGS=tiny_flags,
               LOOP_FLAGS=f'{tiny_flags} --steps=3 --rounds=2 --log_freq=2 '
               '--pause=0')
    env.pop('NCSNV2_REPO', None)
    proc = subprocess.run([
        'bash',
        os.path.join(ROOT, 'bench', 'gpu.sh'), '--ngf=4', '--image_size=8',
        '--batch=4', '--dtypes=float32', '--sample_batches=2,4',
        '--sample_dtypes=float32',
        '--rounds=2', '--steps=1', '--pause=0', '--threads=2'
    ],
                          env=env,
                          capture_output=True,
                          text=True,
                          timeout=1200,
                          check=False)
    self.assertEqual(proc.returncode, 0, proc.stderr[-3000:])
    self.assertIn('FID-50k sampling', proc.stdout)
    self.assertIn('loop / bare', proc.stdout)
    with open(out) as f:
      r = json.load(f)
    self.assertFalse(r['ml_collections'])
    self.assertEqual(r['backend'], 'cpu')
    self.assertTrue(r['cpu_only_paths']['shifted_view_pools'])
    forward_flops = r['flops']['forward_per_image']
    self.assertEqual(forward_flops,
                     jax_timers.forward_flops(_tiny_cifar10_config()))
    # bfloat16 (gpu.sh's second dtype) is left out here: a second train-step
    # compile on the CPU; tests/step_test.py trains in bfloat16.
    self.assertEqual(set(r['train']), {'ncsn_jax float32'})
    train = r['train']['ncsn_jax float32']
    self.assertLen(train['seconds'], 2)
    for key in ('median_per_s', 'compile_s', 'flops_per_item', 'flop_per_s'):
      self.assertGreater(train[key], 0, key)
    self.assertEqual(train['flops_per_item'], r['flops']['train_per_image'])
    self.assertAlmostEqual(train['flop_per_s'],
                           train['flops_per_item'] * train['median_per_s'])
    # The new state is written into the donated one.
    self.assertGreaterEqual(train['memory']['alias_bytes'],
                            train['state_bytes'])
    self.assertFalse(train['hlo_has_reduce_window'])  # CPU: shifted views.
    self.assertGreater(r['forward']['ncsn_jax float32']['median_per_s'], 0)
    self.assertEqual(r['forward']['ncsn_jax float32']['flops_per_item'],
                     forward_flops)
    self.assertNotIn('pytorch', r['train'])
    sampler = r['sampler']['float32']
    self.assertEqual(set(sampler['per_batch']), {'2', '4'})
    best = sampler['per_batch'][str(sampler['best_batch'])]
    self.assertEqual(best['evals_per_call'], sampler['best_batch'] * 2 * 5)
    self.assertAlmostEqual(sampler['fid50k_seconds'],
                           50_000 * 1161 / best['score_evals_per_s'])
    self.assertEqual(sampler['fid50k_bound_seconds'], {})  # No CPU peak.
    self.assertGreater(r['sampler']['compile']['compile_s_232x5'], 0)
    self.assertGreater(r['sampler']['compile']['compile_ratio'], 0)
    self.assertIn('jax', r['versions'])

    with open(out.replace('.json', '_cache.json')) as f:
      cache = json.load(f)
    self.assertEqual(cache['program'], 'step')
    self.assertGreater(cache['cold']['cache_events'].get('cache_misses', 0), 0)
    self.assertGreater(cache['warm']['cache_events'].get('cache_hits', 0), 0)
    self.assertNotIn('cache_misses', cache['warm']['cache_events'])
    self.assertGreater(cache['cold']['train_step_compile_s'], 0)
    self.assertGreater(cache['train_step_ratio'], 0)

    with open(out.replace('.json', '_loop.json')) as f:
      loop = json.load(f)
    self.assertEqual((loop['batch'], loop['ngf'], loop['image_size']),
                     (4, 4, 8))
    for side in ('bare', 'loop'):
      self.assertLen(loop[side]['seconds'], 2)
      self.assertGreater(loop[side]['median_per_s'], 0)
    self.assertAlmostEqual(
        loop['loop_over_bare'],
        loop['loop']['median_per_s'] / loop['bare']['median_per_s'])


def _tiny_cifar10_config():
  config = plain_config.get_config()
  config.model.ngf, config.data.image_size = 4, 8
  return config


if __name__ == '__main__':
  absltest.main()
