"""Input pipeline: images as float32 `[B, H, W, C]` batches in [0, 1].

Data sets (`config.data.dataset`), each read by its own module:

* `digits` (`sources.py`): scikit-learn's 8x8 digits, embedded, offline.
* `mnist`, `cifar10`, `celeba`, `lsun` (`tfds_source.py`): tfds data sets in
  `config.data.data_dir`, downloaded only with `config.data.download=True`.
* `image_folder` (`sources.py`): PNG/JPEG files under
  `config.data.data_dir`, read lazily.

Geometry and dequantisation are the pure functions of `preprocessing.py`.
The config has been checked (`config_checks`) before anything is read; a
split too small for one batch, or files that cannot be read, fail with one
`errors.InputError` line.

Each process reads its own equal-sized shard of a split (up to
`process_count - 1` examples are dropped, so that all processes yield the same
number of batches). Shuffling, the random flip and dequantisation are seeded
from `seed` and the process index, so a run is reproducible; augmentation
noise is drawn per batch with stateless ops.
"""

import functools
from typing import Iterator, Optional

import jax
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from ncsn_jax.data import preprocessing
from ncsn_jax.data import sources
from ncsn_jax.data import tfds_source


def _images(config, split, process_index, process_count, seeds, batch_size):
  """Unbatched `[S, S, C]` images of one process's shard of `split`.

  Args:
    config: the run config.
    split: 'train' or 'test'.
    process_index: index of this process's shard.
    process_count: number of shards.
    seeds: `(file_seed, shuffle_seed)` to shuffle (reshuffled every epoch), or
      None for a fixed order.
    batch_size: the shard must hold one batch (0: must not be empty).

  Returns:
    `(ds, n)`: a dataset of uint8 or float32 images, and its size (None when
    unknown).
  """
  if split not in ('train', 'test'):
    raise ValueError(f"split={split!r} is unknown; use 'train' or 'test'.")
  dataset = config.data.dataset
  if dataset == 'digits':
    return sources.digits_images(config, split, process_index, process_count,
                                 seeds[1] if seeds else None, batch_size)
  if dataset == 'image_folder':
    return sources.folder_images(config, split, process_index,
                                 process_count, seeds, batch_size)
  return tfds_source.tfds_images(config, split, process_index, process_count,
                                 seeds, batch_size)


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
    uniform: uniform dequantisation `preprocessing.uniform_dequantize`,
      u ~ U[0, 1).
    gaussian: Gaussian dequantisation `preprocessing.gaussian_dequantize`,
      n ~ N(0, 1).
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
    x = preprocessing.uniform_dequantize(
        x, tf.random.stateless_uniform(tf.shape(x), keys[1]))
  if gaussian:
    x = preprocessing.gaussian_dequantize(
        x, tf.random.stateless_normal(tf.shape(x), keys[2]))
  return {'image': x}


def create_dataset(config, split: str, *, batch_size: int, shuffle: bool,
                   repeat: bool, augment: bool, seed: int) -> tf.data.Dataset:
  """Batched images of this process's shard of a split.

  Args:
    config: the run config (`config.data` is read).
    split: 'train' or 'test'.
    batch_size: per-process batch size B; the shard must hold one batch.
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
  process_index, process_count = jax.process_index(), jax.process_count()
  file_seed, shuffle_seed, aug_seed = sources.seeds(seed, process_index)
  seeds = (file_seed, shuffle_seed) if shuffle else None
  ds, _ = _images(config, split, process_index, process_count, seeds,
                  batch_size)
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
                  max_examples: Optional[int] = None,
                  skip_batches: int = 0) -> Iterator[np.ndarray]:
  """The whole split (every process gets all of it) in a fixed order, streamed.

  Args:
    config: the run config.
    split: 'train' or 'test'.
    batch_size: images per yielded batch.
    max_examples: keep only the first this many examples; None keeps all.
    skip_batches: start after this many batches (a resumed pass).

  Yields:
    float32 `[b, S, S, C]` batches in [0, 1] without augmentation or
    dequantisation; b = batch_size except for a smaller last batch. An empty
    split is an `errors.ConfigError`.
  """
  ds, _ = _images(config, split, 0, 1, None, 0)
  if max_examples is not None:
    ds = ds.take(max_examples)
  ds = ds.batch(batch_size).skip(skip_batches).map(
      _to_float, num_parallel_calls=tf.data.AUTOTUNE)
  return iter(tfds.as_numpy(ds.prefetch(tf.data.AUTOTUNE)))


def load_split_arrays(config, split: str,
                      max_examples: Optional[int] = None) -> np.ndarray:
  """`iterate_split` gathered into one float32 `[N, S, S, C]` array."""
  batches = list(iterate_split(config, split, 256, max_examples))
  if not batches:
    size, channels = config.data.image_size, config.data.channels
    return np.zeros((0, size, size, channels), np.float32)
  return np.concatenate(batches, axis=0)
