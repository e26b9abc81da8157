"""Tests for models.pooling: separable pools equal flax's reduce_window."""

from absl.testing import absltest
from absl.testing import parameterized
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ncsn_jax.models import pooling


def _x(shape, seed=0):
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape),
                     jnp.float32)


class PoolingTest(parameterized.TestCase):

  @parameterized.parameters(
      ((2, 7, 6, 3), 3, 1, 1), ((1, 8, 9, 2), 3, 2, 0),
      ((1, 35, 35, 1), 3, 2, 0), ((2, 8, 8, 4), 5, 1, 2),
      ((1, 5, 5, 2), 5, 1, 0), ((1, 3, 3, 1), 3, 1, 1),
  )
  def test_matches_flax(self, shape, size, stride, padding):
    x = _x(shape)
    window, strides = (size, size), (stride, stride)
    pads = ((padding, padding),) * 2
    np.testing.assert_array_equal(
        pooling.max_pool(x, size, stride, padding),
        nn.max_pool(x, window, strides, pads))
    for include in (True, False):
      np.testing.assert_allclose(
          pooling.avg_pool(x, size, stride, padding, include),
          nn.avg_pool(x, window, strides, pads, count_include_pad=include),
          rtol=1e-6, atol=1e-6)

  def test_padding_counts_and_never_wins(self):
    ones = jnp.ones((1, 4, 4, 1))
    # Not counted: all ones. Counted: corner 4/9, edge 6/9, interior 1.
    np.testing.assert_allclose(pooling.avg_pool(ones, 3, 1, 1, False), 1.0,
                               rtol=1e-6)
    counted = np.asarray(pooling.avg_pool(ones, 3, 1, 1, True))[0, ..., 0]
    np.testing.assert_allclose(counted[[0, 0, 1], [0, 1, 1]],
                               [4 / 9, 6 / 9, 1.0], rtol=1e-6)
    negative = -1.0 - jnp.abs(_x((1, 4, 4, 1), seed=1))
    self.assertTrue(np.all(np.asarray(pooling.max_pool(negative, 5, 1, 2)) <
                           -1.0))

  def test_gradients_match_without_ties(self):
    x = _x((1, 6, 6, 2), seed=2)
    for ours, theirs in [
        (lambda v: pooling.max_pool(v, 5, 1, 2),
         lambda v: nn.max_pool(v, (5, 5), (1, 1), ((2, 2), (2, 2)))),
        (lambda v: pooling.avg_pool(v, 5, 1, 2),
         lambda v: nn.avg_pool(v, (5, 5), (1, 1), ((2, 2), (2, 2))))]:
      loss = lambda f: lambda v: jnp.sum(jnp.sin(f(v)))
      np.testing.assert_allclose(jax.grad(loss(ours))(x),
                                 jax.grad(loss(theirs))(x), atol=1e-5)

  def test_window_too_large(self):
    with self.assertRaisesRegex(ValueError, '5x5 window'):
      pooling.max_pool(jnp.zeros((1, 3, 3, 1)), 5)


if __name__ == '__main__':
  absltest.main()
