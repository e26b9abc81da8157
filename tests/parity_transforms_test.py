"""Data transforms against the official NCSNv2 ones (recorded, no torch).

testdata/torch_checkpoints/transforms.npz holds the official
`data_transform` / `inverse_data_transform` (ermongroup/ncsnv2
datasets/__init__.py) applied by tools/make_torch_fixture.py to fixed
inputs `x` (data space, including exact 0 and 1) and `z` (model space,
N(0, 9), so the clamp of the inverse matters), NHWC.
"""

import os

from absl.testing import absltest
from absl.testing import parameterized
from configs import default
import jax.numpy as jnp
import numpy as np

from ncsn_jax.models import score

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'testdata',
                    'torch_checkpoints')
REF = dict(np.load(os.path.join(DATA, 'transforms.npz')))
FLAGS = {'plain': {}, 'rescaled': dict(rescaled=True),
         'logit': dict(logit_transform=True)}


def config_for(name: str):
  config = default.get_default_config()
  for field, value in FLAGS[name].items():
    setattr(config.data, field, value)
  return config


def assert_float32_close(got, want):
  """Equal up to float32 round-off of values of want's magnitude."""
  got = np.asarray(got)
  assert got.dtype == np.float32, got.dtype
  tol = 4 * np.finfo(np.float32).eps * np.maximum(np.abs(want), 1.0)
  np.testing.assert_array_less(np.abs(got - want), tol + 1e-30)


class ParityTransformsTest(parameterized.TestCase):

  @parameterized.parameters('plain', 'rescaled', 'logit')
  def test_data_transform(self, name):
    got = score.data_transform(jnp.asarray(REF['x']), config_for(name))
    assert_float32_close(got, REF[f'{name}_forward'])

  @parameterized.parameters('plain', 'rescaled', 'logit')
  def test_inverse_data_transform(self, name):
    config = config_for(name)
    got = score.inverse_data_transform(jnp.asarray(REF['z']), config)
    assert_float32_close(got, REF[f'{name}_inverse'])
    forward = jnp.asarray(REF[f'{name}_forward'])
    assert_float32_close(score.inverse_data_transform(forward, config),
                         REF[f'{name}_roundtrip'])

  def test_fixture_exercises_every_branch(self):
    # The clamp: part of z maps outside [0, 1] (the sigmoid never does).
    for name in ('plain', 'rescaled'):
      self.assertTrue(np.any(REF[f'{name}_inverse'] == 0.0), name)
      self.assertTrue(np.any(REF[f'{name}_inverse'] == 1.0), name)
    # The logit's ends: x holds exact 0 and 1, mapped to about -+13.8.
    self.assertAlmostEqual(float(REF['logit_forward'].min()), -13.8155, 3)
    self.assertGreater(float(REF['logit_forward'].max()), 13.8)
    self.assertFalse(np.array_equal(REF['rescaled_forward'],
                                    REF['plain_forward']))


if __name__ == '__main__':
  absltest.main()
