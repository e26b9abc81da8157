"""Tests for models.pooling: both forms agree, the backend picks the form."""

from unittest import mock

from absl.testing import absltest
from absl.testing import parameterized
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ncsn_jax import backend
from ncsn_jax.models import layers


def _x(shape, seed=0):
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape),
                     jnp.float32)


def _uses_reduce_window(fn, x) -> bool:
  return 'reduce_window' in str(jax.make_jaxpr(fn)(x))


class PoolingTest(parameterized.TestCase):

  @parameterized.parameters(
      ((2, 7, 6, 3), 3, 1, 1), ((1, 8, 9, 2), 3, 2, 0),
      ((1, 35, 35, 1), 3, 2, 0), ((2, 8, 8, 4), 5, 1, 2),
      ((1, 5, 5, 2), 5, 1, 0), ((1, 3, 3, 1), 3, 1, 1),
  )
  def test_shifted_views_match_reduce_window(self, shape, size, stride,
                                             padding):
    x = _x(shape)
    window, strides = (size, size), (stride, stride)
    pads = ((padding, padding),) * 2
    flax_max = nn.max_pool(x, window, strides, pads)
    for shifted in (True, False):
      np.testing.assert_array_equal(
          layers.max_pool(x, size, stride, padding, shifted), flax_max)
    for include in (True, False):
      flax_avg = nn.avg_pool(x, window, strides, pads,
                             count_include_pad=include)
      for shifted in (True, False):
        np.testing.assert_allclose(
            layers.avg_pool(x, size, stride, padding, include, shifted),
            flax_avg, rtol=1e-6, atol=1e-6)

  @parameterized.parameters(True, False)
  def test_padding_counts_and_never_wins(self, shifted):
    ones = jnp.ones((1, 4, 4, 1))
    # Not counted: all ones. Counted: corner 4/9, edge 6/9, interior 1.
    np.testing.assert_allclose(
        layers.avg_pool(ones, 3, 1, 1, False, shifted), 1.0, rtol=1e-6)
    counted = np.asarray(layers.avg_pool(ones, 3, 1, 1, True, shifted))
    np.testing.assert_allclose(counted[0, [0, 0, 1], [0, 1, 1], 0],
                               [4 / 9, 6 / 9, 1.0], rtol=1e-6)
    negative = -1.0 - jnp.abs(_x((1, 4, 4, 1), seed=1))
    self.assertTrue(np.all(np.asarray(
        layers.max_pool(negative, 5, 1, 2, shifted)) < -1.0))

  def test_gradients_match_without_ties(self):
    x = _x((1, 6, 6, 2), seed=2)
    loss = lambda f: lambda v: jnp.sum(jnp.sin(f(v)))
    for pool in (layers.max_pool, layers.avg_pool):
      grads = [jax.grad(loss(lambda v, s=s: pool(v, 5, 1, 2,
                                                 shifted_views=s)))(x)
               for s in (True, False)]
      np.testing.assert_allclose(grads[0], grads[1], atol=1e-5)

  def test_forms_and_the_backend_choice(self):
    x = _x((1, 6, 6, 1))
    for pool in (layers.max_pool, layers.avg_pool):
      self.assertFalse(_uses_reduce_window(
          lambda v, p=pool: p(v, 3, shifted_views=True), x))
      self.assertTrue(_uses_reduce_window(
          lambda v, p=pool: p(v, 3, shifted_views=False), x))
      # None: the backend decides when the function is traced.
      for shifted in (True, False):
        with mock.patch.object(backend, 'shifted_view_pools',
                               return_value=shifted):
          self.assertEqual(_uses_reduce_window(
              lambda v, p=pool: p(v, 3), x), not shifted)
    self.assertTrue(backend.shifted_view_pools('cpu'))
    self.assertFalse(backend.shifted_view_pools('gpu'))
    self.assertFalse(backend.shifted_view_pools('tpu'))

  def test_window_too_large(self):
    for shifted in (True, False):
      with self.assertRaisesRegex(ValueError, '5x5 window'):
        layers.max_pool(jnp.zeros((1, 3, 3, 1)), 5,
                        shifted_views=shifted)


if __name__ == '__main__':
  absltest.main()
