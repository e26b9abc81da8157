"""Score-matching losses as pure functions.

A score function here is `score_fn(x, labels) -> scores` with `x` `[B,...]`
and integer noise labels `[B]` (`models.score.ScoreFn`); `keys` `[B]` are
per-example keys (see `parallel.per_example_keys`), so each example's
draws depend only on its own key. The annealed losses draw their noise
labels and noise through one replaceable function, `perturb_fn(keys, x,
sigmas) -> (labels [B], z [B,...])` (default `perturb`): a test can feed
recorded draws through the real loss, and through the train step built on
it.

Losses: annealed denoising score matching ('dsm'), and sliced score matching
(plain and variance-reduced, unconditional and annealed; 'ssm', 'ssm_vr').
"""

from typing import Callable, Optional

import jax
import jax.numpy as jnp

from ncsn_jax import parallel
from ncsn_jax.models import score

# perturb_fn(keys [B], x [B,...], sigmas [L]) -> (labels int32 [B], z [B,...]).
PerturbFn = Callable[[jax.Array, jax.Array, jax.Array],
                     tuple[jax.Array, jax.Array]]


def _sum_except_batch(x: jax.Array) -> jax.Array:
  return jnp.sum(x.reshape(x.shape[0], -1), axis=-1)


def perturb(keys: jax.Array, x: jax.Array, sigmas: jax.Array):
  """Draws a noise label and Gaussian noise per example.

  Args:
    keys: per-example keys `[B]`.
    x: clean data `[B,...]`.
    sigmas: noise levels `[L]`, descending.

  Returns:
    (labels int32 `[B]`, noise z `[B,...]` ~ N(0, I)).
  """
  label_keys, noise_keys = parallel.split_each(keys)
  labels = jax.vmap(
      lambda k: jax.random.randint(k, (), 0, sigmas.shape[0]))(label_keys)
  z = parallel.per_example_normal(noise_keys, x.shape[1:], x.dtype)
  return labels.astype(jnp.int32), z


def annealed_dsm_loss(score_fn: score.ScoreFn, x: jax.Array,
                      keys: jax.Array, sigmas: jax.Array,
                      anneal_power: float = 2.0,
                      perturb_fn: PerturbFn = perturb):
  """Annealed denoising score matching (NCSN eq. 6 with lambda = sigma^p).

  One noise level per example: x~ = x + sigma_y z; the per-example loss is
  1/2 sum_pixels (s(x~, y) + (x~ - x) / sigma_y^2)^2 sigma_y^p.

  Args:
    score_fn: the score model.
    x: data in the model's input space `[B,H,W,C]`.
    keys: per-example keys `[B]`.
    sigmas: noise levels `[L]`.
    anneal_power: the exponent p of the weighting sigma^p.
    perturb_fn: draws (labels `[B]`, z `[B,...]`) from (keys, x, sigmas).

  Returns:
    (mean loss over the batch, {'losses': `[B]`, 'labels': `[B]`}).
  """
  labels, z = perturb_fn(keys, x, sigmas)
  sigma = sigmas[labels].reshape((-1,) + (1,) * (x.ndim - 1))
  x_tilde = x + sigma * z
  target = -(x_tilde - x) / sigma**2
  scores = score_fn(x_tilde, labels)
  losses = 0.5 * _sum_except_batch((scores - target)**2)
  losses = losses * sigmas[labels]**anneal_power
  return jnp.mean(losses), {'losses': losses, 'labels': labels}


# ------------------------------------------------------ sliced score matching

def projections(keys: jax.Array, shape, n_particles: int,
                kind: str = 'gaussian') -> jax.Array:
  """Random projection vectors with E[v v^T] = I, per example.

  Args:
    keys: per-example keys `[B]`.
    shape: shape of one example.
    n_particles: projections per example.
    kind: 'gaussian' (N(0, I)) or 'rademacher' (+-1 with probability 1/2).

  Returns:
    v `[n_particles, B, *shape]`.
  """
  full = (n_particles,) + tuple(shape)
  if kind == 'gaussian':
    v = jax.vmap(lambda k: jax.random.normal(k, full))(keys)
  else:
    v = jax.vmap(lambda k: jax.random.rademacher(k, full, jnp.float32))(keys)
  return jnp.swapaxes(v, 0, 1)


def sliced_score_matching(score_fn: Callable[[jax.Array], jax.Array],
                          x: jax.Array, keys: jax.Array, n_particles: int = 1,
                          projection: str = 'gaussian',
                          variance_reduction: bool = False):
  """Sliced score matching (Song et al. 2019) with forward-mode JVPs.

  Per example and projection v the objective is v^T (ds/dx) v + 1/2 (v^T s)^2
  (SSM) or v^T (ds/dx) v + 1/2 ||s||^2 (SSM-VR); with E[v v^T] = I both are
  unbiased for tr(ds/dx) + 1/2 ||s||^2. One `jax.jvp` per projection gives
  s and (ds/dx) v together. The projections are not normalised (unlike the
  reference's plain `sliced_score_estimation`, which scales v to unit norm).

  Args:
    score_fn: `score_fn(x [N,...]) -> [N,...]`, acting per example.
    x: data `[B,...]`.
    keys: per-example keys `[B]` (the projections of example i come from key
      i only).
    n_particles: projections per example (averaged).
    projection: 'gaussian' or 'rademacher'.
    variance_reduction: SSM-VR (exact 1/2 ||s||^2 term) instead of SSM.

  Returns:
    (mean loss, {'losses': `[B]`, 'loss1': `[B]`, 'loss2': `[B]`}) where loss1
    is the norm term and loss2 the Jacobian term, averaged over projections.
  """
  n, b = n_particles, x.shape[0]
  v = projections(keys, x.shape[1:], n, projection).astype(x.dtype)
  x_rep = jnp.broadcast_to(x[None], (n,) + x.shape).reshape((n * b,) +
                                                            x.shape[1:])
  v = v.reshape(x_rep.shape)
  s, jv = jax.jvp(score_fn, (x_rep,), (v,))
  loss2 = _sum_except_batch(v * jv)
  if variance_reduction:
    loss1 = 0.5 * _sum_except_batch(s**2)
  else:
    loss1 = 0.5 * _sum_except_batch(v * s)**2
  loss1 = jnp.mean(loss1.reshape(n, b), axis=0)
  loss2 = jnp.mean(loss2.reshape(n, b), axis=0)
  losses = loss1 + loss2
  return jnp.mean(losses), {'losses': losses, 'loss1': loss1, 'loss2': loss2}


def annealed_ssm_loss(score_fn: score.ScoreFn, x: jax.Array,
                      keys: jax.Array, sigmas: jax.Array,
                      n_particles: int = 1, projection: str = 'gaussian',
                      variance_reduction: bool = True,
                      anneal_power: float = 2.0,
                      perturb_fn: PerturbFn = perturb):
  """Noise-conditional sliced score matching (weight sigma_y^p).

  As the reference's `anneal_sliced_score_estimation_vr`: x~ = x + sigma_y z
  with one level y per example (drawn as in `annealed_dsm_loss`), then sliced
  score matching of s(., y) on x~, times sigma_y^p.

  Args:
    score_fn: the noise-conditional score model.
    x: data in the model's input space `[B,...]`.
    keys: per-example keys `[B]`.
    sigmas: noise levels `[L]`.
    n_particles: projections per example.
    projection: 'gaussian' or 'rademacher'.
    variance_reduction: SSM-VR (the reference's choice) or plain SSM.
    anneal_power: the exponent p (the reference uses 2).
    perturb_fn: draws (labels, z) from the first half of each key's split
      (the second half draws the projections).

  Returns:
    (mean loss over the batch, {'losses': `[B]`, 'labels': `[B]`}).
  """
  noise_keys, projection_keys = parallel.split_each(keys)
  labels, z = perturb_fn(noise_keys, x, sigmas)
  sigma = sigmas[labels].reshape((-1,) + (1,) * (x.ndim - 1))
  x_tilde = x + sigma * z
  tiled = jnp.tile(labels, n_particles)  # Particle-major, like x_tilde's.
  _, aux = sliced_score_matching(lambda u: score_fn(u, tiled), x_tilde,
                                 projection_keys, n_particles, projection,
                                 variance_reduction)
  losses = aux['losses'] * sigmas[labels]**anneal_power
  return jnp.mean(losses), {'losses': losses, 'labels': labels}


def get_loss_fn(config, model, perturb_fn: Optional[PerturbFn] = None):
  """Builds `loss_fn(params, x, keys) -> (loss, aux)` for a config.

  Args:
    config: experiment config (`training.loss`, `training.anneal_power`,
      model noise levels).
    model: the flax score network.
    perturb_fn: hook `perturb_fn(keys [B], x [B,...], sigmas [L]) ->
      (labels int32 [B], z [B,...])` drawing each example's noise level and
      Gaussian noise (default `perturb`); the train step built on this loss
      then uses it too.

  Returns:
    The pure loss function of the config's `training.loss`: 'dsm', or the
    annealed sliced score matching 'ssm' / 'ssm_vr' (with
    `training.n_particles` projections of kind `training.projection`).
  """
  sigmas = jnp.asarray(score.get_sigmas(config))
  perturb_fn = perturb_fn or perturb
  t = config.training
  name, power = t.loss, t.anneal_power  # config_checks.LOSSES
  if name == 'dsm':
    return lambda params, x, keys: annealed_dsm_loss(
        score.make_score_fn(model, params), x, keys, sigmas, power,
        perturb_fn)
  particles, projection = t.n_particles, t.projection
  return lambda params, x, keys: annealed_ssm_loss(
      score.make_score_fn(model, params), x, keys, sigmas, particles,
      projection, name == 'ssm_vr', power, perturb_fn)
