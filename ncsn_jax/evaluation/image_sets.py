"""The two sides of `python -m ncsn_jax.fid`: image folders, npz, statistics.

A side is one of

* 'folder': PNG/JPEG files found recursively (`data.image_folder`), each
  read at its own size; grey files stay 1-channel (the Inception
  preprocessing repeats them to RGB), everything else is RGB;
* 'images': an `.npz` holding uint8 [N,H,W,C] `images` (C = 1 or 3), as
  `--mode=sample` writes;
* 'stats': a reference-statistics `.npz`, this project's (`--mode=fid_stats`),
  TTUR / pytorch-fid's (`mu`, `sigma`) or score_sde's (`pool_3`), read by
  `sample_quality.load_reference`.

Images are turned into Inception features in chunks of one size, in file
order, so folders of mixed sizes and sets larger than memory both work.
"""

import os
import zipfile
from typing import Callable, Iterator

import numpy as np

from ncsn_jax import errors
from ncsn_jax.data import sources
from ncsn_jax.evaluation import metrics
from ncsn_jax.evaluation import sample_quality

KINDS = ('folder', 'images', 'stats')
_WHAT = ('a folder of PNG/JPEG images, an .npz with uint8 [N,H,W,C] '
         '`images` or a reference-statistics .npz (pool_3, or mu and sigma)')


def kind_of(path: str, what: str) -> str:
  """'folder', 'images' or 'stats'; ConfigError for anything else."""
  if os.path.isdir(path):
    return 'folder'
  if not os.path.isfile(path):
    raise errors.ConfigError(f'{what}={path} does not exist; give {_WHAT}.')
  if not zipfile.is_zipfile(path):
    raise errors.ConfigError(f'{what}={path} is neither a folder nor an .npz '
                             f'file; give {_WHAT}.')
  with np.load(path, allow_pickle=False) as f:
    names = set(f.files)
  if 'images' in names:
    return 'images'
  if 'pool_3' in names or {'mu', 'sigma'} <= names:
    return 'stats'
  raise errors.ConfigError(f'{what}={path} holds {sorted(names)}; give '
                           f'{_WHAT}.')


def folder_files(folder: str, what: str) -> list[str]:
  """The folder's image files; ConfigError naming any that cannot be read."""
  paths = sources.list_image_files(folder, what)
  bad = [(p, why) for p in paths if (why := sources.why_unusable(p))]
  if bad:
    raise errors.ConfigError(
        f'{what}={folder}: {len(bad)} of {len(paths)} image files cannot be '
        f'read: {sources.describe(bad, folder)}.')
  return paths


def folder_chunks(paths: list[str], folder: str, what: str,
                  chunk: int) -> Iterator[tuple[list[int], np.ndarray]]:
  """Yields (file indices, uint8 [n,H,W,C]) of up to `chunk` same-size images.

  Raises ConfigError when a file cannot be decoded or the channel counts
  differ (grey and colour files in one set).
  """
  pending: dict[tuple, tuple[list, list]] = {}
  first = None
  for i, path in enumerate(paths):
    try:
      image = sources.read_image(path)
    except (OSError, SyntaxError, ValueError) as e:
      raise errors.ConfigError(f'{what}={folder}: cannot decode '
                               f'{os.path.relpath(path, folder)} ({e}).') from e
    if first is None:
      first = (image.shape[-1], path)
    elif image.shape[-1] != first[0]:
      raise errors.ConfigError(
          f'{what}={folder} mixes {first[0]}-channel images ('
          f'{os.path.relpath(first[1], folder)}) and {image.shape[-1]}-channel'
          f' ones ({os.path.relpath(path, folder)}); convert them all to grey '
          'or all to RGB.')
    indices, images = pending.setdefault(image.shape, ([], []))
    indices.append(i)
    images.append(image)
    if len(indices) == chunk:
      del pending[image.shape]
      yield indices, np.stack(images)
  for indices, images in pending.values():
    yield indices, np.stack(images)


def npz_images(path: str, what: str) -> np.ndarray:
  """uint8 [N,H,W,C] (C = 1 or 3) of an images `.npz`; ConfigError else."""
  with np.load(path, allow_pickle=False) as f:
    images = f['images']
  if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (
      1, 3):
    raise errors.ConfigError(
        f'{what}={path}: `images` is {images.dtype} {list(images.shape)}; '
        'expected uint8 [N,H,W,C] with C = 1 or 3.')
  return images


def features(chunks, n: int, extract: Callable,
             progress: Callable[[int], None]) -> dict[str, np.ndarray]:
  """{'pool_3': [n,2048], ('logits')} of (indices, images) chunks, in order."""
  out: dict[str, np.ndarray] = {}
  for indices, images in chunks:
    for key, value in extract(images).items():
      if key not in out:
        out[key] = np.empty((n,) + value.shape[1:], value.dtype)
      out[key][indices] = value
    progress(len(indices))
  return out


def image_chunks(path: str, kind: str, what: str, chunk: int):
  """(number of images, iterator of (indices, uint8 images)) of a side."""
  if kind == 'folder':
    paths = folder_files(path, what)
    return len(paths), folder_chunks(paths, path, what, chunk)
  images = npz_images(path, what)
  n = images.shape[0]
  return n, ((list(range(s, min(s + chunk, n))), images[s:s + chunk])
             for s in range(0, n, chunk))


def from_features(feats: dict, what: str, path: str) -> dict:
  """A side's statistics from its features: mu, sigma, pool_3, logits."""
  n = feats['pool_3'].shape[0] if feats else 0
  if n < 2:
    raise errors.ConfigError(f'{what}={path} holds {n} image(s); FID needs '
                             'at least 2.')
  mu, sigma = metrics.mean_and_covariance(feats['pool_3'])
  return {
      'mu': mu,
      'sigma': sigma,
      'pool_3': feats['pool_3'],
      'logits': feats.get('logits'),
      'meta': {
          'num_examples': n
      }
  }


def statistics(path: str, what: str, preprocessing: str) -> dict:
  """A stats `.npz` read by `load_reference`, checked against the mode."""
  ref = sample_quality.load_reference(path)
  mode = ref['meta'].get('preprocessing')
  if mode and mode != preprocessing:
    raise errors.ConfigError(
        f'{what}={path} holds {mode!r}-preprocessed statistics; pass '
        f'--preprocessing={mode} or recompute them.')
  return dict(ref, logits=None)
