"""scikit-learn's 8x8 handwritten digits, embedded and offline.

Values 0..16 are scaled by 1/16; the fixed train/test split is a permutation
drawn from `config.data.split_seed` (`splits.split_indices`).
"""

import numpy as np
import sklearn.datasets
import tensorflow as tf

from ncsn_jax.data import checks
from ncsn_jax.data import splits


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
  train = splits.split_indices(len(images), config, 'train')
  test = splits.split_indices(len(images), config, 'test')
  return images[train], labels[train], images[test], labels[test]


def digits_images(config, split, process_index, process_count, shuffle_seed,
                  batch_size):
  """Digits shard as a dataset of float32 `[S, S, C]` images.

  Args:
    config: the run config.
    split: 'train' or 'test'.
    process_index: index of this process's shard.
    process_count: number of shards.
    shuffle_seed: seed of a full shuffle reshuffled every epoch, or None.
    batch_size: the shard must hold one batch (0: must not be empty).

  Returns:
    `(ds, n)`: the dataset and its size.
  """
  images, _ = _digits_arrays(config)
  indices = splits.split_indices(len(images), config, split)
  indices = splits.process_shard(indices, process_index, process_count)
  checks.check_split_size(
      config, split, len(indices), batch_size,
      f'the digits ({len(images)} images, config.data.test_fraction='
      f'{config.data.test_fraction})', 'change config.data.test_fraction')
  ds = tf.data.Dataset.from_tensor_slices(images[indices])
  if shuffle_seed is not None:
    ds = ds.shuffle(len(indices), seed=shuffle_seed,
                    reshuffle_each_iteration=True)
  return ds, len(indices)
