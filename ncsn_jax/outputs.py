"""Everything the project writes besides checkpoints, written atomically.

Every file goes through `atomic_open`: the bytes go to a temporary file in
the target folder, are flushed to disk, and the file is then `os.replace`d
into place, so a reader never sees a half-written file. This module holds
the writers of

* image grids (PNG), sample arrays (uint8 `.npz`) and GIFs, NHWC, float in
  [0, 1] or uint8; floats are quantised by `to_uint8` (torchvision
  `save_image` rounding), so a PNG and the npz used for metrics hold the same
  pixel values, and single-channel images stay single-channel;
* plots (loss curve, checkpoint sweep, the toy experiment's figures) through
  `save_figure`;
* `WORKDIR/metrics.jsonl` (append, read, truncate on resume) and TensorBoard
  (clu writers: scalars, sample grids, an eval sweep's numbers);
* and it knows the per-user cache folder (`cache_root`): Inception weights,
  reference statistics and JAX's compilation cache live there, never inside
  the package.
"""

import contextlib
import hashlib
import io
import json
import math
import os
from typing import Optional, Sequence
import uuid

from matplotlib import figure
from matplotlib.backends import backend_agg
import numpy as np
from PIL import Image

from ncsn_jax import errors

METRICS_FILE = 'metrics.jsonl'


@contextlib.contextmanager
def atomic_open(path: str):
  """Yields a binary temp file next to `path`; renamed to `path` on success.

  On an exception the temp file is removed and `path` is left as it was.
  """
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  tmp_path = os.path.join(
      directory, f'.{os.path.basename(path)}.{uuid.uuid4().hex}.tmp')
  # os.open with 0o666 honours the umask (mkstemp would leave the file 0600).
  fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
  try:
    with os.fdopen(fd, 'wb') as f:
      yield f
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp_path, path)
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      os.remove(tmp_path)
    raise


def check_writable(folder: str, field: str) -> None:
  """Creates `folder` and writes a probe file there now, not after the work.

  Raises `errors.InputError` (one line, naming the folder and `field`, the
  flag or config field that chose it) when the folder cannot be made or
  written.
  """
  try:
    os.makedirs(folder, exist_ok=True)
    probe = os.path.join(folder, f'.write_probe.{uuid.uuid4().hex}')
    with open(probe, 'w') as f:
      f.write('ok')
    os.remove(probe)
  except OSError as e:
    raise errors.InputError(
        f'cannot write to {folder} ({e.strerror or e}); fix its permissions, '
        f'free disk space or choose another {field}.') from e


def save_bytes(path: str, data: bytes) -> None:
  """Writes `data` to `path` atomically."""
  with atomic_open(path) as f:
    f.write(data)


def save_text(path: str, text: str) -> None:
  """Writes UTF-8 `text` to `path` atomically."""
  save_bytes(path, text.encode('utf-8'))


def sha256_of(path_or_bytes) -> str:
  """Hex sha256 of a file (read in 1 MiB chunks) or of a bytes object."""
  digest = hashlib.sha256()
  if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
    digest.update(path_or_bytes)
  else:
    with open(path_or_bytes, 'rb') as f:
      for chunk in iter(lambda: f.read(1 << 20), b''):
        digest.update(chunk)
  return digest.hexdigest()


def save_figure(fig: figure.Figure, path: str) -> None:
  """Writes a matplotlib `Figure` as PNG (atomically).

  Figures are standalone (`figure.Figure` with the Agg canvas), so pyplot's
  global state and the process-wide backend are untouched.
  """
  buffer = io.BytesIO()
  backend_agg.FigureCanvasAgg(fig).print_png(buffer)
  save_bytes(path, buffer.getvalue())


# ------------------------------------------------------ images, npz, GIFs

_PIL_MODES = {1: 'L', 3: 'RGB', 4: 'RGBA'}


def to_uint8(images) -> np.ndarray:
  """Quantises images to uint8, torchvision style.

  Floats are clipped to [0, 1] and mapped to floor(x * 255 + 0.5), computed in
  the input's float dtype (as torchvision's `save_image`, which rounds to
  nearest, unlike score_sde's truncating `astype(uint8)`). NaN maps to 0.
  uint8 input is returned unchanged (as a copy).

  Args:
    images: array of any shape, float in [0, 1] or uint8.

  Returns:
    uint8 array of the same shape.
  """
  x = np.asarray(images)
  if x.dtype == np.uint8:
    return x.copy()
  if not np.issubdtype(x.dtype, np.floating):
    raise TypeError(f'Images must be float in [0, 1] or uint8, got {x.dtype}.')
  x = np.nan_to_num(x, nan=0.0)
  return np.floor(np.clip(x, 0, 1) * x.dtype.type(255) +
                  x.dtype.type(0.5)).astype(np.uint8)


def _as_nhwc_uint8(images) -> np.ndarray:
  x = to_uint8(images)
  if x.ndim != 4:
    raise ValueError(f'Images must be 4-D [N,H,W,C], got shape {x.shape}.')
  if x.shape[0] == 0:
    raise ValueError('Need at least one image.')
  return x


def make_grid(images, ncol: Optional[int] = None, padding: int = 2,
              pad_value: float = 0.0) -> np.ndarray:
  """Tiles images into one uint8 image, torchvision `make_grid` layout.

  Tiles are filled row by row. Each cell is (H + padding) x (W + padding) with
  the image at offset `padding`, and the grid has an extra `padding` at the
  bottom and right, so every gap (borders included) is `padding` wide. Unused
  cells of the last row stay `pad_value`.

  Args:
    images: [N,H,W,C] float in [0, 1] or uint8.
    ncol: images per row, capped at N; default ceil(sqrt(N)).
    padding: gap in pixels.
    pad_value: gap intensity in [0, 1] (quantised like the images).

  Returns:
    uint8 [rows * (H + padding) + padding, ncol * (W + padding) + padding, C].
  """
  x = _as_nhwc_uint8(images)
  n, h, w, c = x.shape
  ncol = math.ceil(math.sqrt(n)) if ncol is None else min(ncol, n)
  if ncol < 1 or padding < 0:
    raise ValueError(f'Need ncol >= 1 and padding >= 0, got {ncol}, '
                     f'{padding}.')
  nrow = math.ceil(n / ncol)
  fill = to_uint8(np.float64(pad_value))
  grid = np.full([nrow * (h + padding) + padding,
                  ncol * (w + padding) + padding, c], fill, np.uint8)
  for i in range(n):
    top = (i // ncol) * (h + padding) + padding
    left = (i % ncol) * (w + padding) + padding
    grid[top:top + h, left:left + w] = x[i]
  return grid


def _upscale(image: np.ndarray, scale: int) -> np.ndarray:
  """Nearest-neighbour upscaling of [...,H,W,C] by an integer factor."""
  if scale < 1:
    raise ValueError(f'scale must be a positive integer, got {scale}.')
  return np.repeat(np.repeat(image, scale, axis=-3), scale, axis=-2)


def _to_pil(image: np.ndarray) -> Image.Image:
  """uint8 [H,W,C] with C in {1, 3, 4} to a PIL image."""
  c = image.shape[-1]
  if c not in _PIL_MODES:
    raise ValueError(f'Can only write 1, 3 or 4 channels, got {c}.')
  return Image.fromarray(image[..., 0] if c == 1 else image, _PIL_MODES[c])


def display_scale(images) -> int:
  """Upscaling factor that shows `[N,H,W,C]` images at least 64 px wide."""
  return max(1, 64 // np.shape(images)[1])


def save_image_grid(path: str, images, ncol: Optional[int] = None,
                    padding: int = 2, pad_value: float = 0.0,
                    scale: Optional[int] = None) -> np.ndarray:
  """Writes `make_grid(images, ...)` as a PNG at `path` (atomically).

  Args:
    path: output file; parent directories are created.
    images: [N,H,W,C] float in [0, 1] or uint8, C in {1, 3, 4}.
    ncol: images per row; default ceil(sqrt(N)).
    padding: gap in pixels.
    pad_value: gap intensity in [0, 1].
    scale: integer nearest-neighbour upscaling of the whole grid (default
      `display_scale(images)`).

  Returns:
    The uint8 grid [GH,GW,C] as written (after upscaling).
  """
  if scale is None:
    scale = display_scale(images)
  grid = _upscale(make_grid(images, ncol, padding, pad_value), scale)
  image = _to_pil(grid)
  with atomic_open(path) as f:
    image.save(f, format='PNG')
  return grid


def save_npz_images(path: str, images, compressed: bool = False) -> None:
  """Writes images as uint8 [N,H,W,C] under key 'images' (atomically).

  Floats are quantised with `to_uint8`. The file is written at exactly `path`
  (NumPy's automatic '.npz' suffix does not apply).
  """
  x = _as_nhwc_uint8(images)
  save_fn = np.savez_compressed if compressed else np.savez
  with atomic_open(path) as f:
    save_fn(f, images=x)


def save_gif(path: str, frames, duration_ms: int = 100, loop: int = 0,
             scale: int = 1) -> None:
  """Writes frames [T,H,W,C] (float [0, 1] or uint8) as an animated GIF.

  RGB frames are palettised by PIL (up to 256 colours per frame). PIL merges
  identical consecutive frames into one longer frame, so the file can hold
  fewer than T frames when some repeat.

  Args:
    path: output file; parent directories are created.
    frames: [T,H,W,C], C in {1, 3}; e.g. one `make_grid` per sampling step.
    duration_ms: display time of each frame.
    loop: number of loops, 0 = forever.
    scale: integer nearest-neighbour upscaling.
  """
  x = _upscale(_as_nhwc_uint8(frames), scale)
  if x.shape[-1] not in (1, 3):
    raise ValueError(f'GIF frames need 1 or 3 channels, got {x.shape[-1]}.')
  images = [_to_pil(frame) for frame in x]
  with atomic_open(path) as f:
    images[0].save(f, format='GIF', save_all=True, append_images=images[1:],
                   duration=duration_ms, loop=loop)


def save_grid_gif(path: str, frames: np.ndarray,
                  ncol: Optional[int] = None) -> None:
  """GIF of chain states `[m, N,H,W,C]` (data space), one grid a frame."""
  grids = [make_grid(f, ncol=ncol) for f in frames]
  save_gif(path, np.stack(grids), scale=display_scale(frames[0]))


def save_shard(path: str, arrays: dict, meta: dict) -> None:
  """Writes one part of a long job: `arrays` and what made them (`meta`)."""
  with atomic_open(path) as f:
    np.savez(f, **arrays, meta=np.array(json.dumps(meta, sort_keys=True)))


def _flat(record: dict, prefix: str = '') -> dict:
  out = {}
  for k, v in record.items():
    if isinstance(v, dict):
      out.update(_flat(v, f'{prefix}{k}.'))
    else:
      out[prefix + k] = v
  return out


def load_shard(path: str, meta: dict) -> dict:
  """The arrays of a part written by `save_shard` with the same `meta`.

  A part made otherwise (another checkpoint, seed or setting) is an
  `errors.InputError` naming the first field that differs: parts of
  different runs are never mixed.
  """
  try:
    with np.load(path, allow_pickle=False) as f:
      saved = json.loads(str(f['meta']))
      arrays = {k: f[k] for k in f.files if k != 'meta'}
  except (OSError, ValueError, KeyError) as e:
    raise errors.InputError(
        f'{path} is unreadable ({e}); delete it to redo that part.') from e
  saved = _flat(saved)
  want = _flat(json.loads(json.dumps(meta, sort_keys=True)))
  for key in sorted(set(saved) | set(want)):
    if saved.get(key) != want.get(key):
      raise errors.InputError(
          f'{path} was made with {key}={saved.get(key)!r}, this run has '
          f'{want.get(key)!r}; rerun with the settings it was made with, or '
          f'move {os.path.dirname(path)} aside to start over.')
  return arrays


# ------------------------------------------------ metrics.jsonl and plots


def append_metrics(workdir: str, record: dict) -> None:
  """Appends one JSON line to `WORKDIR/metrics.jsonl`."""
  with open(os.path.join(workdir, METRICS_FILE), 'a') as f:
    f.write(json.dumps(record) + '\n')


def read_metrics(workdir: str) -> list[dict]:
  """The records of `WORKDIR/metrics.jsonl` (none if it does not exist)."""
  path = os.path.join(workdir, METRICS_FILE)
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def truncate_metrics(workdir: str, step: int) -> None:
  """Drops `metrics.jsonl` records after `step` (a resume from `step`)."""
  records = read_metrics(workdir)
  kept = [r for r in records if r.get('step', 0) <= step]
  if len(kept) != len(records):
    save_text(os.path.join(workdir, METRICS_FILE),
              ''.join(json.dumps(r) + '\n' for r in kept))


def save_loss_curve(path: str, steps: Sequence[float],
                    losses: Sequence[float], title: str = 'Loss',
                    test_steps: Optional[Sequence[float]] = None,
                    test_losses: Optional[Sequence[float]] = None,
                    labels: tuple[str, str] = ('train', 'test'),
                    log_y: bool = False) -> None:
  """Plots one or two loss series against steps into a PNG (atomically).

  Uses a standalone `Figure` with the Agg canvas, so pyplot's global state and
  the process-wide backend are untouched.

  Args:
    path: output PNG file; parent directories are created.
    steps: [T] x values of the main series.
    losses: [T] main series (e.g. training loss).
    title: plot title.
    test_steps: optional [T2] x values of a second series.
    test_losses: optional [T2] second series (e.g. test loss).
    labels: legend labels of the two series.
    log_y: logarithmic y axis.
  """
  series = [(steps, losses, labels[0])]
  if (test_steps is None) != (test_losses is None):
    raise ValueError('Pass both test_steps and test_losses, or neither.')
  if test_steps is not None:
    series.append((test_steps, test_losses, labels[1]))
  fig = figure.Figure(figsize=(6, 4), dpi=100)
  ax = fig.add_subplot(1, 1, 1)
  for x, y, label in series:
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.shape != y.shape or x.ndim != 1:
      raise ValueError(f'Series {label!r}: steps and losses must be 1-D of '
                       f'equal length, got {x.shape} and {y.shape}.')
    ax.plot(x, y, label=label, marker='.' if len(x) < 50 else None)
  ax.set_title(title)
  ax.set_xlabel('step')
  ax.set_ylabel('loss')
  if log_y:
    ax.set_yscale('log')
  ax.grid(True, alpha=0.3)
  if len(series) > 1:
    ax.legend()
  fig.tight_layout()
  save_figure(fig, path)


def write_loss_curve(workdir: str) -> str:
  """Plots `WORKDIR/metrics.jsonl` to `WORKDIR/loss_curve.png`."""
  records = read_metrics(workdir)
  train = [(r['step'], r['loss']) for r in records if 'loss' in r]
  test = [(r['step'], r['test_loss']) for r in records if 'test_loss' in r]
  out = os.path.join(workdir, 'loss_curve.png')
  if train:
    save_loss_curve(
        out, *zip(*train), title='DSM loss',
        test_steps=[s for s, _ in test] or None,
        test_losses=[v for _, v in test] or None, log_y=True)
  return out


# ------------------------------------------------------------ TensorBoard


def create_writer(workdir: str, is_main: bool):
  """clu's default writer of `workdir` (logging only on other processes)."""
  from clu import metric_writers  # pylint: disable=g-import-not-at-top
  return metric_writers.create_default_writer(
      workdir, just_logging=not is_main, asynchronous=False)


# Sweep columns that are settings, not results: never plotted or written.
_NOT_METRICS = ('step', 'num_samples')
# Plotted in sweep.png (after the ranking criterion) when a sweep has them.
_PLOTTED = ('fid', 'kid', 'inception_score', 'digits_classifier.score_ratio',
            'digits_classifier.frechet_distance', 'test_dsm_loss')


def write_grid(writer, step: int, grid: np.ndarray, tag: str = 'samples'):
  """Writes a uint8 image grid `[H, W, C]` as TensorBoard image `tag`."""
  writer.write_images(step, {tag: np.asarray(grid)[None]})


def _tag(column: str) -> str:
  return 'eval/' + column.replace('.', '/')


def sweep_metrics(rows: Sequence[dict]) -> list[str]:
  """The numeric result columns of sweep rows, in first-seen order."""
  out = []
  for row in rows:
    for k, v in row.items():
      if (k not in _NOT_METRICS and k not in out and
          isinstance(v, (int, float)) and not isinstance(v, bool)):
        out.append(k)
  return out


def write_sweep_scalars(logdir: str, rows: Sequence[dict]) -> None:
  """Every row's numbers as scalars `eval/<name>` at the row's step."""
  from clu import metric_writers  # pylint: disable=g-import-not-at-top
  writer = metric_writers.SummaryWriter(logdir)
  names = sweep_metrics(rows)
  for row in rows:
    writer.write_scalars(
        row['step'], {_tag(k): row[k] for k in names if row.get(k) is not None})
  writer.flush()
  writer.close()


def save_sweep_plot(path: str, rows: Sequence[dict], criterion: str) -> list:
  """Plots the criterion (and other headline metrics) against the step.

  One panel per metric; a PNG written atomically. Returns the plotted names.
  """
  available = sweep_metrics(rows)
  names = [criterion
          ] + [k for k in _PLOTTED if k in available and k != criterion]
  names = [k for k in names if k in available][:3]
  fig = figure.Figure(figsize=(6, 2.6 * max(1, len(names))), dpi=100)
  for i, name in enumerate(names):
    ax = fig.add_subplot(len(names), 1, i + 1)
    points = [(r['step'], r[name]) for r in rows if r.get(name) is not None]
    ax.plot(*zip(*points), marker='o')
    ax.set_ylabel(name.split('.')[-1])
    ax.grid(True, alpha=0.3)
    if name == criterion:
      ax.set_title(f'checkpoint sweep (ranked by {criterion})')
  if names:
    fig.axes[-1].set_xlabel('step')
  fig.tight_layout()
  save_figure(fig, path)
  return names


def write_sweep(root: str, rows: Sequence[dict], criterion: str) -> str:
  """TensorBoard scalars under `root` and `root/sweep.png`; its path."""
  write_sweep_scalars(root, rows)
  path = os.path.join(root, 'sweep.png')
  save_sweep_plot(path, rows, criterion)
  return path


# ------------------------------------------------------------ cache folder
# Inception weights (`evaluation.inception.weight_files`), reference
# statistics and JAX's compilation cache are kept under one root:
# `$NCSN_JAX_CACHE`, else `$XDG_CACHE_HOME/ncsn_jax`, else `~/.cache/ncsn_jax`.
# The Inception files are in its `inception/` folder, or in
# `$NCSN_JAX_INCEPTION_CACHE`; a config's `eval.cache_dir` overrides both.

ROOT_ENV = 'NCSN_JAX_CACHE'
INCEPTION_ENV = 'NCSN_JAX_INCEPTION_CACHE'


def cache_root() -> str:
  """`$NCSN_JAX_CACHE`, else `$XDG_CACHE_HOME/ncsn_jax`, else ~/.cache/..."""
  env = os.environ.get(ROOT_ENV)
  if env:
    return os.path.abspath(os.path.expanduser(env))
  xdg = os.environ.get('XDG_CACHE_HOME')
  if xdg and os.path.isabs(xdg):  # The XDG spec ignores relative values.
    return os.path.join(xdg, 'ncsn_jax')
  return os.path.join(os.path.expanduser('~'), '.cache', 'ncsn_jax')


def compilation_cache(enabled: bool = True, folder: str = '') -> None:
  """JAX's persistent compilation cache: on by default in `cache_root()/jax`.

  A restart then loads the compiled programs (the train step, the sampler)
  instead of compiling them again. `folder` overrides where; a folder set
  through JAX's own `JAX_COMPILATION_CACHE_DIR` is kept when `folder` is
  empty; `enabled=False` turns the cache off.

  Global state: JAX's `jax_compilation_cache_dir` and
  `jax_enable_compilation_cache` options.
  """
  import jax  # pylint: disable=g-import-not-at-top
  if not enabled:
    jax.config.update('jax_enable_compilation_cache', False)
  elif folder or not jax.config.jax_compilation_cache_dir:
    jax.config.update('jax_compilation_cache_dir',
                      folder or os.path.join(cache_root(), 'jax'))


def inception_dir(override: str = '') -> str:
  """Inception weights and stats: `override`, `$NCSN_JAX_INCEPTION_CACHE`,
  else `<cache_root>/inception`."""
  path = override or os.environ.get(INCEPTION_ENV)
  if path:
    return os.path.abspath(os.path.expanduser(path))
  return os.path.join(cache_root(), 'inception')
