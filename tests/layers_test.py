"""Tests of the RefineNet building blocks."""

import functools
from unittest import mock

from absl.testing import absltest
from absl.testing import parameterized
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ncsn_jax import backend
from ncsn_jax.models import layers
from ncsn_jax.models import normalization


def np_bilinear_align_corners(x, oh, ow):
  """Direct per-pixel oracle of PyTorch bilinear, align_corners=True."""
  b, h, w, c = x.shape
  out = np.zeros((b, oh, ow, c))
  for i in range(oh):
    for j in range(ow):
      si = i * (h - 1) / (oh - 1) if oh > 1 else 0.0
      sj = j * (w - 1) / (ow - 1) if ow > 1 else 0.0
      i0, j0 = int(np.floor(si)), int(np.floor(sj))
      i1, j1 = min(i0 + 1, h - 1), min(j0 + 1, w - 1)
      di, dj = si - i0, sj - j0
      out[:, i, j] = ((1 - di) * (1 - dj) * x[:, i0, j0] +
                      (1 - di) * dj * x[:, i0, j1] +
                      di * (1 - dj) * x[:, i1, j0] + di * dj * x[:, i1, j1])
  return out


class LayersTest(parameterized.TestCase):

  @parameterized.parameters((4, 4, 8, 8), (7, 5, 14, 10), (3, 6, 5, 9),
                            (6, 6, 6, 6))
  def test_align_corners_resize_matches_oracle(self, h, w, oh, ow):
    x = np.random.RandomState(0).randn(2, h, w, 3).astype(np.float32)
    out = layers.resize_bilinear_align_corners(jnp.asarray(x), (oh, ow))
    np.testing.assert_allclose(out, np_bilinear_align_corners(x, oh, ow),
                               atol=1e-5)

  def test_align_corners_keeps_corners_and_differs_from_half_pixel(self):
    x = np.random.RandomState(1).randn(1, 4, 4, 1).astype(np.float32)
    out = np.asarray(layers.resize_bilinear_align_corners(x, (8, 8)))
    for i, j in ((0, 0), (0, -1), (-1, 0), (-1, -1)):
      self.assertAlmostEqual(out[0, i, j, 0], x[0, i, j, 0], places=5)
    half_pixel = np.asarray(jax.image.resize(x, (1, 8, 8, 1), 'bilinear'))
    self.assertGreater(np.abs(out - half_pixel).max(), 1e-2)

  @parameterized.parameters((1, 1), (3, 1), (3, 2), (3, 4))
  def test_conv_keeps_size_and_uses_pytorch_init(self, kernel, dilation):
    conv = layers.Conv2d(300, kernel, dilation)
    x = jnp.ones((1, 9, 9, 16))
    variables = conv.init(jax.random.key(0), x)
    self.assertEqual(conv.apply(variables, x).shape, (1, 9, 9, 300))
    bound = 1 / np.sqrt(16 * kernel * kernel)
    for name in ('kernel', 'bias'):
      p = np.asarray(variables['params'][name])
      self.assertLessEqual(np.abs(p).max(), bound)
      self.assertGreater(np.abs(p).max(), 0.9 * bound)

  def test_dilated_conv_equals_explicit_correlation(self):
    rng = np.random.RandomState(2)
    x = rng.randn(1, 7, 7, 2).astype(np.float32)
    conv = layers.Conv2d(3, 3, dilation=2)
    variables = conv.init(jax.random.key(0), x)
    k = np.asarray(variables['params']['kernel'])
    bias = np.asarray(variables['params']['bias'])
    xp = np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)))
    expected = np.zeros((1, 7, 7, 3))
    for i in range(7):
      for j in range(7):
        patch = xp[0, i:i + 5:2, j:j + 5:2, :]  # no kernel flip
        expected[0, i, j] = np.einsum('hwc,hwco->o', patch, k) + bias
    np.testing.assert_allclose(conv.apply(variables, x), expected, atol=1e-5)

  def test_mean_pool_and_odd_size_error(self):
    x = np.arange(16, dtype=np.float32).reshape(1, 4, 4, 1)
    out = np.asarray(layers.mean_pool2x2(x))
    np.testing.assert_allclose(out[0, :, :, 0], [[2.5, 4.5], [10.5, 12.5]])
    with self.assertRaisesRegex(ValueError, 'even'):
      layers.mean_pool2x2(np.zeros((1, 7, 7, 1)))

  def test_crp_pooling_border_semantics(self):
    # An identity-like check of the pools: a single bright pixel in a
    # negative field spreads as max pooling (padding -inf) and averages with
    # the zero padding counted (avg pooling).
    x = -np.ones((1, 6, 6, 1), np.float32)
    mx = np.asarray(jax.lax.reduce_window(
        x, -np.inf, jax.lax.max, (1, 5, 5, 1), (1, 1, 1, 1),
        ((0, 0), (2, 2), (2, 2), (0, 0))))
    np.testing.assert_array_equal(
        nn.max_pool(x, (5, 5), (1, 1), ((2, 2), (2, 2))), mx)
    self.assertEqual(float(mx[0, 0, 0, 0]), -1.0)  # -inf padding ignored
    avg = np.asarray(nn.avg_pool(x, (5, 5), (1, 1), ((2, 2), (2, 2))))
    self.assertAlmostEqual(float(avg[0, 0, 0, 0]), -9 / 25, places=6)

  @parameterized.parameters('max', 'avg')
  def test_crp_pools_follow_the_backend_and_agree(self, pool):
    crp = layers.CRPBlock(3, pool=pool)
    x = jnp.asarray(np.random.RandomState(3).randn(1, 6, 6, 3), jnp.float32)
    y = jnp.zeros(1, jnp.int32)
    variables = crp.init(jax.random.key(0), x, y)
    outs = {}
    for shifted in (True, False):
      with mock.patch.object(backend, 'shifted_view_pools',
                             return_value=shifted):
        jaxpr = str(jax.make_jaxpr(crp.apply)(variables, x, y))
        self.assertEqual('reduce_window' in jaxpr, not shifted)
        outs[shifted] = crp.apply(variables, x, y)
    np.testing.assert_allclose(outs[True], outs[False], rtol=1e-5, atol=1e-6)

  def test_bias_placement(self):
    norm = functools.partial(normalization.CondInstanceNormPlusPlus, 4)
    x = jnp.ones((2, 8, 8, 6))
    y = jnp.array([0, 3])
    rcu = layers.RCUBlock(6, 2, 2, norm=norm)
    p = rcu.init(jax.random.key(0), x, y)['params']
    self.assertEqual(sorted(p), ['1_1_conv', '1_1_norm', '1_2_conv',
                                 '1_2_norm', '2_1_conv', '2_1_norm',
                                 '2_2_conv', '2_2_norm'])
    self.assertNotIn('bias', p['1_1_conv'])
    crp = layers.CRPBlock(6, pool='avg')
    p = crp.init(jax.random.key(0), x, y)['params']
    self.assertEqual(sorted(p), ['convs_0', 'convs_1'])
    self.assertNotIn('bias', p['convs_0'])
    msf = layers.MSFBlock(6)
    p = msf.init(jax.random.key(0), [x, x[:, :4, :4]], y, (8, 8))['params']
    self.assertIn('bias', p['convs_1'])

  @parameterized.named_parameters(
      ('plain', None, None, 8, 8, {'conv1', 'conv2', 'normalize1',
                                   'normalize2'}),
      ('widen', None, None, 16, 8, {'conv1', 'conv2', 'normalize1',
                                    'normalize2', 'shortcut'}),
      ('down', 'down', None, 16, 4, {'conv1', 'conv2', 'normalize1',
                                     'normalize2', 'shortcut'}),
      ('down_dilated', 'down', 2, 8, 8, {'conv1', 'conv2', 'normalize1',
                                         'normalize2', 'shortcut'}))
  def test_residual_block(self, resample, dilation, features, size, names):
    block = layers.ResidualBlock(features, normalization.InstanceNormPlusPlus,
                                 resample=resample, dilation=dilation)
    x = jnp.ones((2, 8, 8, 8)) * jnp.arange(8.0)
    variables = block.init(jax.random.key(0), x, jnp.zeros(2, jnp.int32))
    out = block.apply(variables, x, jnp.zeros(2, jnp.int32))
    self.assertEqual(out.shape, (2, size, size, features))
    self.assertEqual(set(variables['params']), names)
    if resample == 'down' and dilation is None:
      self.assertEqual(variables['params']['shortcut']['conv']['kernel'].shape,
                       (1, 1, 8, features))
    if dilation:
      self.assertEqual(variables['params']['shortcut']['kernel'].shape,
                       (3, 3, 8, features))


if __name__ == '__main__':
  absltest.main()
