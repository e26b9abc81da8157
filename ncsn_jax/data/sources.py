"""Local data sources: image folders, the embedded digits, fixed splits.

Image folders: PNG/JPEG files under `config.data.data_dir`, found
recursively (a folder reached again through a link is read once) and sorted,
read lazily. Every file is opened once up front (header only): empty,
unreadable and non-image files, and images smaller than the centre crop, are
skipped with one warning that names them. A file whose pixel data turn out
to be corrupt when it is decoded is skipped then, with a warning naming it.
16-bit grey PNGs are scaled to 8 bits (`preprocessing.to_8bit`); any other
mode is converted to L (`config.data.channels=1`) or RGB (an alpha channel
is dropped, as torchvision's `ImageFolder` does).

The digits are scikit-learn's 1797 8x8 images, embedded and offline.

Data sets without their own test split (folders, digits) are split by a
fixed permutation from `config.data.split_seed`; each process reads an equal
contiguous shard of its split.
"""

import io
import os

from absl import logging
import numpy as np
from PIL import Image
import sklearn.datasets
import tensorflow as tf

from ncsn_jax import config_checks
from ncsn_jax import errors
from ncsn_jax.data import preprocessing

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg')
_MAX_NAMED = 10  # Skipped files named in the warning; the rest are counted.


def _walk(data_dir: str):
  """(root, file names) of every folder under `data_dir`, each folder once.

  Links to folders are followed, but a folder already read (by its device
  and inode: a link back up the tree, or two links to one folder) is not
  read again. Yields ('', names of the image files skipped) for each such
  folder. Remote folders (`gs://...`) have no links: tf.io.gfile walks them.
  """
  if '://' in data_dir:
    for root, _, files in tf.io.gfile.walk(data_dir):
      yield root, files
    return
  seen = set()
  for root, dirs, files in os.walk(data_dir, followlinks=True):
    st = os.stat(root)
    if (st.st_dev, st.st_ino) in seen:
      dirs[:] = []
      yield '', files
      continue
    seen.add((st.st_dev, st.st_ino))
    dirs.sort()
    yield root, files


def _images(names) -> list[str]:
  return [f for f in names if f.lower().endswith(IMAGE_EXTENSIONS)]


def list_image_files(data_dir: str,
                     what: str = 'config.data.data_dir') -> list[str]:
  """Sorted paths of the PNG/JPEG files under `data_dir` (recursive).

  `what` names the folder in errors (a config field or a command argument).
  Files in folders reached again through a link are skipped, with one
  warning that counts them.
  """
  if not data_dir or not tf.io.gfile.isdir(data_dir):
    raise errors.InputError(
        f'{what}={data_dir!r} is not a folder; '
        'point it at the image folder.')
  paths, repeated, loops = [], 0, 0
  for root, files in _walk(data_dir):
    if root:
      paths.extend(os.path.join(root, f) for f in _images(files))
    else:
      repeated, loops = repeated + len(_images(files)), loops + 1
  if loops:
    logging.warning(
        '%s=%s: %d folder link(s) lead back into folders already read; '
        'skipped the %d image file(s) seen through them.', what, data_dir,
        loops, repeated)
  if not paths:
    raise errors.InputError(
        f'{what}={data_dir!r} holds no '
        f'{"/".join(IMAGE_EXTENSIONS)} files; put images there or point it '
        'at the image folder.')
  return sorted(paths)


def _open_binary(path: str):
  """A seekable binary file: the file itself if local, else its bytes."""
  if '://' not in path:
    return open(path, 'rb')
  with tf.io.gfile.GFile(path, 'rb') as f:  # Remote: one read, in memory.
    return io.BytesIO(f.read())


def why_unusable(path: str, crop_size: int = 0):
  """Why a file cannot be used (from its header only), or None if it can."""
  try:
    with _open_binary(path) as f:
      if not f.read(1):
        return 'empty file'
      f.seek(0)
      with Image.open(f) as img:
        width, height = img.size
  except Image.UnidentifiedImageError:
    return 'not a PNG/JPEG image'
  except (OSError, tf.errors.OpError) as e:
    if isinstance(e, OSError) and e.errno is None:  # PIL: a broken header.
      return f'not a valid image: {e}'
    return f'unreadable: {getattr(e, "strerror", None) or e}'
  except (SyntaxError, ValueError, Image.DecompressionBombError) as e:
    return f'not a valid image: {e}'
  if crop_size and min(width, height) < crop_size:
    return (f'{width}x{height}, smaller than the {crop_size}x{crop_size} '
            'centre crop of config.data.crop_size')
  return None


def describe(skipped: list[tuple[str, str]], data_dir: str) -> str:
  """`a.png (empty file); b.jpg (...)`, paths relative to the folder."""
  named = [f'{os.path.relpath(p, data_dir)} ({why})'
           for p, why in skipped[:_MAX_NAMED]]
  more = len(skipped) - len(named)
  return '; '.join(named) + (f'; and {more} more' if more > 0 else '')


def usable_image_files(config) -> list[str]:
  """The folder's image files that can be used, warning about the others."""
  data_dir = config.data.data_dir
  paths = list_image_files(data_dir)
  reasons = [why_unusable(p, config.data.crop_size) for p in paths]
  skipped = [(p, why) for p, why in zip(paths, reasons) if why]
  usable = [p for p, why in zip(paths, reasons) if not why]
  if not usable:
    raise errors.ConfigError(
        f'config.data.data_dir={data_dir}: none of its {len(paths)} image '
        f'files can be used: {describe(skipped, data_dir)}.')
  if skipped:
    logging.warning('config.data.data_dir=%s: skipping %d of %d image files: '
                    '%s.', data_dir, len(skipped), len(paths),
                    describe(skipped, data_dir))
  return usable


def load_image_file(path: str, size: int, crop_size: int,
                    channels: int) -> np.ndarray:
  """Decodes one file to uint8 `[size, size, channels]` with PIL.

  Geometry of `preprocessing.center_crop_and_resize_pil`. Raises OSError (or
  SyntaxError / ValueError) when the file cannot be decoded.
  """
  img = _decode(path, 'L' if channels == 1 else 'RGB')
  img = preprocessing.center_crop_and_resize_pil(img, size, crop_size)
  return np.asarray(img, np.uint8).reshape(size, size, channels)


def _decode(path: str, mode: str) -> Image.Image:
  """The decoded 8-bit image, converted to `mode` ('L' or 'RGB')."""
  with tf.io.gfile.GFile(path, 'rb') as f:
    data = f.read()
  with Image.open(io.BytesIO(data)) as img:
    return preprocessing.to_8bit(img).convert(mode)


def read_rgb(path: str) -> tuple[np.ndarray, str]:
  """One file at its own size as uint8 [H, W, 3], and its original mode.

  Every mode is converted to RGB (grey repeated, alpha dropped, palettes
  expanded), as pytorch-fid reads its images. Raises OSError (or
  SyntaxError / ValueError) when it cannot be decoded.
  """
  with tf.io.gfile.GFile(path, 'rb') as f:
    data = f.read()
  with Image.open(io.BytesIO(data)) as img:
    mode = img.mode
    return np.asarray(preprocessing.to_8bit(img).convert('RGB'),
                      np.uint8), mode


def _decoder(data):
  """`path -> (uint8 [S, S, C] image, ok)`; a corrupt file gives ok=False."""
  shape = (data.image_size, data.image_size, data.channels)

  def load(path: bytes):
    name = path.decode()
    try:
      return load_image_file(name, data.image_size, data.crop_size,
                             data.channels), True
    except (OSError, SyntaxError, ValueError, tf.errors.OpError) as e:
      logging.warning('Skipping image file %s: cannot decode it (%s).', name,
                      e)
      return np.zeros(shape, np.uint8), False

  def decode(path):
    image, ok = tf.numpy_function(load, [path], (tf.uint8, tf.bool),
                                  stateful=False)
    return tf.ensure_shape(image, shape), tf.ensure_shape(ok, [])

  return decode


def folder_images(config, split, process_index, process_count, seeds,
                  batch_size):
  """Image-folder shard as a dataset of uint8 `[S, S, C]` images.

  Args:
    config: the run config.
    split: 'train' or 'test'.
    process_index: index of this process's shard.
    process_count: number of shards.
    seeds: `(file_seed, shuffle_seed)`: the paths are shuffled with
      shuffle_seed (a full shuffle every epoch), or None for a fixed order.
    batch_size: the shard must hold one batch (0: must not be empty).

  Returns:
    `(ds, n)`: the dataset and its size (files skipped while decoding are
    not subtracted).
  """
  data = config.data
  paths = np.array(usable_image_files(config))
  indices = split_indices(len(paths), config, split)
  indices = process_shard(indices, process_index, process_count)
  config_checks.check_split_size(
      config, split, len(indices), batch_size,
      f'the image folder {data.data_dir} ({len(paths)} usable images, '
      f'config.data.test_fraction={data.test_fraction})',
      'add images' + (' or raise config.data.test_fraction'
                      if split == 'test' else ''))
  ds = tf.data.Dataset.from_tensor_slices(paths[indices])
  if seeds is not None:
    # Shuffling the paths gives a full-epoch shuffle at no memory cost.
    ds = ds.shuffle(len(indices), seed=seeds[1],
                    reshuffle_each_iteration=True)
  ds = ds.map(_decoder(data), num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.filter(_decoded).map(_image)
  return ds, len(indices)


def _decoded(image, ok):
  del image
  return ok


def _image(image, ok):
  del ok
  return image


# ----------------- scikit-learn's 8x8 handwritten digits, embedded and offline
#
# Values 0..16 are scaled by 1/16; the fixed train/test split is a permutation
# drawn from `config.data.split_seed` (`split_indices`).


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
  train = split_indices(len(images), config, 'train')
  test = split_indices(len(images), config, 'test')
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
  indices = split_indices(len(images), config, split)
  indices = process_shard(indices, process_index, process_count)
  config_checks.check_split_size(
      config, split, len(indices), batch_size,
      f'the digits ({len(images)} images, config.data.test_fraction='
      f'{config.data.test_fraction})', 'change config.data.test_fraction')
  ds = tf.data.Dataset.from_tensor_slices(images[indices])
  if shuffle_seed is not None:
    ds = ds.shuffle(len(indices), seed=shuffle_seed,
                    reshuffle_each_iteration=True)
  return ds, len(indices)


# --------- Seeds, fixed train/test splits and per-process shards of a data set


def seeds(seed: int, process_index: int) -> tuple[int, int, int]:
  """Three independent 32-bit seeds (file order, shuffle, augmentation)."""
  entropy = [int(seed) & 0xFFFFFFFFFFFFFFFF, int(process_index)]
  states = np.random.SeedSequence(entropy).generate_state(3, np.uint32)
  return tuple(int(s) for s in states)


def split_indices(n: int, config, split: str) -> np.ndarray:
  """Indices of `split` in a fixed permutation of `n` examples.

  The permutation comes from `np.random.RandomState(config.data.split_seed)`;
  the last `round(n * config.data.test_fraction)` entries form the test split.
  """
  perm = np.random.RandomState(config.data.split_seed).permutation(n)
  n_test = int(round(n * config.data.test_fraction))
  return perm[n - n_test:] if split == 'test' else perm[:n - n_test]


def process_shard(indices: np.ndarray, process_index: int,
                  process_count: int) -> np.ndarray:
  """Contiguous equal-sized shard of `indices` for one process.

  Like `tfds.split_for_jax_process(..., drop_remainder=True)`: the last
  `len(indices) % process_count` entries are dropped so that every process
  yields the same number of batches and multi-host steps stay in lockstep.
  """
  size = len(indices) // process_count
  return indices[process_index * size:(process_index + 1) * size]
