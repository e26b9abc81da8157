"""Tests for inception.winograd: F(2x2, 3x3) equals the direct convolution."""

from absl.testing import absltest
from absl.testing import parameterized
from jax import lax
import jax
import jax.numpy as jnp
import numpy as np

from ncsn_jax.evaluation.inception import winograd


def _direct(x, kernel, padding):
  return lax.conv_general_dilated(
      x, kernel, (1, 1), [(p, p) for p in padding],
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
      precision=lax.Precision.HIGHEST)


def _inputs(shape, cout, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=shape).astype(np.float32)
  kernel = rng.normal(size=(3, 3, shape[-1], cout)).astype(np.float32)
  return x, kernel


class Conv3x3Test(parameterized.TestCase):

  @parameterized.parameters(
      ((2, 8, 8, 3), 5, (0, 0)),     # Even output (6x6).
      ((1, 9, 7, 4), 6, (0, 0)),     # Odd outputs (7x5): padded tiles.
      ((2, 7, 7, 2), 3, (1, 1)),     # 'SAME'-style, odd.
      ((1, 6, 5, 3), 2, (0, 1)),     # Different padding per axis.
      ((1, 3, 3, 8), 4, (0, 0)),     # A single output pixel.
      ((1, 15, 15, 16), 8, (1, 1)),
  )
  def test_matches_direct_convolution(self, shape, cout, padding):
    x, kernel = _inputs(shape, cout)
    want = _direct(x, kernel, padding)
    got = winograd.conv3x3(x, kernel, padding)
    self.assertEqual(got.shape, want.shape)
    scale = float(jnp.abs(want).max())
    np.testing.assert_allclose(got, want, atol=1e-5 * scale, rtol=0)

  def test_each_output_pixel_sees_its_own_window(self):
    """A one-hot input lights exactly the 3x3 outputs whose window holds it.

    Guards the tile interleaving: a transposed or shifted tile would move
    the response.
    """
    kernel = np.arange(1, 10, dtype=np.float32).reshape(3, 3, 1, 1)
    for (i, j) in [(0, 0), (2, 3), (4, 4), (6, 1)]:
      x = np.zeros((1, 7, 7, 1), np.float32)
      x[0, i, j, 0] = 1
      np.testing.assert_allclose(winograd.conv3x3(x, kernel, (1, 1)),
                                 _direct(x, kernel, (1, 1)), atol=1e-6)

  def test_gradients_match(self):
    x, kernel = _inputs((1, 7, 6, 3), 4, seed=1)
    loss = lambda conv: lambda x, k: jnp.sum(jnp.sin(conv(x, k, (1, 1))))
    want = jax.grad(loss(_direct), argnums=(0, 1))(x, kernel)
    got = jax.grad(loss(winograd.conv3x3), argnums=(0, 1))(x, kernel)
    for g, w in zip(got, want):
      np.testing.assert_allclose(g, w, atol=1e-4 * float(jnp.abs(w).max()))

  def test_rejects_other_kernel_sizes(self):
    x = np.zeros((1, 8, 8, 2), np.float32)
    with self.assertRaisesRegex(ValueError, r'\[3,3,Cin,Cout\]'):
      winograd.conv3x3(x, np.zeros((5, 5, 2, 2), np.float32))


if __name__ == '__main__':
  absltest.main()
