"""Image grids, PNG/GIF/npz files and loss-curve plots, NumPy on the host.

Images are NHWC, either float in [0, 1] or uint8. Floats are quantised by
`to_uint8` (torchvision `save_image` rounding), so a PNG written here and the
uint8 npz used for metrics hold the same pixel values. Single-channel images
stay single-channel (PNG mode 'L'). Every file is written atomically
(`files.atomic_open`).
"""

import io
import math
from typing import Optional, Sequence

from matplotlib import figure
from matplotlib.backends import backend_agg
import numpy as np
from PIL import Image

from ncsn_jax import files

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


def save_image_grid(path: str, images, ncol: Optional[int] = None,
                    padding: int = 2, pad_value: float = 0.0,
                    scale: int = 1) -> np.ndarray:
  """Writes `make_grid(images, ...)` as a PNG at `path` (atomically).

  Args:
    path: output file; parent directories are created.
    images: [N,H,W,C] float in [0, 1] or uint8, C in {1, 3, 4}.
    ncol: images per row; default ceil(sqrt(N)).
    padding: gap in pixels.
    pad_value: gap intensity in [0, 1].
    scale: integer nearest-neighbour upscaling of the whole grid.

  Returns:
    The uint8 grid [GH,GW,C] as written (after upscaling).
  """
  grid = _upscale(make_grid(images, ncol, padding, pad_value), scale)
  image = _to_pil(grid)
  with files.atomic_open(path) as f:
    image.save(f, format='PNG')
  return grid


def save_npz_images(path: str, images, compressed: bool = False) -> None:
  """Writes images as uint8 [N,H,W,C] under key 'images' (atomically).

  Floats are quantised with `to_uint8`. The file is written at exactly `path`
  (NumPy's automatic '.npz' suffix does not apply).
  """
  x = _as_nhwc_uint8(images)
  save_fn = np.savez_compressed if compressed else np.savez
  with files.atomic_open(path) as f:
    save_fn(f, images=x)


def load_npz_images(path: str) -> np.ndarray:
  """Reads the uint8 [N,H,W,C] array written by `save_npz_images`."""
  with np.load(path) as data:
    if 'images' not in data:
      raise KeyError(f"{path} has no 'images' array (keys: {data.files}).")
    return data['images']


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
  canvas = backend_agg.FigureCanvasAgg(fig)
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
  buffer = io.BytesIO()
  canvas.print_png(buffer)
  with files.atomic_open(path) as f:
    f.write(buffer.getvalue())


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
  with files.atomic_open(path) as f:
    images[0].save(f, format='GIF', save_all=True, append_images=images[1:],
                   duration=duration_ms, loop=loop)
