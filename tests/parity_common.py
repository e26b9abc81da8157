"""Shared helpers of the parity tests against the recorded official runs.

testdata/torch_checkpoints/ holds runs of the official ermongroup/ncsn and
ermongroup/ncsnv2 code recorded by tools/make_torch_fixture.py, with every
random draw (parity_notes.json there says what each array is). The tests
feed those draws through our real loss, train step and samplers via their
injection hooks and compare every recorded state.

Errors are measured in float32 ulps of the largest magnitude of each
tensor (`EPS32 * max |want|`): the round-off of a sum or a convolution
scales with its terms, not with its possibly cancelled result.
"""

import os

import flax
import jax
import numpy as np

from ncsn_jax.interop import official_checkpoint

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'testdata',
                    'torch_checkpoints')
EPS32 = float(np.finfo(np.float32).eps)


def load(name: str) -> dict:
  return dict(np.load(os.path.join(DATA, name)))


def import_official(config, name: str):
  """(TrainState, info) of an official checkpoint, through the importer."""
  path = os.path.join(DATA, name)
  states = official_checkpoint.read_checkpoint(config, path)
  return official_checkpoint.convert(config, states, path=path)


def _flat(tree) -> dict:
  if isinstance(tree, dict) or hasattr(tree, 'items'):
    return {'/'.join(k): np.asarray(v, np.float64) for k, v in
            flax.traverse_util.flatten_dict(flax.core.unfreeze(tree)).items()}
  return {'': np.asarray(tree, np.float64)}


def _layer(path: str) -> str:
  return path.rsplit('/', 1)[0] if '/' in path else path


def ulps_per_tensor(got, want, per_layer: bool = False) -> dict[str, float]:
  """{path: max |got - want| in ulps of max |want|} for each tensor.

  With `per_layer` the scale is the largest magnitude of the tensor's
  module (a convolution's kernel and bias, a norm's scales and offsets):
  their gradients are sums of the same per-pixel output gradients, so
  their round-off has the module's scale, also where a bias gradient
  cancels to next to nothing.
  """
  got, want = _flat(jax.device_get(got)), _flat(jax.device_get(want))
  assert got.keys() == want.keys(), set(got) ^ set(want)
  scales = {}
  for path, w in want.items():
    assert got[path].shape == w.shape, (path, got[path].shape, w.shape)
    key = _layer(path) if per_layer else path
    scales[key] = max(scales.get(key, 1e-30),
                      float(np.abs(w).max(initial=0.0)))
  return {path: float(np.abs(got[path] - w).max(initial=0.0)) /
                (EPS32 * scales[_layer(path) if per_layer else path])
          for path, w in want.items()}


def worst_abs(got, want) -> float:
  """The largest |got - want| over every element of every tensor."""
  got, want = _flat(jax.device_get(got)), _flat(jax.device_get(want))
  return max(float(np.abs(got[p] - w).max(initial=0.0))
             for p, w in want.items())


def assert_ulps(test, got, want, ulps: float, what: str) -> float:
  """Asserts every tensor within `ulps`; returns the worst, in ulps."""
  errors = ulps_per_tensor(got, want)
  path = max(errors, key=errors.get)
  test.assertLessEqual(errors[path], ulps,
                       f'{what}: {path or "value"} is {errors[path]:.1f} '
                       f'ulps off (allowed {ulps})')
  return errors[path]
