"""Checks of `config.data` and of split sizes, each failing in one line.

Every failure is an `errors.ConfigError` whose message names the config field
(or folder) and the fix; run.py prints it as one line and exits with 2.
"""

import jax

from ncsn_jax import errors

# Channels each data set provides; image_folder converts to either 1 or 3.
NATIVE_CHANNELS = {'digits': 1, 'mnist': 1, 'cifar10': 3, 'celeba': 3,
                   'lsun': 3, 'image_folder': None}
# (height, width) of every image of a data set; LSUN and folders vary.
IMAGE_SHAPES = {'digits': (8, 8), 'mnist': (28, 28), 'cifar10': (32, 32),
                'celeba': (218, 178)}
# LSUN scene categories: the ones with both a train and a validation split.
LSUN_SCENES = ('bedroom', 'bridge', 'church_outdoor', 'classroom',
               'conference_room', 'dining_room', 'kitchen', 'living_room',
               'restaurant', 'tower')


def _check_geometry(data) -> None:
  """image_size and crop_size are positive / non-negative and fit the data."""
  if data.image_size <= 0:
    raise errors.ConfigError(
        f'config.data.image_size={data.image_size} must be positive.')
  if data.crop_size < 0:
    raise errors.ConfigError(
        f'config.data.crop_size={data.crop_size} must be >= 0 (0 = none).')
  if data.crop_size and data.dataset == 'digits':
    raise errors.ConfigError(
        f'config.data.crop_size={data.crop_size}: the 8x8 digits are not '
        'cropped; set config.data.crop_size=0.')
  shape = IMAGE_SHAPES.get(data.dataset)
  if shape and data.crop_size > min(shape):
    raise errors.ConfigError(
        f'config.data.crop_size={data.crop_size} is larger than the '
        f'{shape[0]}x{shape[1]} (height x width) images of {data.dataset}; '
        f'use at most {min(shape)}, or 0 for no crop.')


def _check_channels(data) -> None:
  if data.channels not in (1, 3):
    raise errors.ConfigError(
        f'config.data.channels={data.channels} must be 1 or 3.')
  if NATIVE_CHANNELS[data.dataset] == 3 and data.channels != 3:
    raise errors.ConfigError(
        f'config.data.channels={data.channels}, but {data.dataset} images '
        'have 3 channels; set config.data.channels=3.')


def validate(config, split: str) -> None:
  """Raises `errors.ConfigError` for an unusable `config.data` or split."""
  data = config.data
  if data.dataset not in NATIVE_CHANNELS:
    raise errors.ConfigError(
        f'config.data.dataset={data.dataset!r} is unknown; use one of '
        f'{", ".join(NATIVE_CHANNELS)}.')
  if split not in ('train', 'test'):
    raise errors.ConfigError(
        f"split={split!r} is unknown; use 'train' or 'test'.")
  _check_geometry(data)
  _check_channels(data)
  if data.dataset == 'lsun' and data.category not in LSUN_SCENES:
    raise errors.ConfigError(
        f'config.data.category={data.category!r} is not an LSUN scene '
        f'category with a validation split; use one of '
        f'{", ".join(LSUN_SCENES)}.')
  if data.shuffle_buffer <= 0:
    raise errors.ConfigError(
        f'config.data.shuffle_buffer={data.shuffle_buffer} must be positive.')
  if data.dataset in ('digits', 'image_folder') and not (
      0.0 < data.test_fraction < 1.0):
    raise errors.ConfigError(
        f'config.data.test_fraction={data.test_fraction} must lie in (0, 1).')


def batch_field(config, split: str, batch_size: int) -> str:
  """The config field a per-process batch size comes from, with its value.

  Training batches come from `config.training.batch_size`, test batches from
  `config.eval.batch_size`, both split over `jax.process_count()` processes;
  any other size is named by its value.
  """
  group = 'training' if split == 'train' else 'eval'
  total = config[group].batch_size
  if total // jax.process_count() == batch_size:
    return f'config.{group}.batch_size={total}'
  return f'batch_size={batch_size}'


def check_split_size(config, split: str, n, batch_size: int, source: str,
                     fix: str) -> None:
  """Fails unless a shard of `n` examples fills one batch of `batch_size`.

  Args:
    config: the run config.
    split: 'train' or 'test'.
    n: examples in this process's shard (None when unknown: no check).
    batch_size: per-process batch size; 0 only asks for a non-empty split.
    source: what the split was taken from, for the message.
    fix: how to get more examples, for the message (may be empty).
  """
  if n is None or (n > 0 and n >= batch_size):
    return
  where = ''
  if jax.process_count() > 1:
    where = f' on process {jax.process_index()} of {jax.process_count()}'
  field = batch_field(config, split, batch_size) if batch_size else ''
  need = f', fewer than one batch of {field}' if field else ''
  lower = f'lower {field.split("=")[0]}' if field else ''
  fixes = ' or '.join(f for f in (fix, lower) if f)
  raise errors.ConfigError(
      f'split {split!r} of {source} has {n} examples{where}{need}; '
      f'{fixes or "use a larger data set"}.')
