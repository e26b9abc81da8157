"""Input pipeline: images as float32 `[B, H, W, C]` batches in [0, 1].

Data sets (`config.data.dataset`):

* `digits`: scikit-learn's 8x8 digits (values 0..16, scaled by 1/16), with a
  fixed train/test permutation drawn from `config.data.split_seed`.
* `mnist`, `cifar10`, `celeba` (tfds `celeb_a`), `lsun` (tfds
  `lsun/{category}`, test split `validation`): read with tfds.
* `image_folder`: PNG/JPEG files under `config.data.data_dir`, read lazily,
  split like `digits`.

Geometry follows the torchvision transforms of the reference code: an optional
centre crop of `config.data.crop_size` (CelebA: 140), then the shorter side is
resized to `config.data.image_size` (bilinear, antialiased) and the centre
square is kept. Resized tfds and folder images are rounded back to uint8, as
PIL's resize does, so they stay on the 256-level grid that uniform
dequantisation assumes.

Each process reads its own equal-sized shard of a split (up to
`process_count - 1` examples are dropped, so that all processes yield the same
number of batches). Shuffling, the random flip and dequantisation are seeded
from `seed` and the process index, so a run is reproducible; augmentation
noise is drawn per batch with stateless ops.
"""

import functools
import io
import os
from typing import Iterator, Optional

import jax
import numpy as np
from PIL import Image
import sklearn.datasets
import tensorflow as tf
import tensorflow_datasets as tfds

from ncsn_jax import errors

# Channels each data set provides; image_folder converts to any of 1 or 3.
_NATIVE_CHANNELS = {'digits': 1, 'mnist': 1, 'cifar10': 3, 'celeba': 3,
                    'lsun': 3, 'image_folder': None}
_IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg')


def _validate(config, split: str):
  """Raises ValueError for an unusable `config.data` or split name."""
  data = config.data
  if data.dataset not in _NATIVE_CHANNELS:
    raise errors.ConfigError(
        f'config.data.dataset={data.dataset!r} is unknown; use one of '
        f'{", ".join(_NATIVE_CHANNELS)}.')
  if split not in ('train', 'test'):
    raise errors.ConfigError(
        f"split={split!r} is unknown; use 'train' or 'test'.")
  if data.image_size <= 0:
    raise errors.ConfigError(
        f'config.data.image_size={data.image_size} must be positive.')
  if data.crop_size < 0:
    raise errors.ConfigError(
        f'config.data.crop_size={data.crop_size} must be >= 0 (0 = none).')
  if data.channels not in (1, 3):
    raise errors.ConfigError(
        f'config.data.channels={data.channels} must be 1 or 3.')
  native = _NATIVE_CHANNELS[data.dataset]
  if native == 3 and data.channels != 3:
    raise errors.ConfigError(
        f'config.data.channels={data.channels}, but {data.dataset} images '
        'have 3 channels; set config.data.channels=3.')
  if data.dataset == 'lsun' and not data.category:
    raise errors.ConfigError(
        "config.data.category is empty; set an LSUN category, "
        "e.g. 'church_outdoor'.")
  if data.dataset in ('digits',
                      'image_folder') and not (0.0 < data.test_fraction < 1.0):
    raise errors.ConfigError(f'config.data.test_fraction={data.test_fraction} '
                     'must lie in (0, 1).')


def _seeds(seed: int, process_index: int) -> tuple[int, int, int]:
  """Three independent 32-bit seeds (file order, shuffle, augmentation)."""
  entropy = [int(seed) & 0xFFFFFFFFFFFFFFFF, int(process_index)]
  states = np.random.SeedSequence(entropy).generate_state(3, np.uint32)
  return tuple(int(s) for s in states)


def _split_indices(n: int, config, split: str) -> np.ndarray:
  """Indices of `split` in a fixed permutation of `n` examples.

  The permutation comes from `np.random.RandomState(config.data.split_seed)`;
  the last `round(n * config.data.test_fraction)` entries form the test split.
  """
  perm = np.random.RandomState(config.data.split_seed).permutation(n)
  n_test = int(round(n * config.data.test_fraction))
  return perm[n - n_test:] if split == 'test' else perm[:n - n_test]


def _process_shard(indices: np.ndarray, process_index: int,
                   process_count: int) -> np.ndarray:
  """Contiguous equal-sized shard of `indices` for one process.

  Like `tfds.split_for_jax_process(..., drop_remainder=True)`: the last
  `len(indices) % process_count` entries are dropped so that every process
  yields the same number of batches and multi-host steps stay in lockstep.
  """
  size = len(indices) // process_count
  return indices[process_index * size:(process_index + 1) * size]


def _resize_small_shape(height: int, width: int, size: int) -> tuple[int, int]:
  """torchvision `Resize(int)` output size: the shorter side becomes `size`."""
  new_h = size if height <= width else size * height // width
  new_w = size if width <= height else size * width // height
  return new_h, new_w


def _center_offsets(height: int, width: int, crop_h: int,
                    crop_w: int) -> tuple[int, int]:
  """torchvision `CenterCrop` offsets (round half to even, like Python)."""
  return (int(round((height - crop_h) / 2.0)),
          int(round((width - crop_w) / 2.0)))


# ------------------------------------------------------------------ digits


def _digits_arrays(config) -> tuple[np.ndarray, np.ndarray]:
  """All 1797 digits as float32 `[N, S, S, C]` in [0, 1] and int labels."""
  bunch = sklearn.datasets.load_digits()
  images = (bunch.images.astype(np.float32) / 16.0)[..., None]
  size = config.data.image_size
  if size != images.shape[1]:
    images = tf.image.resize(images, [size, size], 'bilinear', antialias=True)
    images = np.clip(images.numpy(), 0.0, 1.0).astype(np.float32)
  if config.data.channels == 3:
    images = np.repeat(images, 3, axis=-1)
  return images, bunch.target.astype(np.int64)


def digits_split(config):
  """The fixed digits train/test split.

  Args:
    config: config with the `data` fields image_size, channels, split_seed and
      test_fraction.

  Returns:
    `(x_train, y_train, x_test, y_test)`: images float32 `[N, S, S, C]` in
    [0, 1] (S = image_size, C = channels, 1 for digits configs) and int64
    labels `[N]`.
  """
  images, labels = _digits_arrays(config)
  train = _split_indices(len(images), config, 'train')
  test = _split_indices(len(images), config, 'test')
  return images[train], labels[train], images[test], labels[test]


def _digits_images(config, split, process_index, process_count, shuffle_seed):
  """Digits shard as a dataset of float32 `[S, S, C]` images."""
  images, _ = _digits_arrays(config)
  indices = _split_indices(len(images), config, split)
  indices = _process_shard(indices, process_index, process_count)
  ds = tf.data.Dataset.from_tensor_slices(images[indices])
  if shuffle_seed is not None:
    ds = ds.shuffle(len(indices), seed=shuffle_seed,
                    reshuffle_each_iteration=True)
  return ds, len(indices)


# -------------------------------------------------------------------- tfds


def _tfds_name_and_split(config, split: str) -> tuple[str, str]:
  """tfds builder name and split name of a tfds-backed data set."""
  dataset = config.data.dataset
  if dataset == 'lsun':
    return f'lsun/{config.data.category}', (
        'validation' if split == 'test' else 'train')
  name = {'mnist': 'mnist', 'cifar10': 'cifar10', 'celeba': 'celeb_a'}[dataset]
  return name, split


def _center_crop_tf(image: tf.Tensor, crop_h, crop_w) -> tf.Tensor:
  """Centre crop of an `[H, W, C]` image with torchvision's offsets."""
  shape = tf.shape(image)
  tf.debugging.assert_greater_equal(
      shape[:2], tf.constant([crop_h, crop_w]),
      message=f'image smaller than the {crop_h}x{crop_w} centre crop '
      '(config.data.crop_size / config.data.image_size)')
  # tf.round rounds half to even, as Python's round in torchvision does.
  top = tf.cast(tf.round(tf.cast(shape[0] - crop_h, tf.float32) / 2), tf.int32)
  left = tf.cast(tf.round(tf.cast(shape[1] - crop_w, tf.float32) / 2),
                 tf.int32)
  return image[top:top + crop_h, left:left + crop_w]


def _preprocess_tf(image: tf.Tensor, config) -> tf.Tensor:
  """uint8 `[H, W, c]` -> uint8 `[S, S, C]`: crop, resize, channels."""
  data = config.data
  size = data.image_size
  if data.crop_size:
    image = _center_crop_tf(image, data.crop_size, data.crop_size)
  if tuple(image.shape[:2]) != (size, size):
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    new_h = tf.where(height <= width, size, size * height // width)
    new_w = tf.where(width <= height, size, size * width // height)
    image = tf.image.resize(image, tf.stack([new_h, new_w]), 'bilinear',
                            antialias=True)
    image = _center_crop_tf(image, size, size)
    image = tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)
  if image.shape[-1] == 1 and data.channels == 3:
    image = tf.image.grayscale_to_rgb(image)
  return tf.ensure_shape(image, [size, size, data.channels])


def _tfds_images(config, split, process_index, process_count, seeds):
  """tfds shard as a dataset of uint8 `[S, S, C]` images."""
  name, tfds_split = _tfds_name_and_split(config, split)
  shuffle = seeds is not None
  read_config = tfds.ReadConfig(shuffle_seed=seeds[0] if shuffle else None)
  ds = tfds.load(
      name,
      split=tfds.split_for_jax_process(
          tfds_split, process_index=process_index,
          process_count=process_count, drop_remainder=True),
      data_dir=config.data.data_dir or None,
      shuffle_files=shuffle,
      read_config=read_config)
  ds = ds.map(lambda ex: _preprocess_tf(ex['image'], config),
              num_parallel_calls=tf.data.AUTOTUNE)
  if shuffle:
    ds = ds.shuffle(config.data.shuffle_buffer, seed=seeds[1],
                    reshuffle_each_iteration=True)
  return ds, None


# ------------------------------------------------------------ image folder


def _list_image_files(data_dir: str) -> list[str]:
  """Sorted paths of the PNG/JPEG files under `data_dir` (recursive)."""
  if not data_dir or not tf.io.gfile.isdir(data_dir):
    raise errors.ConfigError(
        f'config.data.data_dir={data_dir!r} is not a folder; '
        'point it at the image folder.')
  paths = []
  for root, _, files in tf.io.gfile.walk(data_dir):
    paths.extend(os.path.join(root, f) for f in files
                 if f.lower().endswith(_IMAGE_EXTENSIONS))
  if not paths:
    raise errors.ConfigError(f'config.data.data_dir={data_dir!r} holds no '
                     f'{"/".join(_IMAGE_EXTENSIONS)} files.')
  return sorted(paths)


def _load_image_file(path: str, size: int, crop_size: int,
                     channels: int) -> np.ndarray:
  """Decodes one file to uint8 `[size, size, channels]` with PIL.

  Same geometry as torchvision's CenterCrop(crop) -> Resize(size) ->
  CenterCrop(size); the error names the file if it cannot be decoded.
  """
  try:
    with tf.io.gfile.GFile(path, 'rb') as f:
      img = Image.open(io.BytesIO(f.read()))
      img = img.convert('L' if channels == 1 else 'RGB')
  except (OSError, SyntaxError, ValueError) as e:
    raise errors.ConfigError(f'cannot decode image file {path}: {e}') from e
  if crop_size:
    top, left = _center_offsets(img.height, img.width, crop_size, crop_size)
    img = img.crop((left, top, left + crop_size, top + crop_size))
  if (img.height, img.width) != (size, size):
    new_h, new_w = _resize_small_shape(img.height, img.width, size)
    img = img.resize((new_w, new_h), Image.Resampling.BILINEAR)
    top, left = _center_offsets(new_h, new_w, size, size)
    img = img.crop((left, top, left + size, top + size))
  return np.asarray(img, np.uint8).reshape(size, size, channels)


def _folder_images(config, split, process_index, process_count, shuffle_seed):
  """Image-folder shard as a dataset of uint8 `[S, S, C]` images."""
  data = config.data
  paths = np.array(_list_image_files(data.data_dir))
  indices = _split_indices(len(paths), config, split)
  indices = _process_shard(indices, process_index, process_count)
  ds = tf.data.Dataset.from_tensor_slices(paths[indices])
  if shuffle_seed is not None:
    # Shuffling the paths gives a full-epoch shuffle at no memory cost.
    ds = ds.shuffle(len(indices), seed=shuffle_seed,
                    reshuffle_each_iteration=True)
  shape = [data.image_size, data.image_size, data.channels]

  def load(path: bytes) -> np.ndarray:
    return _load_image_file(path.decode(), data.image_size, data.crop_size,
                            data.channels)

  def decode(path):
    image = tf.numpy_function(load, [path], tf.uint8, stateful=False)
    return tf.ensure_shape(image, shape)

  return ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE), len(indices)


# ------------------------------------------------------------------ public


def _images(config, split, process_index, process_count, seeds):
  """Unbatched `[S, S, C]` images of one process's shard of `split`.

  Args:
    config: the run config.
    split: 'train' or 'test'.
    process_index: index of this process's shard.
    process_count: number of shards.
    seeds: `(file_seed, shuffle_seed)` to shuffle (reshuffled every epoch), or
      None for a fixed order.

  Returns:
    `(ds, n)`: a dataset of uint8 or float32 images, and its size (None when
    unknown).
  """
  dataset = config.data.dataset
  shuffle_seed = seeds[1] if seeds else None
  if dataset == 'digits':
    return _digits_images(config, split, process_index, process_count,
                          shuffle_seed)
  if dataset == 'image_folder':
    return _folder_images(config, split, process_index, process_count,
                          shuffle_seed)
  return _tfds_images(config, split, process_index, process_count, seeds)


def _to_float(images: tf.Tensor) -> tf.Tensor:
  """uint8 -> float32 / 255; float images pass through as float32."""
  if images.dtype == tf.uint8:
    return tf.cast(images, tf.float32) / 255.0
  return tf.cast(images, tf.float32)


def _augment(index, images, *, flip, uniform, gaussian, seed):
  """Batch `[B, S, S, C]` -> `{'image': float32}`, randomness keyed by index.

  Args:
    index: int64 batch counter (from `Dataset.enumerate`).
    images: a uint8 or float32 batch.
    flip: random left-right flip of each image with probability 1/2.
    uniform: uniform dequantisation x <- (255 x + u) / 256, u ~ U[0, 1).
    gaussian: Gaussian dequantisation x <- x + 0.01 n, n ~ N(0, 1).
    seed: per-process augmentation seed.

  Returns:
    `{'image': float32 [B, S, S, C]}`.
  """
  x = _to_float(images)
  keys = tf.random.experimental.stateless_split(
      tf.stack([tf.constant(seed, tf.int64), index]), num=3)
  if flip:
    coin = tf.random.stateless_uniform([tf.shape(x)[0], 1, 1, 1], keys[0])
    x = tf.where(coin < 0.5, tf.reverse(x, axis=[2]), x)
  if uniform:
    x = (255.0 * x + tf.random.stateless_uniform(tf.shape(x), keys[1])) / 256.0
  if gaussian:
    x = x + 0.01 * tf.random.stateless_normal(tf.shape(x), keys[2])
  return {'image': x}


def create_dataset(config, split: str, *, batch_size: int, shuffle: bool,
                   repeat: bool, augment: bool, seed: int) -> tf.data.Dataset:
  """Batched images of this process's shard of a split.

  Args:
    config: the run config (`config.data` is read).
    split: 'train' or 'test'.
    batch_size: per-process batch size B.
    shuffle: shuffle examples (reshuffled every epoch).
    repeat: repeat forever.
    augment: apply the random flip (if `config.data.random_flip`).
      Dequantisation (`config.data.{uniform,gaussian}_dequantization`) is
      applied whenever enabled, to both splits.
    seed: seed of shuffling and augmentation (folded with the process index).

  Returns:
    A prefetched dataset of `{'image': float32 [B, S, S, C]}` in [0, 1] (up to
    Gaussian dequantisation), S = image_size, C = channels; the last partial
    batch is dropped.
  """
  _validate(config, split)
  if batch_size <= 0:
    raise errors.ConfigError(f'batch_size={batch_size} must be positive.')
  process_index, process_count = jax.process_index(), jax.process_count()
  file_seed, shuffle_seed, aug_seed = _seeds(seed, process_index)
  seeds = (file_seed, shuffle_seed) if shuffle else None
  ds, n = _images(config, split, process_index, process_count, seeds)
  if n is not None and (n == 0 or (n < batch_size and not repeat)):
    raise errors.ConfigError(
        f'split {split!r} of {config.data.dataset} has {n} examples on process '
        f'{process_index}, fewer than one batch of {batch_size}.')
  if repeat:
    ds = ds.repeat()
  ds = ds.batch(batch_size, drop_remainder=True).enumerate()
  ds = ds.map(
      functools.partial(
          _augment, flip=augment and config.data.random_flip,
          uniform=config.data.uniform_dequantization,
          gaussian=config.data.gaussian_dequantization, seed=aug_seed),
      num_parallel_calls=tf.data.AUTOTUNE)
  return ds.prefetch(tf.data.AUTOTUNE)


def numpy_iterator(ds: tf.data.Dataset) -> Iterator[dict[str, np.ndarray]]:
  """Iterates a dataset of `{'image': [B, S, S, C]}` as NumPy arrays."""
  return iter(tfds.as_numpy(ds))


def iterate_split(config, split: str, batch_size: int,
                  max_examples: Optional[int] = None) -> Iterator[np.ndarray]:
  """The whole split (every process gets all of it) in a fixed order, streamed.

  Args:
    config: the run config.
    split: 'train' or 'test'.
    batch_size: images per yielded batch.
    max_examples: keep only the first this many examples; None keeps all.

  Yields:
    float32 `[b, S, S, C]` batches in [0, 1] without augmentation or
    dequantisation; b = batch_size except for a smaller last batch.
  """
  _validate(config, split)
  ds, _ = _images(config, split, 0, 1, None)
  if max_examples is not None:
    ds = ds.take(max_examples)
  ds = ds.batch(batch_size).map(_to_float, num_parallel_calls=tf.data.AUTOTUNE)
  return iter(tfds.as_numpy(ds.prefetch(tf.data.AUTOTUNE)))


def load_split_arrays(config, split: str,
                      max_examples: Optional[int] = None) -> np.ndarray:
  """`iterate_split` gathered into one float32 `[N, S, S, C]` array."""
  batches = list(iterate_split(config, split, 256, max_examples))
  if not batches:
    size, channels = config.data.image_size, config.data.channels
    return np.zeros((0, size, size, channels), np.float32)
  return np.concatenate(batches, axis=0)
