"""Every bad data input fails in one line (or is skipped with a warning).

Offline: temp folders, the embedded digits and tfds builders that find no
data. Each message must name the field or file and the fix.
"""

import io
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
import tensorflow_datasets as tfds
from tensorflow_datasets.core import constants

from ncsn_jax import config_checks
from ncsn_jax import errors
from ncsn_jax.data import input_pipeline


def _config(dataset, **data):
  config = default.get_default_config()
  config.data.dataset = dataset
  config.data.image_size, config.data.channels = 8, 3
  if dataset == 'digits':
    config.data.channels = 1
  for key, value in data.items():
    setattr(config.data, key, value)
  return config


def _create(config, split='train', batch_size=4):
  return input_pipeline.create_dataset(
      config, split, batch_size=batch_size, shuffle=True, repeat=True,
      augment=False, seed=0)


def _write_images(folder, n, size=(12, 10)):
  rng = np.random.RandomState(0)
  for i in range(n):
    array = rng.randint(0, 256, size + (3,)).astype(np.uint8)
    Image.fromarray(array).save(os.path.join(folder, f'ok_{i:02d}.png'))


class ConfigFieldTest(parameterized.TestCase):

  @parameterized.parameters(
      ('foo', {}, r"config.data.dataset='foo' is unknown; use one of digits"),
      ('cifar10', dict(channels=1),
       r'config.data.channels=1, but cifar10 images have 3 channels; set '
       r'config.data.channels=3'),
      ('digits', dict(channels=4), r'config.data.channels=4 must be 1 or 3'),
      ('digits', dict(image_size=0), r'config.data.image_size=0 must be'),
      ('digits', dict(image_size=-8), r'config.data.image_size=-8 must be'),
      ('digits', dict(crop_size=-1), r'config.data.crop_size=-1 must be >= 0'),
      ('digits', dict(crop_size=4),
       r'config.data.crop_size=4: the 8x8 digits are not cropped; set '
       r'config.data.crop_size=0'),
      ('cifar10', dict(crop_size=40),
       r'config.data.crop_size=40 is larger than the 32x32 .* images of '
       r'cifar10; use at most 32'),
      ('celeba', dict(crop_size=200),
       r'crop_size=200 is larger than the 218x178 .*use at most 178'),
      ('lsun', dict(category='cat'),
       r"config.data.category='cat' is not an LSUN scene category .*tower"),
      ('digits', dict(shuffle_buffer=0),
       r'config.data.shuffle_buffer=0 must be positive'),
      ('image_folder', dict(test_fraction=0.0),
       r'config.data.test_fraction=0.0 must lie in \(0, 1\)'))
  def test_bad_field(self, dataset, overrides, message):
    # The data fields are checked with the whole config, before any data is
    # read (config_checks), so the input pipeline trusts them.
    with self.assertRaisesRegex(errors.ConfigError, message):
      config_checks.check_config(_config(dataset, **overrides), 'train')

  def test_batch_smaller_than_the_process_count(self):
    # A global batch smaller than the devices (each process has at least
    # one) would leave a process without examples.
    config = _config('digits')
    config.training.batch_size = 2
    with self.assertRaisesRegex(
        errors.ConfigError, r'config.training.batch_size=2 is not divisible by '
        r'the 4 devices; use 4'):
      config_checks.check_config(config, 'train')


class ImageFolderTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.root = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, self.root)
    self.config = _config('image_folder', data_dir=self.root,
                          test_fraction=0.25)

  def _all_images(self):
    return np.concatenate([input_pipeline.load_split_arrays(self.config, s)
                           for s in ('train', 'test')])

  def test_missing_and_empty_folders(self):
    self.config.data.data_dir = os.path.join(self.root, 'nope')
    with self.assertRaisesRegex(
        errors.InputError, r"config.data.data_dir='.*nope' is not a folder"):
      _create(self.config)
    self.config.data.data_dir = self.root
    with open(os.path.join(self.root, 'readme.txt'), 'w') as f:
      f.write('no images here')
    with self.assertRaisesRegex(
        errors.InputError, r'holds no .png/.jpg/.jpeg files; put images'):
      _create(self.config)

  def test_bad_files_are_skipped_with_one_warning_naming_them(self):
    _write_images(self.root, 8)
    open(os.path.join(self.root, 'zero.png'), 'wb').close()
    with open(os.path.join(self.root, 'text.png'), 'w') as f:
      f.write('plain text, not a PNG')
    with open(os.path.join(self.root, 'noise.jpg'), 'wb') as f:
      f.write(np.random.RandomState(0).bytes(5000))
    os.symlink(os.path.join(self.root, 'gone.png'),
               os.path.join(self.root, 'dangling.png'))
    with self.assertLogs(level='WARNING') as logs:
      images = self._all_images()
    self.assertEqual(images.shape, (8, 8, 8, 3))
    warnings = [r.getMessage() for r in logs.records if 'skipping' in
                r.getMessage()]
    self.assertLen(warnings, 2)  # One per split read, each naming all four.
    for name, why in (('zero.png', 'empty file'),
                      ('text.png', 'not a PNG/JPEG image'),
                      ('noise.jpg', 'not a PNG/JPEG image'),
                      ('dangling.png', 'unreadable')):
      self.assertIn(f'{name} ({why}', warnings[0])
    self.assertIn('skipping 4 of 12 image files', warnings[0])

  def test_corrupt_pixel_data_is_skipped_when_decoded(self):
    _write_images(self.root, 4, size=(40, 40))
    buffer = io.BytesIO()
    pixels = np.random.RandomState(1).randint(0, 256, (64, 64, 3))
    Image.fromarray(pixels.astype(np.uint8)).save(buffer, 'JPEG')
    with open(os.path.join(self.root, 'cut.jpg'), 'wb') as f:
      f.write(buffer.getvalue()[:buffer.tell() // 2])  # Header, half pixels.
    with self.assertLogs(level='WARNING') as logs:
      images = self._all_images()
    self.assertLen(images, 4)
    self.assertTrue(any('Skipping image file' in r.getMessage() and
                        'cut.jpg' in r.getMessage() for r in logs.records))

  def test_no_usable_file_names_them(self):
    open(os.path.join(self.root, 'a.png'), 'wb').close()
    with open(os.path.join(self.root, 'b.jpg'), 'w') as f:
      f.write('text')
    with self.assertRaisesRegex(
        errors.InputError, r'none of its 2 image files can be used: a.png '
        r'\(empty file\); b.jpg \(not a PNG/JPEG image\)'):
      _create(self.config)

  def test_images_smaller_than_the_crop(self):
    _write_images(self.root, 4, size=(20, 30))
    Image.fromarray(np.zeros((10, 30, 3), np.uint8)).save(
        os.path.join(self.root, 'small.png'))
    self.config.data.crop_size = 16
    with self.assertLogs(level='WARNING') as logs:
      self.assertLen(self._all_images(), 4)
    self.assertIn('small.png (30x10, smaller than the 16x16 centre crop of '
                  'config.data.crop_size)', logs.records[0].getMessage())
    self.config.data.crop_size = 24
    with self.assertRaisesRegex(errors.InputError,
                                r'none of its 5 image files can be used'):
      _create(self.config)

  def test_fewer_images_than_one_batch(self):
    _write_images(self.root, 3)
    self.config.data.test_fraction = 0.1
    self.config.training.batch_size = self.config.eval.batch_size = 64
    with self.assertRaisesRegex(
        errors.InputError,
        r"split 'test' of the image folder .* \(3 usable images, "
        r'config.data.test_fraction=0.1\) has 0 examples, fewer than one '
        r'batch of config.eval.batch_size=64; add images or raise '
        r'config.data.test_fraction or lower config.eval.batch_size'):
      _create(self.config, 'test', batch_size=64)
    with self.assertRaisesRegex(
        errors.InputError, r"split 'train' .* has 3 examples, fewer than "
        r'one batch of config.training.batch_size=64'):
      _create(self.config, 'train', batch_size=64)
    with self.assertRaisesRegex(errors.InputError, r'has 0 examples'):
      input_pipeline.load_split_arrays(self.config, 'test')

  def test_sixteen_bit_png_is_scaled_not_white(self):
    values = np.array([[0, 257, 1000, 32768], [40000, 65535, 12345, 65280]],
                      np.uint16)
    Image.fromarray(values).save(os.path.join(self.root, 'deep.png'))
    with Image.open(os.path.join(self.root, 'deep.png')) as img:
      self.assertEqual(img.mode, 'I;16')  # What PIL makes of it.
    self.config.data.channels = 1
    self.config.data.image_size = 2  # 2x4 -> crop 2x2 of columns 1..2.
    image = input_pipeline.load_split_arrays(self.config, 'train')
    self.assertEqual(image.shape, (1, 2, 2, 1))
    want = np.round(values[:, 1:3] / 257.0)
    np.testing.assert_array_equal(image[0, ..., 0] * 255, want)


class TfdsMissingTest(parameterized.TestCase):
  """tfds builders that find nothing in an empty data_dir (no mock)."""

  def setUp(self):
    super().setUp()
    self.data_dir = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, self.data_dir)

  @parameterized.parameters(('mnist', '', 'mnist/3.0.1'),
                            ('cifar10', '', 'cifar10/3.0.2'),
                            ('celeba', '', 'celeb_a/2.1.0'),
                            ('lsun', 'tower', 'lsun/tower/3.1.0'))
  def test_message_names_data_set_folder_and_fixes(self, dataset, category,
                                                   full_name):
    config = _config(dataset, data_dir=self.data_dir, category=category,
                     channels=3)
    with self.assertRaises(errors.InputError) as ctx:
      input_pipeline.load_split_arrays(config, 'test')
    message = str(ctx.exception)
    self.assertNotIn('\n', message)
    where = os.path.join(self.data_dir, full_name)
    for part in (f'tfds data set {full_name} is not in config.data.data_dir='
                 f'{self.data_dir} (no folder {where})',
                 '--config.data.download=True', '`tfds build ',
                 '--config.data.dataset=image_folder'):
      self.assertIn(part, message)

  @parameterized.parameters(('celeba', '', 'celeb_a'),
                            ('lsun', 'church_outdoor', 'lsun/church_outdoor'))
  def test_manual_download_names_the_files_tfds_expects(self, dataset,
                                                        category, name):
    config = _config(dataset, data_dir=self.data_dir, category=category)
    with self.assertRaises(errors.InputError) as ctx:
      _create(config)
    message = str(ctx.exception)
    manual = os.path.join(self.data_dir, 'downloads', 'manual')
    self.assertIn(f'into {manual}', message)
    self.assertIn('run again with --config.data.download=True', message)
    self.assertIn(f'`tfds build {name} --data_dir=DIR`', message)
    # Exactly the file names tfds's builder looks for in its manual folder.
    expected = {info.filename for url, info in
                tfds.builder(name).url_infos.items()
                if dataset == 'celeba' or f'/{category}_' in url}
    self.assertLen(expected, 5 if dataset == 'celeba' else 2)
    for filename in expected:
      self.assertIn(filename, message)
    if dataset == 'lsun':
      self.assertIn('pip install tensorflow-io', message)

  def test_default_folder_is_named_when_data_dir_is_empty(self):
    config = _config('cifar10')
    with mock.patch.object(constants, 'DATA_DIR', self.data_dir):
      with self.assertRaisesRegex(
          errors.InputError,
          f'is not in the tfds default folder {self.data_dir}, used because '
          r'config.data.data_dir is empty \(no folder '
          f'{self.data_dir}/cifar10/3.0.2'):
        _create(config)

  def test_data_dir_inside_the_data_set_folder(self):
    inner = os.path.join(self.data_dir, 'cifar10')
    os.makedirs(inner)
    config = _config('cifar10', data_dir=inner)
    with self.assertRaisesRegex(
        errors.InputError, r'config.data.data_dir is the folder that holds '
        r'cifar10/, not a folder inside it'):
      _create(config)

  def test_download_with_several_processes(self):
    config = _config('cifar10', data_dir=self.data_dir, download=True)
    with mock.patch.object(jax, 'process_count', return_value=2):
      with self.assertRaisesRegex(
          errors.InputError, r'config.data.download=True with 2 processes: '
          r'prepare cifar10/3.0.2 in one process first'):
        _create(config, batch_size=2)

  def test_lsun_download_needs_tensorflow_io(self):
    config = _config('lsun', data_dir=self.data_dir, category='tower',
                     download=True)
    with mock.patch.dict('sys.modules', {'tensorflow_io': None}):
      with self.assertRaisesRegex(
          errors.InputError, r'tfds prepares lsun/tower/3.1.0 with the '
          r'tensorflow-io package; pip install tensorflow-io'):
        _create(config)


if __name__ == '__main__':
  absltest.main()
