"""The two sides of `python -m ncsn_jax.fid`: image folders, npz, statistics.

A side is one of

* 'folder': PNG/JPEG files found recursively (`data.sources`), each read at
  its own size and converted to RGB as pytorch-fid reads them (grey
  repeated, alpha dropped, palettes expanded; the conversions are counted);
* 'images': an `.npz` holding uint8 [N,H,W,C] `images` (C = 1 or 3), as
  `--mode=sample` writes;
* 'stats': a reference-statistics `.npz`, this project's (`--mode=fid_stats`),
  TTUR / pytorch-fid's (`mu`, `sigma`) or score_sde's (`pool_3`), read by
  `sample_quality.load_reference`.

`open_side` checks a side and reads what is cheap (statistics, the file
list); `side_statistics` turns its images into Inception features in chunks
of one size, in file order, so folders of mixed sizes and sets larger than
memory both work.
"""

import collections
import dataclasses
import os
import zipfile
from typing import Callable, Iterator, Optional

import numpy as np

from ncsn_jax import errors
from ncsn_jax.data import sources
from ncsn_jax.evaluation import sample_quality

_WHAT = ('a folder of PNG/JPEG images, an .npz with uint8 [N,H,W,C] '
         '`images` or a reference-statistics .npz (pool_3, or mu and sigma)')


@dataclasses.dataclass
class Side:
  """One side of the comparison, checked and opened (`open_side`)."""
  what: str  # 'A' or 'B', for messages.
  path: str
  kind: str  # 'folder', 'images' or 'stats'.
  stats: Optional[dict] = None  # A 'stats' side's statistics.
  n: int = 0  # Images of a 'folder' or 'images' side.
  chunks: Optional[Iterator] = None  # (indices, uint8 images) of those.
  converted: collections.Counter = dataclasses.field(
      default_factory=collections.Counter)  # Folder files converted to RGB.


def kind_of(path: str, what: str) -> str:
  """'folder', 'images' or 'stats'; InputError for anything else."""
  if os.path.isdir(path):
    return 'folder'
  if not os.path.isfile(path):
    raise errors.InputError(f'{what}={path} does not exist; give {_WHAT}.')
  if not zipfile.is_zipfile(path):
    raise errors.InputError(f'{what}={path} is neither a folder nor an .npz '
                            f'file; give {_WHAT}.')
  with np.load(path, allow_pickle=False) as f:
    names = set(f.files)
  if 'images' in names:
    return 'images'
  if 'pool_3' in names or {'mu', 'sigma'} <= names:
    return 'stats'
  raise errors.InputError(f'{what}={path} holds {sorted(names)}; give '
                          f'{_WHAT}.')


def folder_files(folder: str, what: str) -> list[str]:
  """The folder's image files; InputError naming any that cannot be read."""
  paths = sources.list_image_files(folder, what)
  bad = [(p, why) for p in paths if (why := sources.why_unusable(p))]
  if bad:
    raise errors.InputError(
        f'{what}={folder}: {len(bad)} of {len(paths)} image files cannot be '
        f'read: {sources.describe(bad, folder)}.')
  return paths


def folder_chunks(paths: list[str], folder: str, what: str, chunk: int,
                  converted: collections.Counter):
  """Yields (file indices, uint8 [n,H,W,3]) of up to `chunk` same-size images.

  Counts the files that were not RGB by their mode in `converted`. Raises
  InputError when a file cannot be decoded.
  """
  pending: dict[tuple, tuple[list, list]] = {}
  for i, path in enumerate(paths):
    try:
      image, mode = sources.read_rgb(path)
    except (OSError, SyntaxError, ValueError) as e:
      raise errors.InputError(f'{what}={folder}: cannot decode '
                              f'{os.path.relpath(path, folder)} ({e}).') from e
    if mode != 'RGB':
      converted[mode] += 1
    indices, images = pending.setdefault(image.shape, ([], []))
    indices.append(i)
    images.append(image)
    if len(indices) == chunk:
      del pending[image.shape]
      yield indices, np.stack(images)
  for indices, images in pending.values():
    yield indices, np.stack(images)


def npz_images(path: str, what: str) -> np.ndarray:
  """uint8 [N,H,W,C] (C = 1 or 3) of an images `.npz`; InputError else."""
  with np.load(path, allow_pickle=False) as f:
    images = f['images']
  if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (
      1, 3):
    raise errors.InputError(
        f'{what}={path}: `images` is {images.dtype} {list(images.shape)}; '
        'expected uint8 [N,H,W,C] with C = 1 or 3.')
  return images


def open_side(path: str, what: str, preprocessing: str, chunk: int) -> Side:
  """Checks one side and reads what is cheap: statistics, file lists."""
  side = Side(what=what, path=path, kind=kind_of(path, what))
  if side.kind == 'stats':
    side.stats = sample_quality.load_reference(path, f'{what}={path}')
    sample_quality.check_preprocessing(
        side.stats, preprocessing, f'{what}={path}',
        'pass --preprocessing={mode} or recompute them')
  elif side.kind == 'folder':
    paths = folder_files(path, what)
    side.n = len(paths)
    side.chunks = folder_chunks(paths, path, what, chunk, side.converted)
  else:
    images = npz_images(path, what)
    side.n = images.shape[0]
    side.chunks = ((list(range(s, min(s + chunk, side.n))),
                    images[s:s + chunk]) for s in range(0, side.n, chunk))
  return side


def side_statistics(side: Side, extract: Callable,
                    progress: Callable[[int], None]) -> dict:
  """The statistics of an opened side (images: their features, now)."""
  if side.stats is not None:
    return side.stats
  feats: dict[str, np.ndarray] = {}
  for indices, images in side.chunks:
    for key, value in extract(images).items():
      if key not in feats:
        feats[key] = np.empty((side.n,) + value.shape[1:], value.dtype)
      feats[key][indices] = value
    progress(len(indices))
  if side.n < 2:
    raise errors.InputError(f'{side.what}={side.path} holds {side.n} '
                            'image(s); FID needs at least 2.')
  if not np.all(np.isfinite(feats['pool_3'])):
    raise errors.InputError(
        f'{side.what}={side.path}: the Inception features of its images are '
        'not finite (NaN or Inf); check the Inception weights (--weights).')
  return sample_quality.statistics(feats['pool_3'], feats.get('logits'))
