"""interop.torch_pickle and its unpickler on hand-made good and hostile files.

Every hostile file must give one `errors.InputError` line naming it, run
nothing, and stay within a small memory bound (checked with tracemalloc,
which sees NumPy's and zlib's buffers).
"""

import os
import tracemalloc
import zipfile

from absl.testing import absltest
import numpy as np
from tests import torch_files as tf

from ncsn_jax import errors
from ncsn_jax.interop import torch_pickle
from ncsn_jax.interop import unpickler

MIB = 1 << 20


def _state(*items) -> bytes:
  """An OrderedDict-free state dict pickle body: {'w0': item0, ...}."""
  return tf.dict_({f'w{i}': item for i, item in enumerate(items)})


class ReaderTestCase(absltest.TestCase):

  def path(self, name: str, data: bytes) -> str:
    return tf.write(os.path.join(self.create_tempdir().full_path, name), data)

  def assert_refused(self, path, regex, max_bytes=MIB, load=None,
                     max_peak=8 * MIB):
    """`load()` raises one ConfigError line naming `path`, in bounded RAM."""
    load = load or (lambda: torch_pickle.load_pth(path, max_bytes))
    tracemalloc.start()
    try:
      with self.assertRaises(errors.InputError) as raised:
        load()
      peak = tracemalloc.get_traced_memory()[1]
    finally:
      tracemalloc.stop()
    message = str(raised.exception)
    self.assertIn(os.path.basename(path), message)
    self.assertNotIn('\n', message)
    self.assertRegex(message, regex)
    self.assertLess(peak, max_peak, message)
    return message


class WellFormedTest(ReaderTestCase):

  def test_zip_and_legacy_layouts_read_views_and_strides(self):
    data = np.arange(24, dtype=np.float32)
    for legacy in (False, True):
      body = _state(
          tf.tensor('0', 24, 0, (3, 4), (1, 3), legacy),  # Transposed.
          tf.tensor('0', 24, 20, (4,), (1,), legacy),  # Offset.
          tf.tensor('0', 24, 5, (1, 2), (7, 1), legacy),  # Size-1 stride.
          tf.integer(7))
      storages = {'0': data}
      if legacy:
        path = self.path('legacy.pth', tf.legacy_file(body, storages))
      else:
        path = self.path('zip.pth', tf.zip_archive(body, storages))
      state = torch_pickle.load_pth(path, MIB)
      np.testing.assert_array_equal(state['w0'], data[:12].reshape(4, 3).T)
      self.assertTrue(state['w0'].flags.c_contiguous)
      np.testing.assert_array_equal(state['w1'], data[20:24])
      np.testing.assert_array_equal(state['w2'], [[5, 6]])
      self.assertEqual(state['w3'], 7)

  def test_shared_references_materialise_once(self):
    # One 256 KiB tensor referenced 1000 times through the pickle memo:
    # one copy, within a budget of two.
    ref = tf.tensor('0', 65536, 0, (65536,), (1,)) + b'q\x00'
    body = tf.list_([ref] + [b'h\x00'] * 999)
    path = self.path('shared.pth', tf.zip_archive(
        body, {'0': np.ones(65536, np.float32)}))
    out = torch_pickle.load_pth(path, 2 * 65536 * 4)
    self.assertLen(out, 1000)
    self.assertTrue(all(x is out[0] for x in out))


class HostileFileTest(ReaderTestCase):

  def both_layouts(self, body, storages=None, name='evil'):
    storages = storages or {}
    return [self.path(f'{name}_zip.pth', tf.zip_archive(body, storages)),
            self.path(f'{name}_legacy.pth', tf.legacy_file(body, storages))]

  def test_unknown_global_is_refused_not_run(self):
    marker = os.path.join(self.create_tempdir().full_path, 'pwned')
    call = (tf.global_('os', 'system') +
            tf.tuple_([tf.string(f'touch {marker}')]) + tf.REDUCE)
    for path in self.both_layouts(_state(call)):
      self.assert_refused(path, r'refusing to load global os\.system.*'
                          'nothing from the file was run')
    # A STACK_GLOBAL name with a line break still gives one line.
    odd = tf.string('os') + tf.string('sys\ntem') + b'\x93'
    for path in self.both_layouts(_state(odd), name='odd'):
      self.assert_refused(path, r'os\.sys\\ntem')
    self.assertFalse(os.path.exists(marker))

  def test_calling_a_storage_type_is_refused(self):
    call = (tf.global_('torch', 'FloatStorage') +
            tf.tuple_([tf.integer(10**12)]) + tf.REDUCE)
    for path in self.both_layouts(_state(call)):
      self.assert_refused(path, 'calls torch.FloatStorage itself')

  def test_build_and_newobj_on_tensors_and_functions_are_refused(self):
    rebuild = tf.global_('torch._utils', '_rebuild_tensor_v2')
    cases = {
        'build_tensor': (tf.tensor('0', 4, 0, (4,), (1,)) + tf.EMPTY_DICT +
                         tf.BUILD, 'sets the state of a tensor'),
        'build_function': (rebuild + tf.EMPTY_DICT + tf.BUILD,
                           'sets the state of torch._utils._rebuild_tensor'),
        'build_storage': (tf.global_('torch', 'FloatStorage') +
                          tf.EMPTY_DICT + tf.BUILD,
                          'sets the state of torch.FloatStorage'),
        'newobj_function': (rebuild + tf.EMPTY_TUPLE + tf.NEWOBJ,
                            'NEWOBJ'),
        'rebuild_on_a_string': (rebuild + tf.tuple_(
            [tf.string('0'), tf.integer(0), tf.tuple_([]), tf.tuple_([])]) +
                                tf.REDUCE, 'built on a str, not on a storage'),
    }
    for name, (item, regex) in cases.items():
      path = self.path(f'{name}.pth', tf.zip_archive(
          _state(item), {'0': np.zeros(4, np.float32)}))
      self.assert_refused(path, regex)

  def test_huge_declared_storage_is_refused_before_reading(self):
    # 4 bytes of data declared as 2^40 floats (4 TiB).
    body = _state(tf.tensor('0', 2**40, 0, (1,), (1,)))
    for path in self.both_layouts(body, {'0': np.ones(1, np.float32)},
                                  name='huge'):
      self.assert_refused(path, r'storages come to 4,398,046,511,104 bytes, '
                          r'more than the 1,048,576 expected of it')

  def test_storage_records_of_the_wrong_size(self):
    body = _state(tf.tensor('0', 16, 0, (16,), (1,)))
    for data, regex in ((np.zeros(15, np.float32), 'holds 60 bytes where '
                         'its tensors declare 64; the file is truncated'),
                        (np.zeros(17, np.float32), 'holds 68 bytes where '
                         'its tensors declare 64; the file is not torch')):
      path = self.path(f'size_{data.size}.pth', tf.zip_archive(
          body, {'0': data}))
      self.assert_refused(path, regex)
    legacy = self.path('size_legacy.pth', tf.legacy_file(
        body, {'0': np.zeros(17, np.float32)}))
    self.assert_refused(legacy, 'holds 17 elements where its tensors '
                        'declare 16')

  def test_truncated_zip(self):
    good = tf.zip_archive(_state(tf.tensor('0', 1024, 0, (1024,), (1,))),
                          {'0': np.ones(1024, np.float32)})
    for cut in (100, len(good) // 2, len(good) - 10):
      path = self.path(f'cut_{cut}.pth', good[:cut])
      self.assert_refused(path, 'truncated|corrupt')

  def _bomb(self, name: str, numel: int) -> str:
    """A zip whose storage record inflates 128 MiB of zeros from ~128 KB."""
    path = os.path.join(self.create_tempdir().full_path, name)
    with zipfile.ZipFile(path, 'w', zipfile.ZIP_DEFLATED) as z:
      z.writestr('bomb/data.pkl', tf.pickled(_state(
          tf.tensor('0', numel, 0, (numel,), (1,)))))
      with z.open('bomb/data/0', 'w') as f:
        zeros = bytes(MIB)
        for _ in range(128):
          f.write(zeros)
    self.assertLess(os.path.getsize(path), MIB)
    return path

  def test_deflate_bomb_is_never_inflated(self):
    # Declared small: the record's size does not match, nothing inflates.
    self.assert_refused(self._bomb('small.pth', 16),
                        'holds 134,217,728 bytes where its tensors declare 64')
    # Declared as big as it inflates: more than the file may hold.
    self.assert_refused(self._bomb('big.pth', 32 * MIB),
                        'storages come to 134,217,728 bytes, more than the '
                        '1,048,576 expected')

  def test_stride_zero_view_is_not_materialised(self):
    # 4 bytes of data viewed as 2^28 floats (1 GiB).
    body = _state(tf.tensor('0', 1, 0, (2**28,), (0,)))
    for path in self.both_layouts(body, {'0': np.ones(1, np.float32)},
                                  name='stride0'):
      self.assert_refused(path, 'stride-0 or overlapping view',
                          max_bytes=2**31)
    body = _state(tf.tensor('0', 4, 3, (2,), (1,)))
    for path in self.both_layouts(body, {'0': np.ones(4, np.float32)},
                                  name='past_end'):
      self.assert_refused(path, 'reaches past the 4 elements of storage')

  def test_oversized_pickles_are_refused(self):
    big = unpickler.MAX_PICKLE_BYTES + 1
    # One string of 16 MiB + 1 bytes.
    path = self.path('long_legacy.pth', tf.legacy_header() + tf.pickled(
        b'X' + big.to_bytes(4, 'little') + bytes(big)))
    self.assert_refused(path, 'its pickles run past 16,777,216 bytes',
                        max_peak=40 * MIB)
    path = os.path.join(self.create_tempdir().full_path, 'long_zip.pth')
    with zipfile.ZipFile(path, 'w', zipfile.ZIP_DEFLATED) as z:
      z.writestr('long_zip/data.pkl', bytes(big))
    self.assert_refused(path, 'declares 16,777,217 bytes, more than any')

  def test_materialised_tensors_count_against_the_budget(self):
    # Two full views of one 512 KiB storage: 1 MiB in all, over 768 KiB.
    storage = {'0': np.ones(131072, np.float32)}
    body = _state(tf.tensor('0', 131072, 0, (131072,), (1,)),
                  tf.tensor('0', 131072, 0, (512, 256), (256, 1)))
    for path in self.both_layouts(body, storage, name='twice'):
      self.assert_refused(path, 'tensors come to 1,048,576 bytes',
                          max_bytes=768 * 1024)


class TorchScriptTest(ReaderTestCase):

  def load(self, data, max_bytes=MIB):
    return lambda: torch_pickle.load_torchscript(data, max_bytes, 'm.pt')

  def test_nested_modules_views_and_strides(self):
    data = np.arange(24, dtype=np.float32)
    inner = tf.module('__torch__.m.Conv', {
        'weight': tf.tensor('0', 24, 0, (3, 4), (1, 3)),
        'beta': tf.tensor('0', 24, 20, (4,), (1,)),
        'stride': tf.global_('torch.jit._pickle', 'build_intlist') +
                  tf.tuple_([tf.list_([tf.integer(1), tf.integer(1)])]) +
                  tf.REDUCE,
        'training': tf.FALSE,
    })
    root = tf.module('__torch__.m.Wrap', {'net': inner, 'training': tf.TRUE})
    state = torch_pickle.load_torchscript(
        tf.zip_archive(root, {'0': data}, torchscript=True), MIB)
    self.assertEqual(set(state), {'net.weight', 'net.beta'})
    np.testing.assert_array_equal(state['net.weight'],
                                  data[:12].reshape(4, 3).T)
    np.testing.assert_array_equal(state['net.beta'], data[20:24])

  def test_refusals(self):
    evil = (tf.global_('os', 'system') + tf.tuple_([tf.string('true')]) +
            tf.REDUCE)
    cases = [
        (tf.zip_archive(evil, {}, torchscript=True),
         'refusing to load global os.system'),
        (b'not a zip', 'not a readable PyTorch file'),
        (tf.zip_archive(tf.EMPTY_DICT, {}), 'not a TorchScript archive'),
        (tf.zip_archive(tf.EMPTY_DICT, {}, torchscript=True),
         'root object .* is not a module'),
        (tf.zip_archive(tf.module('__torch__.m.W', {
            'w': tf.tensor('0', 24, 0, (24,), (1,))}),
                        {'0': np.zeros(5, np.float32)}, torchscript=True),
         'truncated'),
        (tf.zip_archive(tf.module('__torch__.m.W', {
            'w': tf.tensor('0', 1, 0, (2**28,), (0,))}),
                        {'0': np.zeros(1, np.float32)}, torchscript=True),
         'stride-0 or overlapping view'),
    ]
    for data, regex in cases:
      self.assert_refused('m.pt', regex, load=self.load(data))
    # The checkpoint reader does not take TorchScript classes.
    path = self.path('script.pth', tf.zip_archive(tf.module(
        '__torch__.m.W', {}), {}))
    self.assert_refused(path, 'refusing to load global __torch__.m.W')


if __name__ == '__main__':
  absltest.main()
