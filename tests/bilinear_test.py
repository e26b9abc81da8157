"""Tests for ncsn_jax.models.layers (rules checked pixel by pixel elsewhere:
layers_test for align_corners, inception_preprocessing_test for the two
Inception rules)."""

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np

from ncsn_jax.models import layers


class MatrixTest(parameterized.TestCase):

  @parameterized.product(rule=layers.BILINEAR_RULES, sizes=((5, 5), (3, 8), (9, 4),
                                                     (1, 6), (6, 1)))
  def test_rows_are_two_tap_convex_weights(self, rule, sizes):
    m = layers.bilinear_matrix(*sizes, rule)
    self.assertEqual(m.shape, sizes[::-1])
    self.assertEqual(m.dtype, np.float64)
    np.testing.assert_allclose(m.sum(1), 1.0, atol=1e-12)
    self.assertTrue(np.all(m >= 0))
    self.assertTrue(np.all((m > 0).sum(1) <= 2))
    if sizes[0] == sizes[1]:
      np.testing.assert_array_equal(m, np.eye(sizes[0]))

  def test_rules_differ_where_they_should(self):
    # 4 -> 8: align_corners keeps both ends; half_pixel starts clamped at 0
    # and asymmetric samples i / 2.
    ac, hp, asym = (layers.bilinear_matrix(4, 8, r) for r in layers.BILINEAR_RULES)
    np.testing.assert_array_equal(ac[[0, -1]], np.eye(4)[[0, -1]])
    np.testing.assert_allclose(ac[1], [4 / 7, 3 / 7, 0, 0])
    np.testing.assert_allclose(hp[1], [0.75, 0.25, 0, 0])
    np.testing.assert_allclose(asym[1], [0.5, 0.5, 0, 0])
    np.testing.assert_allclose(asym[-1], [0, 0, 0, 1])  # 3.5 clamps to 3.

  def test_errors(self):
    with self.assertRaisesRegex(ValueError, 'unknown'):
      layers.bilinear_matrix(4, 8, 'bicubic')
    with self.assertRaisesRegex(ValueError, '>= 1'):
      layers.bilinear_matrix(0, 8, 'half_pixel')


if __name__ == '__main__':
  absltest.main()
