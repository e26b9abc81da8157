"""tfds data sets: `mnist`, `cifar10`, `celeba` (`celeb_a`) and `lsun/<scene>`.

A data set is read from `config.data.data_dir` (the folder that holds
`<name>/<version>/`; empty = tfds's default folder). It is downloaded only
when `config.data.download` is True, so a missing data set on an offline
machine fails in one line that names the folder and the ways to get the data.
CelebA (Google Drive) and LSUN often cannot be fetched by tfds; their message
names the files to put into tfds's manual folder instead.
"""

import importlib.util
import os

from absl import logging
import jax
import tensorflow as tf
import tensorflow_datasets as tfds

from ncsn_jax import config_checks
from ncsn_jax import errors
from ncsn_jax.data import preprocessing

_TFDS_NAMES = {'mnist': 'mnist', 'cifar10': 'cifar10', 'celeba': 'celeb_a'}
# CelebA's files as tfds's celeb_a builder names them in its checksums.
CELEBA_FILES = ('img_align_celeba.zip', 'list_eval_partition.txt',
                'list_attr_celeba.txt', 'list_landmarks_align_celeba.txt',
                'identity_CelebA.txt')
_CELEBA_HOME = 'http://mmlab.ie.cuhk.edu.hk/projects/CelebA.html'
_LSUN_HOME = 'http://dl.yf.io/lsun/scenes/'
_IMAGE_FOLDER_FIX = ('or train on an image folder (--config.data.dataset='
                     'image_folder --config.data.data_dir=FOLDER)')


def lsun_files(category: str) -> tuple[str, str]:
  """The two archives tfds's lsun builder reads for a scene category."""
  return f'{category}_train_lmdb.zip', f'{category}_val_lmdb.zip'


def tfds_name_and_split(config, split: str) -> tuple[str, str]:
  """tfds builder name and split name of a tfds-backed data set."""
  dataset = config.data.dataset
  if dataset == 'lsun':
    return f'lsun/{config.data.category}', (
        'validation' if split == 'test' else 'train')
  return _TFDS_NAMES[dataset], split


def _manual_step(config, builder) -> str:
  """How to get the data set's files by hand, or '' if tfds can fetch them."""
  manual = os.path.join(builder.data_dir_root, 'downloads', 'manual')
  if config.data.dataset == 'celeba':
    files = ', '.join(CELEBA_FILES)
    return (f'tfds often cannot fetch CelebA from Google Drive: download '
            f'{files} from {_CELEBA_HOME} into {manual} and run again with '
            '--config.data.download=True')
  if config.data.dataset == 'lsun':
    files = ' and '.join(lsun_files(config.data.category))
    return (f'download {files} from {_LSUN_HOME} into {manual}, '
            'pip install tensorflow-io (tfds reads LSUN with it) and run '
            'again with --config.data.download=True')
  return ''


def _elsewhere_step(config) -> str:
  name, _ = tfds_name_and_split(config, 'train')
  return (f'on a machine with network access run `tfds build {name} '
          '--data_dir=DIR`, copy DIR here and pass --config.data.data_dir=DIR')


def _folder(config, builder) -> str:
  """The folder looked in, as the user set it."""
  if config.data.data_dir:
    return f'config.data.data_dir={config.data.data_dir}'
  return (f'the tfds default folder {builder.data_dir_root}, used because '
          'config.data.data_dir is empty')


def missing_message(config, builder) -> str:
  """One line: the data set is not prepared in the folder, and the fixes."""
  full_name = builder.info.full_name
  where = os.path.join(builder.data_dir_root, full_name)
  steps = [_manual_step(config, builder) or
           'run again with --config.data.download=True (needs network access)',
           _elsewhere_step(config), _IMAGE_FOLDER_FIX]
  inside = ''
  base = os.path.basename(os.path.normpath(config.data.data_dir or '.'))
  if base in (builder.name, str(builder.version)):
    inside = (f' (config.data.data_dir is the folder that holds '
              f'{builder.name}/, not a folder inside it)')
  return (f'config.data.dataset={config.data.dataset!r}: tfds data set '
          f'{full_name} is not in {_folder(config, builder)} (no folder '
          f'{where}){inside}; ' + '; '.join(steps) + '.')


def _download_errors() -> tuple[type, ...]:
  """What a failed tfds download or preparation raises (network, files)."""
  # pylint: disable=g-import-not-at-top
  from tensorflow_datasets.core.download import download_manager
  from tensorflow_datasets.core.download import extractor
  return (OSError, ValueError, RuntimeError, tfds.download.DownloadError,
          download_manager.NonMatchingChecksumError, extractor.ExtractError,
          tf.errors.OpError)


def _download(config, builder) -> None:
  """`config.data.download=True`: download and prepare a missing data set."""
  if builder.is_prepared():
    return
  full_name = builder.info.full_name
  if jax.process_count() > 1:
    raise errors.ConfigError(
        f'config.data.download=True with {jax.process_count()} processes: '
        f'prepare {full_name} in one process first (or with `tfds build`), '
        'then run with --config.data.data_dir.')
  if config.data.dataset == 'lsun':
    if importlib.util.find_spec('tensorflow_io') is None:
      raise errors.ConfigError(
          f'config.data.download=True: tfds prepares {full_name} with the '
          'tensorflow-io package; pip install tensorflow-io.')
  logging.info('Downloading and preparing %s into %s.', full_name,
               builder.data_dir_root)
  try:
    builder.download_and_prepare()
  except _download_errors() as e:
    cause = (str(e).strip().splitlines() or [''])[0][:300]
    steps = [s for s in (_manual_step(config, builder),
                         _elsewhere_step(config), _IMAGE_FOLDER_FIX) if s]
    raise errors.ConfigError(
        f'config.data.download=True: tfds could not download and prepare '
        f'{full_name} into {builder.data_dir_root} ({type(e).__name__}: '
        f'{cause}); ' + '; '.join(steps) + '.') from e


def _preprocess(image: tf.Tensor, data) -> tf.Tensor:
  """uint8 `[H, W, c]` -> uint8 `[S, S, C]`: crop, resize, channels."""
  image = preprocessing.center_crop_and_resize(image, data.image_size,
                                               data.crop_size)
  if image.shape[-1] == 1 and data.channels == 3:
    image = tf.image.grayscale_to_rgb(image)
  return tf.ensure_shape(image, [data.image_size, data.image_size,
                                 data.channels])


def tfds_images(config, split, process_index, process_count, seeds,
                batch_size):
  """tfds shard as a dataset of uint8 `[S, S, C]` images.

  Args:
    config: the run config.
    split: 'train' or 'test' (LSUN's test split is tfds's 'validation').
    process_index: index of this process's shard.
    process_count: number of shards.
    seeds: `(file_seed, shuffle_seed)` to shuffle (files, then a buffer of
      `config.data.shuffle_buffer` examples), or None for a fixed order.
    batch_size: the shard must hold one batch (0: must not be empty).

  Returns:
    `(ds, n)`: the dataset and its size (None when tfds does not know it).
  """
  data = config.data
  name, tfds_split = tfds_name_and_split(config, split)
  builder = tfds.builder(name, data_dir=data.data_dir or None)
  if data.download:
    _download(config, builder)
  shuffle = seeds is not None
  try:
    ds = builder.as_dataset(
        split=tfds.split_for_jax_process(
            tfds_split, process_index=process_index,
            process_count=process_count, drop_remainder=True),
        shuffle_files=shuffle,
        read_config=tfds.ReadConfig(shuffle_seed=seeds[0] if shuffle else None))
  except AssertionError:  # tfds: "could not find data in <data_dir>".
    if builder.is_prepared():
      raise
    raise errors.InputError(missing_message(config, builder)) from None
  n = int(ds.cardinality())
  n = n if n >= 0 else None
  config_checks.check_split_size(
      config, split, n, batch_size,
      f'tfds {builder.info.full_name} in {builder.data_dir_root}', '')
  ds = ds.map(lambda ex: _preprocess(ex['image'], data),
              num_parallel_calls=tf.data.AUTOTUNE)
  if shuffle:
    ds = ds.shuffle(data.shuffle_buffer, seed=seeds[1],
                    reshuffle_each_iteration=True)
  return ds, n
