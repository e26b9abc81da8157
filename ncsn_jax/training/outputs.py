"""What training writes besides checkpoints: metrics.jsonl, plots, grids."""

import json
import os

import jax
import numpy as np

from ncsn_jax import image_io
from ncsn_jax import summaries
from ncsn_jax.sampling import generate

METRICS_FILE = 'metrics.jsonl'


def host_metrics(metrics) -> dict[str, float]:
  """Scalars of the last step of a `multi_train_step` metrics pytree."""
  last = jax.tree.map(lambda x: np.asarray(x)[-1], metrics)
  out = {k: float(last[k]) for k in ('loss', 'grad_norm', 'learning_rate')}
  for g, (s, c) in enumerate(zip(last['group_loss_sums'],
                                 last['group_counts'])):
    if c > 0:
      out[f'loss_sigma_group_{g}'] = float(s / c)
  return out


def append_jsonl(workdir: str, record: dict) -> None:
  """Appends one JSON line to `WORKDIR/metrics.jsonl`."""
  with open(os.path.join(workdir, METRICS_FILE), 'a') as f:
    f.write(json.dumps(record) + '\n')


def write_loss_curve(workdir: str) -> str:
  """Plots `WORKDIR/metrics.jsonl` to `WORKDIR/loss_curve.png`."""
  path = os.path.join(workdir, METRICS_FILE)
  records = []
  if os.path.exists(path):
    with open(path) as f:
      records = [json.loads(line) for line in f if line.strip()]
  train = [(r['step'], r['loss']) for r in records if 'loss' in r]
  test = [(r['step'], r['test_loss']) for r in records if 'test_loss' in r]
  out = os.path.join(workdir, 'loss_curve.png')
  if train:
    image_io.save_loss_curve(
        out, *zip(*train), title='DSM loss',
        test_steps=[s for s, _ in test] or None,
        test_losses=[v for _, v in test] or None, log_y=True)
  return out


def snapshot_samples(config, p_sample, params, key, workdir: str,
                     step: int, writer=None) -> str:
  """Samples a grid with `params`; writes `WORKDIR/samples/step_<k>.png`.

  `p_sample` is the loop's sampler, pmapped once for every snapshot. With a
  clu `writer` the grid also goes to TensorBoard (image 'samples').
  """
  images, _ = generate.sample_batch(config, p_sample, params, key,
                                    config.training.snapshot_n_samples)
  path = os.path.join(workdir, 'samples', f'step_{step}.png')
  grid = image_io.save_image_grid(path, images,
                                  scale=max(1, 64 // images.shape[1]))
  if writer is not None:
    summaries.write_grid(writer, step, grid)
  return path
