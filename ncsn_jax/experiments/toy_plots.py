"""Figures of the toy experiments: score fields and sample scatter plots."""

import io

import jax
import jax.numpy as jnp
from matplotlib import figure
from matplotlib.backends import backend_agg
import numpy as np

from ncsn_jax import files
from ncsn_jax.experiments import toy_mixture as mixture


def save_figure(fig, path: str) -> None:
  """Writes a matplotlib figure as PNG (atomically)."""
  buffer = io.BytesIO()
  backend_agg.FigureCanvasAgg(fig).print_png(buffer)
  files.save_bytes(path, buffer.getvalue())


def plot_scores(path: str, score_fn, extent: float = 8.0) -> None:
  """True and estimated score fields over the data density (paper Fig. 2)."""
  fine = np.linspace(-extent, extent, 200)
  xx, yy = np.meshgrid(fine, fine)
  coarse = np.linspace(-extent, extent, 21)
  grid = np.stack(np.meshgrid(coarse, coarse), -1).reshape(-1, 2)
  density, true, estimated = jax.jit(lambda points, grid: (
      jnp.exp(mixture.log_density(points)), mixture.true_score(grid),
      score_fn(grid)))(np.stack([xx, yy], -1).reshape(-1, 2), grid)
  density = np.asarray(density).reshape(xx.shape)
  fields = (('data scores', np.asarray(true)),
            ('estimated scores (SSM)', np.asarray(estimated)))
  fig = figure.Figure(figsize=(10, 5), dpi=100)
  for i, (title, field) in enumerate(fields):
    ax = fig.add_subplot(1, 2, i + 1)
    ax.imshow(density, extent=(-extent, extent, -extent, extent),
              origin='lower', cmap='Blues')
    ax.quiver(grid[:, 0], grid[:, 1], field[:, 0], field[:, 1], angles='xy',
              color='k', width=0.003)
    for mean in mixture.MEANS:
      for radius, style in ((mixture.HIGH_DENSITY_RADIUS, '-'),
                            (mixture.LOW_DENSITY_RADIUS, '--')):
        t = np.linspace(0, 2 * np.pi, 100)
        ax.plot(mean[0] + radius * np.cos(t), mean[1] + radius * np.sin(t),
                style, color='tab:red', lw=0.8)
    ax.set_xlim(-extent, extent)
    ax.set_ylim(-extent, extent)
    ax.set_title(title)
    ax.set_aspect('equal')
  fig.tight_layout()
  save_figure(fig, path)


def plot_samples(path: str, panels, extent: float = 9.0) -> None:
  """Scatter plots `[(title, points [N, 2])]` side by side (paper Fig. 3)."""
  fig = figure.Figure(figsize=(4 * len(panels), 4), dpi=100)
  for i, (title, points) in enumerate(panels):
    ax = fig.add_subplot(1, len(panels), i + 1)
    points = np.asarray(points)
    ax.scatter(points[:, 0], points[:, 1], s=2, alpha=0.5)
    ax.set_xlim(-extent, extent)
    ax.set_ylim(-extent, extent)
    ax.set_aspect('equal')
    fraction = mixture.upper_mode_fraction(points)
    ax.set_title(f'{title}\n(5,5) mode: {fraction:.3f}')
  fig.tight_layout()
  save_figure(fig, path)
