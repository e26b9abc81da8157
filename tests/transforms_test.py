"""Tests of the data-space <-> model-space transforms."""

from absl.testing import absltest
from configs import tiny
from absl.testing import parameterized
import ml_collections
import numpy as np

from ncsn_jax import config_checks
from ncsn_jax import errors
from ncsn_jax.models import score


def _config(rescaled=False, logit=False):
  return ml_collections.ConfigDict(
      {'data': {'rescaled': rescaled, 'logit_transform': logit}})


class TransformsTest(parameterized.TestCase):

  def test_identity_without_options(self):
    x = np.linspace(0.0, 1.0, 24, dtype=np.float32).reshape(1, 2, 4, 3)
    np.testing.assert_array_equal(score.data_transform(x, _config()), x)

  def test_rescaled_maps_unit_interval_to_symmetric(self):
    x = np.array([0.0, 0.25, 0.5, 1.0], np.float32)
    np.testing.assert_allclose(
        score.data_transform(x, _config(rescaled=True)),
        [-1.0, -0.5, 0.0, 1.0])

  def test_logit_matches_formula(self):
    x = np.array([0.0, 0.1, 0.5, 0.9, 1.0], np.float64)
    lam = score.LOGIT_LAMBDA
    p = lam + (1 - 2 * lam) * x
    y = np.asarray(score.data_transform(x.astype(np.float32),
                                        _config(logit=True)))
    np.testing.assert_allclose(y[1:-1], np.log(p / (1 - p))[1:-1], rtol=1e-5)
    # At the ends float32 holds 1 - lambda only to ~6e-8: ~1e-3 relative.
    np.testing.assert_allclose(y[[0, -1]], np.log(p / (1 - p))[[0, -1]],
                               rtol=2e-3)

  @parameterized.parameters((False, False), (True, False), (False, True))
  def test_inverse_undoes_transform(self, rescaled, logit):
    config = _config(rescaled, logit)
    x = np.random.default_rng(0).uniform(0.01, 0.99, (2, 4, 4, 3))
    x = x.astype(np.float32)
    y = score.inverse_data_transform(
        score.data_transform(x, config), config)
    np.testing.assert_allclose(y, x, atol=1e-5)

  @parameterized.parameters((False, False), (True, False), (False, True))
  def test_inverse_clips_to_unit_interval(self, rescaled, logit):
    far = np.array([-50.0, 50.0], np.float32)
    y = np.asarray(score.inverse_data_transform(far, _config(rescaled,
                                                             logit)))
    self.assertGreaterEqual(y.min(), 0.0)
    self.assertLessEqual(y.max(), 1.0)

  def test_both_options_is_a_config_error(self):
    config = tiny.get_config()
    config.data.rescaled = config.data.logit_transform = True
    with self.assertRaisesRegex(errors.ConfigError,
                                'rescaled and config.data.logit_transform'):
      config_checks.check_config(config, 'sample')


if __name__ == '__main__':
  absltest.main()
