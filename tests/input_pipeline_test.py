"""Tests of the input pipeline (offline: digits, mocked tfds, temp folders)."""

import os
import shutil
import tempfile
from unittest import mock

from absl.testing import absltest
from absl.testing import parameterized
from configs import default
import jax
import numpy as np
from PIL import Image
import sklearn.datasets
import tensorflow as tf
import tensorflow_datasets as tfds

from ncsn_jax import config_checks
from ncsn_jax.data import input_pipeline
from ncsn_jax.data import preprocessing
from ncsn_jax.data import sources

_TFDS_CASES = (
    # dataset, tfds name, test split, image_size, channels, crop, category
    ('mnist', 'mnist', 'test', 28, 1, 0, ''),
    ('cifar10', 'cifar10', 'test', 32, 3, 0, ''),
    ('celeba', 'celeb_a', 'test', 64, 3, 140, ''),
    ('lsun', 'lsun/church_outdoor', 'validation', 32, 3, 0, 'church_outdoor'),
)


def _config(dataset='digits', **data):
  """Default config with `config.data` overrides (digits at 8x8 grey)."""
  config = default.get_default_config()
  config.data.dataset = dataset
  if dataset == 'digits':
    config.data.image_size, config.data.channels = 8, 1
  for key, value in data.items():
    setattr(config.data, key, value)
  return config


def _batches(config, split='train', **kwargs):
  """All batches of a finite dataset as a list of float32 arrays."""
  args = dict(batch_size=16, shuffle=False, repeat=False, augment=False,
              seed=0)
  args.update(kwargs)
  ds = input_pipeline.create_dataset(config, split, **args)
  return [b['image'] for b in input_pipeline.numpy_iterator(ds)]


def _mock(num_examples=10):
  return tfds.testing.mock_data(
      num_examples=num_examples, policy=tfds.testing.MockPolicy.USE_CODE)


def _write_png(path, array):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(array).save(path)


def _sorted_rows(images):
  """Rows of flattened images in lexicographic order (a multiset key)."""
  flat = images.reshape(len(images), -1)
  return flat[np.lexsort(flat.T[::-1])]


class DigitsTest(parameterized.TestCase):

  def setUp(self):
    super().setUp()
    tf.config.set_visible_devices([], 'GPU')

  @parameterized.parameters((8, 1), (16, 1), (8, 3))
  def test_shape_dtype_range(self, size, channels):
    config = _config(image_size=size, channels=channels)
    ds = input_pipeline.create_dataset(
        config, 'train', batch_size=32, shuffle=True, repeat=True,
        augment=True, seed=3)
    it = input_pipeline.numpy_iterator(ds)
    for _ in range(3):
      batch = next(it)
      self.assertEqual(set(batch), {'image'})
      self.assertEqual(batch['image'].shape, (32, size, size, channels))
      self.assertEqual(batch['image'].dtype, np.float32)
      self.assertGreaterEqual(batch['image'].min(), 0.0)
      self.assertLessEqual(batch['image'].max(), 1.0)

  def test_values_are_sixteenths(self):
    x_train, _, _, _ = sources.digits_split(_config())
    np.testing.assert_allclose(x_train * 16, np.round(x_train * 16), atol=1e-6)
    self.assertEqual(x_train.max(), 1.0)

  @parameterized.parameters(7, 16, 100)
  def test_batches_are_exactly_batch_size(self, batch_size):
    batches = _batches(_config(), 'test', batch_size=batch_size)
    self.assertLen(batches, 180 // batch_size)
    for batch in batches:
      self.assertEqual(batch.shape[0], batch_size)

  def test_split_is_fixed_disjoint_and_complete(self):
    config = _config()
    rng_state = np.random.get_state()
    first = sources.digits_split(config)
    second = sources.digits_split(config)
    self.assertEqual(str(np.random.get_state()), str(rng_state))
    for a, b in zip(first, second):
      np.testing.assert_array_equal(a, b)
    x_train, y_train, x_test, y_test = first
    self.assertLen(x_train, 1617)
    self.assertLen(x_test, 180)
    self.assertEqual((len(y_train), len(y_test)), (1617, 180))
    self.assertEqual(y_train.dtype.kind, 'i')
    # train + test is the whole set as a multiset, so the split is a partition.
    digits = sklearn.datasets.load_digits()
    everything = (digits.images / 16.0).astype(np.float32)[..., None]
    np.testing.assert_array_equal(
        _sorted_rows(np.concatenate([x_train, x_test])),
        _sorted_rows(everything))
    np.testing.assert_array_equal(
        np.sort(np.concatenate([y_train, y_test])), np.sort(digits.target))

  def test_split_seed_changes_split(self):
    _, _, x_a, _ = sources.digits_split(_config())
    _, _, x_b, _ = sources.digits_split(_config(split_seed=1))
    self.assertFalse(np.array_equal(x_a, x_b))

  def test_load_split_arrays_matches_digits_split(self):
    config = _config(image_size=16)
    _, _, x_test, _ = sources.digits_split(config)
    np.testing.assert_array_equal(
        input_pipeline.load_split_arrays(config, 'test'), x_test)
    np.testing.assert_array_equal(
        input_pipeline.load_split_arrays(config, 'test', max_examples=5),
        x_test[:5])
    self.assertEqual(x_test.shape, (180, 16, 16, 1))

  def test_unshuffled_order_is_the_split_order(self):
    config = _config()
    _, _, x_test, _ = sources.digits_split(config)
    batches = _batches(config, 'test', batch_size=20)
    np.testing.assert_array_equal(np.concatenate(batches), x_test)

  def test_reproducible_per_seed(self):
    config = _config(uniform_dequantization=True)

    def first_batches(seed):
      ds = input_pipeline.create_dataset(
          config, 'train', batch_size=16, shuffle=True, repeat=True,
          augment=True, seed=seed)
      it = input_pipeline.numpy_iterator(ds)
      return np.stack([next(it)['image'] for _ in range(3)])

    np.testing.assert_array_equal(first_batches(5), first_batches(5))
    self.assertFalse(np.array_equal(first_batches(5), first_batches(6)))

  def test_flip_only_with_augment(self):
    config = _config()
    plain = np.concatenate(_batches(config, augment=False, batch_size=64))
    flipped = np.concatenate(_batches(config, augment=True, batch_size=64))
    mirror = plain[:, :, ::-1]
    same = np.all(flipped == plain, axis=(1, 2, 3))
    mirrored = np.all(flipped == mirror, axis=(1, 2, 3))
    self.assertTrue(np.all(same | mirrored))
    changed = np.any(plain != mirror, axis=(1, 2, 3))
    frac = np.mean(mirrored[changed] & ~same[changed])
    self.assertBetween(frac, 0.4, 0.6)
    config.data.random_flip = False
    np.testing.assert_array_equal(
        np.concatenate(_batches(config, augment=True, batch_size=64)), plain)

  def test_gaussian_dequantization(self):
    config = _config()
    plain = _batches(config, 'test')[0]
    config.data.gaussian_dequantization = True
    noisy = _batches(config, 'test')[0]
    self.assertAlmostEqual(np.std(noisy - plain), 0.01, delta=0.001)

  def test_per_process_shards_partition_the_split(self):
    config = _config()
    _, _, x_test, _ = sources.digits_split(config)
    shards = []
    for index in range(7):
      with mock.patch.object(jax, 'process_index', return_value=index), \
           mock.patch.object(jax, 'process_count', return_value=7):
        shards.append(np.concatenate(_batches(config, 'test', batch_size=1)))
    # 180 = 7 * 25 + 5: equal shards of 25, the last 5 examples dropped.
    self.assertEqual([len(s) for s in shards], [25] * 7)
    np.testing.assert_array_equal(np.concatenate(shards), x_test[:175])

  def test_too_few_examples_for_a_batch(self):
    with self.assertRaisesRegex(ValueError, 'fewer than one batch'):
      input_pipeline.create_dataset(
          _config(), 'test', batch_size=181, shuffle=False, repeat=False,
          augment=False, seed=0)


class TfdsTest(parameterized.TestCase):

  def setUp(self):
    super().setUp()
    tf.config.set_visible_devices([], 'GPU')

  def _raw(self, name, split, n):
    """The mocked uint8 images, in order."""
    ds = tfds.load(name, split=split).take(n)
    return np.stack([ex['image'] for ex in tfds.as_numpy(ds)])

  @parameterized.parameters(*_TFDS_CASES)
  def test_shape_dtype_range(self, dataset, name, test_split, size, channels,
                             crop, category):
    del name, test_split
    config = _config(dataset, image_size=size, channels=channels,
                     crop_size=crop, category=category)
    with _mock(10):
      for split in ('train', 'test'):
        batches = _batches(config, split, batch_size=4, shuffle=True,
                           augment=True)
        self.assertLen(batches, 2)  # 10 examples -> 2 full batches of 4.
        for batch in batches:
          self.assertEqual(batch.shape, (4, size, size, channels))
          self.assertEqual(batch.dtype, np.float32)
          self.assertBetween(batch.min(), 0.0, 1.0)
          self.assertBetween(batch.max(), 0.0, 1.0)
          np.testing.assert_allclose(batch * 255, np.round(batch * 255),
                                     atol=1e-3)

  @parameterized.parameters(('mnist', 16, 1), ('mnist', 28, 3),
                            ('cifar10', 16, 3), ('cifar10', 64, 3))
  def test_resize_and_channels(self, dataset, size, channels):
    config = _config(dataset, image_size=size, channels=channels)
    with _mock(6):
      images = input_pipeline.load_split_arrays(config, 'test')
      raw = self._raw(dataset, 'test', 6)
    self.assertEqual(images.shape, (6, size, size, channels))
    if size == raw.shape[1]:
      expected = np.broadcast_to(raw, images.shape) / 255.0
      np.testing.assert_allclose(images, expected, atol=1e-6)
    else:
      mean = lambda x: x.reshape(len(x), -1).mean(axis=1)
      np.testing.assert_allclose(mean(images), mean(raw / 255.0), atol=0.02)

  def test_celeba_center_crop_offsets(self):
    config = _config('celeba', image_size=140, crop_size=140)
    with _mock(3):
      images = input_pipeline.load_split_arrays(config, 'test')
      raw = self._raw('celeb_a', 'test', 3)
    self.assertEqual(raw.shape[1:], (218, 178, 3))
    # torchvision CenterCrop(140) on 178x218: rows 39..178, columns 19..158.
    np.testing.assert_allclose(images, raw[:, 39:179, 19:159] / 255.0,
                               atol=1e-6)

  @parameterized.parameters(8, 32)
  def test_lsun_matches_torchvision_geometry(self, size):
    """tf resize-small + centre crop agrees with PIL within one level."""
    config = _config('lsun', image_size=size, category='church_outdoor')
    with _mock(3):
      images = input_pipeline.load_split_arrays(config, 'test')
      raw = [ex['image'] for ex in tfds.as_numpy(
          tfds.load('lsun/church_outdoor', split='validation'))]
    with tempfile.TemporaryDirectory() as tmp:
      for image, array in zip(images, raw):
        path = os.path.join(tmp, 'x.png')
        _write_png(path, array)
        ref = sources.load_image_file(path, size, 0, 3) / 255.0
        np.testing.assert_allclose(image, ref, atol=1.01 / 255)

  def test_uniform_dequantization(self):
    config = _config('cifar10', uniform_dequantization=True)
    with _mock(8):
      raw = self._raw('cifar10', 'test', 8)
      for augment in (False, True):
        batch = _batches(config, 'test', batch_size=8, augment=augment)[0]
        if not augment:
          # (255 x + u) / 256 with x = k / 255 lies in [k / 256, (k+1) / 256).
          np.testing.assert_array_equal(np.floor(batch * 256), raw)
        self.assertGreaterEqual(batch.min(), 0.0)
        self.assertLess(batch.max(), 1.0)
        self.assertGreater(np.abs(batch - raw / 255.0).max(), 1e-3)

  def _as_dataset_calls(self, config, split, num_examples):
    """(builder full name, split) of every as_dataset call while batching."""
    calls = []
    with _mock(num_examples):
      original = tfds.core.DatasetBuilder.as_dataset

      def spy(builder, **kwargs):
        calls.append((builder.info.full_name, kwargs['split']))
        return original(builder, **kwargs)

      with mock.patch.object(tfds.core.DatasetBuilder, 'as_dataset', spy):
        _batches(config, split, batch_size=4)
    return calls

  @parameterized.parameters(('train', 'train'), ('test', 'test'))
  def test_per_process_split(self, split, tfds_split):
    config = _config('cifar10')
    with mock.patch.object(jax, 'process_index', return_value=1), \
         mock.patch.object(jax, 'process_count', return_value=2):
      calls = self._as_dataset_calls(config, split, 8)
    self.assertEqual(calls, [(
        'cifar10/3.0.2',
        tfds.split_for_jax_process(tfds_split, process_index=1,
                                   process_count=2, drop_remainder=True))])

  def test_lsun_uses_validation_split(self):
    config = _config('lsun', category='tower')
    calls = self._as_dataset_calls(config, 'test', 4)
    self.assertEqual(calls, [(
        'lsun/tower/3.1.0',
        tfds.split_for_jax_process('validation', process_index=0,
                                   process_count=1, drop_remainder=True))])

  @parameterized.parameters(('celeba', 64, 140), ('cifar10', 16, 0),
                            ('lsun', 8, 0))
  def test_pipeline_uses_the_public_geometry(self, dataset, size, crop):
    config = _config(dataset, image_size=size, crop_size=crop,
                     category='tower' if dataset == 'lsun' else '')
    name = {'celeba': 'celeb_a', 'lsun': 'lsun/tower'}.get(dataset, dataset)
    split = 'validation' if dataset == 'lsun' else 'test'
    with _mock(3):
      images = input_pipeline.load_split_arrays(config, 'test')
      raw = [ex['image'] for ex in tfds.as_numpy(
          tfds.load(name, split=split).take(3))]  # LSUN: mixed sizes.
    want = [preprocessing.center_crop_and_resize(r, size, crop) for r in raw]
    np.testing.assert_array_equal(images * 255, np.stack(want))

  def test_download_false_never_downloads(self):
    config = _config('cifar10')
    with _mock(4), mock.patch.object(
        tfds.core.DatasetBuilder, 'download_and_prepare') as download:
      _batches(config, 'test', batch_size=4)
      download.assert_not_called()
      config.data.download = True
      _batches(config, 'test', batch_size=4)
      download.assert_called_once()


class ImageFolderTest(parameterized.TestCase):

  def setUp(self):
    super().setUp()
    tf.config.set_visible_devices([], 'GPU')
    # tempfile rather than create_tempdir: absl flags are unparsed in pytest.
    self.root = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, self.root)

  def _folder(self, n=10):
    """n PNG/JPEG files of mixed sizes and modes, some in a subfolder."""
    rng = np.random.RandomState(0)
    shapes = [(20, 30, 3), (30, 20, 3), (16, 16, 3), (40, 25), (17, 33, 3)]
    for i in range(n):
      array = rng.randint(0, 256, shapes[i % len(shapes)]).astype(np.uint8)
      sub = 'sub' if i % 2 else ''
      ext = 'jpg' if i % 3 == 0 else 'png'
      path = os.path.join(self.root, sub, f'img_{i:02d}.{ext}')
      os.makedirs(os.path.dirname(path), exist_ok=True)
      Image.fromarray(array).save(path)
    with open(os.path.join(self.root, 'notes.txt'), 'w') as f:
      f.write('not an image, ignored')
    return _config('image_folder', data_dir=self.root, image_size=12,
                   channels=3, test_fraction=0.2)

  @parameterized.parameters(1, 3)
  def test_split_sizes_and_shapes(self, channels):
    config = self._folder()
    config.data.channels = channels
    train = input_pipeline.load_split_arrays(config, 'train')
    test = input_pipeline.load_split_arrays(config, 'test')
    self.assertEqual(train.shape, (8, 12, 12, channels))
    self.assertEqual(test.shape, (2, 12, 12, channels))
    self.assertEqual(train.dtype, np.float32)
    self.assertBetween(train.min(), 0.0, 1.0)
    self.assertBetween(train.max(), 0.0, 1.0)
    np.testing.assert_array_equal(
        input_pipeline.load_split_arrays(config, 'test'), test)
    self.assertFalse(any(np.array_equal(a, b) for a in train for b in test))

  def test_create_dataset_batches(self):
    config = self._folder()
    ds = input_pipeline.create_dataset(
        config, 'train', batch_size=3, shuffle=True, repeat=True,
        augment=True, seed=0)
    it = input_pipeline.numpy_iterator(ds)
    for _ in range(4):  # Crosses an epoch boundary (8 training images).
      self.assertEqual(next(it)['image'].shape, (3, 12, 12, 3))

  def test_center_crop_and_resize(self):
    array = np.random.RandomState(1).randint(0, 256, (32, 64, 3), np.uint8)
    _write_png(os.path.join(self.root, 'wide.png'), array)
    config = _config('image_folder', data_dir=self.root, image_size=32,
                     channels=3)
    # Shorter side already 32: only the centre 32 columns are kept.
    image = input_pipeline.load_split_arrays(config, 'train')[0]
    np.testing.assert_array_equal(image * 255, array[:, 16:48])
    # Shorter side 32 -> 16: PIL bilinear resize to 16x32, then columns 8..23.
    config.data.image_size = 16
    image = input_pipeline.load_split_arrays(config, 'train')[0]
    small = np.asarray(Image.fromarray(array).resize(
        (32, 16), Image.Resampling.BILINEAR))
    np.testing.assert_allclose(image * 255, small[:, 8:24], atol=1e-4)

  def test_empty_folder(self):
    config = _config('image_folder', data_dir=self.root, channels=3)
    with self.assertRaisesRegex(ValueError, 'no .*png'):
      input_pipeline.load_split_arrays(config, 'train')
    config.data.data_dir = os.path.join(self.root, 'missing')
    with self.assertRaisesRegex(ValueError, 'config.data.data_dir'):
      input_pipeline.load_split_arrays(config, 'train')

  def test_corrupt_file_is_skipped_and_named(self):
    config = self._folder(4)
    with open(os.path.join(self.root, 'broken.png'), 'wb') as f:
      f.write(b'definitely not a png')
    with self.assertLogs(level='WARNING') as logs:
      n = sum(len(input_pipeline.load_split_arrays(config, split))
              for split in ('train', 'test'))
    self.assertEqual(n, 4)
    self.assertIn('broken.png (not a PNG/JPEG image)',
                  logs.records[0].getMessage())

  def test_pipeline_uses_the_public_geometry(self):
    config = self._folder(5)
    config.data.crop_size = 16
    paths = sources.usable_image_files(config)
    images = input_pipeline.load_split_arrays(config, 'train')
    images = np.concatenate(
        [images, input_pipeline.load_split_arrays(config, 'test')])
    want = []
    for path in paths:
      with Image.open(path) as img:
        want.append(np.asarray(preprocessing.center_crop_and_resize_pil(
            img.convert('RGB'), 12, 16)))
    np.testing.assert_array_equal(_sorted_rows(np.round(images * 255)),
                                  _sorted_rows(np.stack(want)))


class ValidationTest(parameterized.TestCase):

  def _create(self, config):
    # The data fields are checked with the config (config_checks).
    config_checks.check_config(config, 'train')

  def test_unknown_dataset(self):
    with self.assertRaisesRegex(
        ValueError, r"config.data.dataset='foo' is unknown.*digits.*lsun"):
      self._create(_config('foo'))

  @parameterized.parameters(
      (dict(image_size=0), 'config.data.image_size'),
      (dict(channels=2), 'config.data.channels'),
      (dict(crop_size=-1), 'config.data.crop_size'),
      (dict(test_fraction=1.0), 'config.data.test_fraction'))
  def test_bad_digits_fields(self, overrides, field):
    with self.assertRaisesRegex(ValueError, field):
      self._create(_config(**overrides))

  def test_channels_mismatch(self):
    with self.assertRaisesRegex(ValueError, 'config.data.channels=1.*cifar10'):
      self._create(_config('cifar10', channels=1))

  def test_lsun_needs_category(self):
    with self.assertRaisesRegex(ValueError, 'config.data.category'):
      self._create(_config('lsun', category=''))

  def test_bad_split(self):
    with self.assertRaisesRegex(ValueError, 'validation'):
      input_pipeline.load_split_arrays(_config(), 'validation')


if __name__ == '__main__':
  absltest.main()
