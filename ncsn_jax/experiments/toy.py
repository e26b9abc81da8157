"""The toy experiments of the NCSN paper (Song & Ermon 2019, section 3).

Data: p = 1/5 N((-5,-5), I) + 4/5 N((5,5), I). Two MLP score models are
trained (3 dense layers, softplus, Adam, batch 128):

* a plain model s(x), with sliced score matching on clean data (as the
  paper): accurate near the modes, wrong in low-density regions (Figure 2);
* a noise-conditional model s(x, sigma), with the config's annealed loss
  (DSM by default) over geometric levels sigma_1 > ... > sigma_L. The paper's
  toy levels (10 -> 0.1) make annealed Langevin diverge here, as a published
  reproduction found too; the config uses 20 -> 0.7, 10 levels.

Both models are sampled with an EMA of their weights (NCSNv2's technique 5,
`model.ema`): without it the annealed weight varies by about +-0.04 between
training seeds, with it by under 0.01.

Plain Langevin with the plain model (1000 steps, eps = 0.1 in the paper's
x + eps/2 s + sqrt(eps) z) puts about half of the samples in each mode from a
uniform start on [-8, 8]^2, since the score between the modes does not see
their weights; annealed Langevin with the conditional model recovers the
4/5 weight (Figure 3). `run_toy` writes the figures and a JSON report.
"""

import json
import os
import time
from typing import Optional

from absl import logging
import flax.linen as nn
import jax
import jax.numpy as jnp
from matplotlib import figure
import numpy as np
import optax

from ncsn_jax import config_checks
from ncsn_jax import models
from ncsn_jax import outputs
from ncsn_jax import parallel
from ncsn_jax import train_state
from ncsn_jax.models import score
from ncsn_jax.sampling import langevin
from ncsn_jax.training import losses


# --------------------------------------------------------------------------
# The 2-D Gaussian mixture of the NCSN toy experiments, with exact scores
#
# p = 1/5 N((-5,-5), I) + 4/5 N((5,5), I) (Song & Ermon 2019, section 3), and
# its convolution with N(0, sigma^2 I), whose log density and score are known
# in closed form.


WEIGHTS = (0.2, 0.8)
MEANS = ((-5.0, -5.0), (5.0, 5.0))
# Score-error regions: within HIGH of a mode, farther than LOW from both.
HIGH_DENSITY_RADIUS = 2.0
LOW_DENSITY_RADIUS = 4.0


def sample_data(key: jax.Array, n: int) -> jax.Array:
  """`n` i.i.d. draws `[n, 2]` from the mixture."""
  comp_key, noise_key = jax.random.split(key)
  comp = jax.random.choice(comp_key, 2, (n,), p=jnp.asarray(WEIGHTS))
  return jnp.asarray(MEANS)[comp] + jax.random.normal(noise_key, (n, 2))


def log_density(x: jax.Array, sigma=0.0) -> jax.Array:
  """log of the mixture convolved with N(0, sigma^2 I), `[N, 2]` -> `[N]`."""
  var = 1.0 + jnp.asarray(sigma)**2
  sq = jnp.sum((x[:, None, :] - jnp.asarray(MEANS)[None])**2, axis=-1)
  log_comp = jnp.log(jnp.asarray(WEIGHTS)) - 0.5 * sq / var - jnp.log(
      2 * jnp.pi * var)
  return jax.nn.logsumexp(log_comp, axis=-1)


def true_score(x: jax.Array, sigma=0.0) -> jax.Array:
  """grad_x log of the (perturbed) mixture density, `[N, 2]`."""
  return jax.grad(lambda x: jnp.sum(log_density(x, sigma)))(x)


def upper_mode_fraction(x) -> float:
  """Share of points closer to (5, 5) than to (-5, -5)."""
  return float(np.mean(np.asarray(x).sum(axis=-1) > 0))


# ------- Figures of the toy experiments: score fields and sample scatter plots


def plot_scores(path: str, score_fn, extent: float = 8.0) -> None:
  """True and estimated score fields over the data density (paper Fig. 2)."""
  fine = np.linspace(-extent, extent, 200)
  xx, yy = np.meshgrid(fine, fine)
  coarse = np.linspace(-extent, extent, 21)
  grid = np.stack(np.meshgrid(coarse, coarse), -1).reshape(-1, 2)
  density, true, estimated = jax.jit(lambda points, grid: (
      jnp.exp(log_density(points)), true_score(grid),
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
    for mean in MEANS:
      for radius, style in ((HIGH_DENSITY_RADIUS, '-'),
                            (LOW_DENSITY_RADIUS, '--')):
        t = np.linspace(0, 2 * np.pi, 100)
        ax.plot(mean[0] + radius * np.cos(t), mean[1] + radius * np.sin(t),
                style, color='tab:red', lw=0.8)
    ax.set_xlim(-extent, extent)
    ax.set_ylim(-extent, extent)
    ax.set_title(title)
    ax.set_aspect('equal')
  fig.tight_layout()
  outputs.save_figure(fig, path)


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
    fraction = upper_mode_fraction(points)
    ax.set_title(f'{title}\n(5,5) mode: {fraction:.3f}')
  fig.tight_layout()
  outputs.save_figure(fig, path)


# ---------------------------------------------------------------- the run


class ToyScoreNet(nn.Module):
  """3-layer softplus MLP score model of 2-D points.

  Attributes:
    hidden: width of the two hidden layers.
    sigmas: noise levels (descending) of a noise-conditional model, or None
      for a plain s(x). The conditional model sees (x / sqrt(1 + sigma^2),
      log sigma) and returns its output divided by sigma (NCSNv2's scaling),
      so one network covers scores of very different sizes.
  """
  hidden: int = 128
  sigmas: Optional[tuple[float, ...]] = None

  @nn.compact
  def __call__(self, x: jax.Array, y: Optional[jax.Array] = None):
    """`x` `[B, 2]`, labels `y` `[B]` (ignored when plain) -> `[B, 2]`."""
    h = x
    if self.sigmas is not None:
      sigma = jnp.asarray(self.sigmas, x.dtype)[y][:, None]
      h = jnp.concatenate([x / jnp.sqrt(1.0 + sigma**2), jnp.log(sigma)], -1)
    h = nn.softplus(nn.Dense(self.hidden)(h))
    h = nn.softplus(nn.Dense(self.hidden)(h))
    out = nn.Dense(x.shape[-1])(h)
    return out / sigma if self.sigmas is not None else out


def get_train_fn(loss_fn, tx, n_iters: int, batch_size: int,
                 ema_rate: float = 0.0):
  """Builds `train(params, key) -> (params, ema_params, losses [n_iters])`.

  One `lax.scan` of optimiser steps on fresh mixture batches; step t draws
  its data and per-example keys from fold_in(key, t). The EMA follows
  ema <- m ema + (1 - m) params with m = `ema_rate` (0: ema = params).

  Args:
    loss_fn: `loss_fn(params, x [B, 2], keys [B]) -> (loss, aux)`.
    tx: the optax optimiser.
    n_iters: training steps.
    batch_size: examples per step.
    ema_rate: EMA decay m.
  """
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def train(params, key):
    def step(carry, t):
      params, opt_state, ema = carry
      data_key, loss_key = jax.random.split(jax.random.fold_in(key, t))
      x = sample_data(data_key, batch_size)
      keys = parallel.per_example_keys(loss_key, batch_size)
      (loss, _), grads = grad_fn(params, x, keys)
      updates, opt_state = tx.update(grads, opt_state, params)
      params = optax.apply_updates(params, updates)
      ema = train_state.update_ema(params, ema, ema_rate)
      return (params, opt_state, ema), loss

    (params, _, ema), history = jax.lax.scan(
        step, (params, tx.init(params), params), jnp.arange(n_iters))
    return params, ema, history

  return jax.jit(train)


def plain_loss_fn(config, model):
  """Sliced score matching of the plain model (`toy.plain_loss`)."""
  t, name = config.training, config.toy.plain_loss

  def loss_fn(params, x, keys):
    return losses.sliced_score_matching(
        models.make_score_fn(model, params), x, keys, t.n_particles,
        t.projection, name == 'ssm_vr')

  return loss_fn


def score_errors(score_fn, sigma=0.0, size: int = 161, extent: float = 8.0):
  """Mean squared score error on a grid, near the modes and far from them.

  Returns:
    {'high_density': mean ||s - grad log p||^2 within HIGH_DENSITY_RADIUS of
    a mode, 'low_density': the same farther than LOW_DENSITY_RADIUS from both
    modes (the radii above), and the mean ||grad log p||^2 of each region for
    scale}.
  """
  axis = np.linspace(-extent, extent, size)
  grid = np.stack(np.meshgrid(axis, axis), -1).reshape(-1, 2)

  @jax.jit
  def squared_norms(grid):
    true = true_score(grid, sigma)
    return (jnp.sum((score_fn(grid) - true)**2, axis=-1),
            jnp.sum(true**2, axis=-1))

  err, ref = (np.asarray(v) for v in squared_norms(grid))
  means = np.asarray(MEANS)
  dist = np.min(np.linalg.norm(grid[:, None] - means[None], axis=-1), axis=-1)
  high = dist <= HIGH_DENSITY_RADIUS
  low = dist >= LOW_DENSITY_RADIUS
  return {'high_density': float(err[high].mean()),
          'low_density': float(err[low].mean()),
          'true_score_sq_high_density': float(ref[high].mean()),
          'true_score_sq_low_density': float(ref[low].mean())}


def _train(config, plain_key, cond_key, sigmas):
  """Trains both models; returns their score functions and loss histories."""
  t, toy = config.training, config.toy
  tx = optax.adam(config.optim.lr)
  plain = ToyScoreNet(toy.hidden)
  cond = ToyScoreNet(toy.hidden, tuple(float(v) for v in np.asarray(sigmas)))
  x_init = jnp.zeros((1, 2))
  plain_params = jax.jit(plain.init)(plain_key, x_init)['params']
  cond_params = jax.jit(cond.init)(cond_key, x_init,
                                   jnp.zeros(1, jnp.int32))['params']
  rate = train_state.ema_rate(config)
  _, plain_params, plain_hist = get_train_fn(
      plain_loss_fn(config, plain), tx, t.n_iters, t.batch_size, rate)(
          plain_params, jax.random.fold_in(plain_key, 1))
  _, cond_params, cond_hist = get_train_fn(
      losses.get_loss_fn(config, cond), tx, t.n_iters, t.batch_size, rate)(
          cond_params, jax.random.fold_in(cond_key, 1))
  return (models.make_score_fn(plain, plain_params),
          models.make_score_fn(cond, cond_params),
          plain_hist, cond_hist)


def _weights(config, plain_score, cond_score, sigmas, keys) -> dict:
  """Samples of both samplers, learned and exact scores, and their weights.

  Returns:
    {'plain': plain Langevin samples `[N, 2]`, 'annealed': annealed ones,
    and the report's four (5, 5)-mode fractions}.
  """
  s, toy = config.sampling, config.toy
  x0 = jax.random.uniform(keys['init'], (s.batch_size, 2),
                          minval=-toy.init_range, maxval=toy.init_range)
  plain_keys = parallel.per_example_keys(keys['langevin'], s.batch_size)
  annealed_keys = parallel.per_example_keys(keys['annealed'],
                                            s.batch_size)
  run_plain = jax.jit(lambda score_fn, x0: langevin.langevin(
      score_fn, x0, plain_keys, toy.langevin_step, toy.langevin_steps),
                      static_argnums=0)
  run_annealed = jax.jit(lambda score_fn, x0: langevin.annealed_langevin(
      score_fn, x0, annealed_keys, sigmas, s.n_steps_each, s.step_lr)[0],
                         static_argnums=0)
  exact_plain = lambda x, y: true_score(x)
  exact_cond = lambda x, y: true_score(x, sigmas[y][:, None])
  out = {'plain': run_plain(plain_score, x0),
         'annealed': run_annealed(cond_score, x0)}
  fraction = upper_mode_fraction
  out.update(
      langevin_weight=fraction(out['plain']),
      annealed_weight=fraction(out['annealed']),
      exact_score_langevin_weight=fraction(run_plain(exact_plain, x0)),
      exact_score_annealed_weight=fraction(run_annealed(exact_cond, x0)))
  return out


def _write_figures(config, root: str, plain_score, samples, data_key,
                   histories) -> None:
  """scores.png, samples.png and loss_curves.png under `root`."""
  t, toy = config.training, config.toy
  plot_scores(os.path.join(root, 'scores.png'), plain_score)
  data = jax.jit(sample_data, static_argnums=1)(
      data_key, config.sampling.batch_size)
  plot_samples(os.path.join(root, 'samples.png'), [
      ('data', data), ('Langevin dynamics', samples['plain']),
      ('annealed Langevin dynamics', samples['annealed'])])
  steps = np.arange(1, t.n_iters + 1)
  outputs.save_loss_curve(
      os.path.join(root, 'loss_curves.png'), steps, np.asarray(histories[0]),
      title='toy training losses', test_steps=steps,
      test_losses=np.asarray(histories[1]),
      labels=(f'plain ({toy.plain_loss})', f'annealed ({t.loss})'))


def run_toy(config, workdir: str) -> dict:
  """Toy mode: trains both models, samples, writes `WORKDIR/toy/`.

  Files: `scores.png` (true vs estimated score field over the density),
  `samples.png` (data, plain Langevin, annealed Langevin), `loss_curves.png`
  and `report.json` (fractions of samples in the (5, 5) mode,
  `langevin_weight` and `annealed_weight`, the same with exact scores, and
  score errors in high- and low-density regions).

  Returns:
    The report.
  """
  config_checks.check_config(config, 'toy')
  root = os.path.join(workdir, 'toy')
  outputs.check_writable(root, '--workdir')
  start = time.time()
  sigmas = jnp.asarray(score.get_sigmas(config))
  names = ('plain', 'cond', 'init', 'langevin', 'annealed', 'data')
  keys = dict(zip(names, jax.random.split(jax.random.key(config.seed), 6)))
  plain_score, cond_score, *histories = _train(config, keys['plain'],
                                               keys['cond'], sigmas)
  train_seconds = time.time() - start
  samples = _weights(config, plain_score, cond_score, sigmas, keys)
  last = jnp.full((1,), sigmas.shape[0] - 1, jnp.int32)
  report = {k: v for k, v in samples.items() if k.endswith('weight')}
  report.update({
      'true_weight': WEIGHTS[1],
      'score_error': score_errors(plain_score),
      'annealed_score_error_at_sigma_L': score_errors(
          lambda x: cond_score(x, jnp.broadcast_to(last, x.shape[:1])),
          sigmas[-1]),
      'n_samples': int(config.sampling.batch_size),
      'sigmas': [float(v) for v in np.asarray(sigmas)],
      'final_losses': {  # Means of the last 100 steps.
          f'plain_{config.toy.plain_loss}': float(histories[0][-100:].mean()),
          f'annealed_{config.training.loss}': float(
              histories[1][-100:].mean())},
      'train_seconds': round(train_seconds, 2),
  })
  _write_figures(config, root, plain_score, samples, keys['data'], histories)
  report['seconds'] = round(time.time() - start, 2)
  path = os.path.join(root, 'report.json')
  outputs.save_text(path, json.dumps(report, indent=2))
  logging.info('Toy report: %s', report)
  return report
