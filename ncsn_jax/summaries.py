"""TensorBoard images and scalars, and the sweep plot, of training and eval.

Training writes its scalars (loss, test loss, ...) through the loop's clu
writer, and each snapshot's sample grid with `write_grid`. An eval sweep
writes the numbers of every checkpoint as scalars of `WORKDIR/eval/` and a
`sweep.png` plot of the ranking metric against the step (`write_sweep`).
`tensorboard --logdir WORKDIR` shows both runs.
"""

import io
import os
from typing import Sequence

from clu import metric_writers
from matplotlib import figure
from matplotlib.backends import backend_agg
import numpy as np

from ncsn_jax import files

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
  canvas = backend_agg.FigureCanvasAgg(fig)
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
  buffer = io.BytesIO()
  canvas.print_png(buffer)
  with files.atomic_open(path) as f:
    f.write(buffer.getvalue())
  return names


def write_sweep(root: str, rows: Sequence[dict], criterion: str) -> str:
  """TensorBoard scalars under `root` and `root/sweep.png`; its path."""
  write_sweep_scalars(root, rows)
  path = os.path.join(root, 'sweep.png')
  save_sweep_plot(path, rows, criterion)
  return path
