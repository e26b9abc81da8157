"""The pure train step, gradient accumulation, k steps per call, eval step.

Step functions see one device's slice of the global batch, or the whole
batch when run without pmap: with `axis_name=None` (the default) nothing is
averaged across devices; `parallel` passes `axis_name=parallel.AXIS`. The
randomness arrives as per-example keys `[B]` (for training, key_i =
fold_in(fold_in(train_key, step), i), made by the loop), so the step never
asks which device it runs on.
"""

import functools
from typing import Optional

import jax
import jax.numpy as jnp
import optax

from ncsn_jax import backend
from ncsn_jax import parallel
from ncsn_jax import train_state
from ncsn_jax.models import score
from ncsn_jax.training import losses


def _pmean(x, axis_name: Optional[str]):
  return x if axis_name is None else jax.lax.pmean(x, axis_name)


def _psum(x, axis_name: Optional[str]):
  return x if axis_name is None else jax.lax.psum(x, axis_name)


def loss_group_metrics(per_example, labels, num_classes: int, n_groups: int,
                       axis_name: Optional[str] = None):
  """Sums and counts of the loss over groups of noise levels.

  Group g holds labels [g L / G, (g + 1) L / G); group 0 = largest sigmas.
  Summed over devices when `axis_name` is given.
  """
  n_groups = min(n_groups, num_classes)
  groups = labels * n_groups // num_classes
  sums = jax.ops.segment_sum(per_example, groups, n_groups)
  counts = jax.ops.segment_sum(jnp.ones_like(per_example), groups, n_groups)
  return _psum(sums, axis_name), _psum(counts, axis_name)


def accumulated_grads(loss_fn, params, x, keys, n_micro: int):
  """Loss and gradients of the mean loss, over `n_micro` micro-batches.

  The batch loss is a mean over examples, so averaging the gradients of
  equal micro-batches gives the full-batch gradient while holding only one
  micro-batch of activations at a time.

  Returns:
    ((loss, aux), grads) as `jax.value_and_grad(..., has_aux=True)` does.
  """
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  if n_micro == 1:
    return grad_fn(params, x, keys)
  n = x.shape[0]  # A multiple of n_micro (config_checks).
  split = lambda a: a.reshape((n_micro, n // n_micro) + a.shape[1:])

  def body(total, micro):
    (loss, aux), grads = grad_fn(params, *micro)
    return jax.tree.map(jnp.add, total, grads), (loss, aux)

  zeros = jax.tree.map(jnp.zeros_like, params)
  grads, (loss, aux) = jax.lax.scan(body, zeros, (split(x), split(keys)))
  grads = jax.tree.map(lambda g: g / n_micro, grads)
  aux = jax.tree.map(lambda a: a.reshape((n,) + a.shape[2:]), aux)
  return (jnp.mean(loss), aux), grads


def _keep_if(finite, new, old):
  return jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)


def train_step(state: train_state.TrainState, images, keys, *, config,
               loss_fn, tx, axis_name: Optional[str] = None):
  """One optimisation step on this device's slice of the global batch.

  A step whose loss or gradients are not finite leaves params, optimiser
  state and EMA unchanged and reports `nonfinite = 1` (the host decides
  whether to stop or to go on).

  Args:
    state: the train state (identical on every device).
    images: data-space images `[B,H,W,C]`.
    keys: per-example keys `[B]` of this step, passed to `loss_fn`.
    config: experiment config (static).
    loss_fn: `loss_fn(params, x, keys) -> (loss, aux)` with aux 'losses'
      and 'labels' `[B]` (`losses.get_loss_fn`).
    tx: the optax optimiser.
    axis_name: the pmap axis to average gradients and metrics over, or None
      outside pmap.

  Returns:
    (new state, metrics), identical on every device.
  """
  x = score.data_transform(images, config)
  (loss, aux), grads = accumulated_grads(loss_fn, state.params, x, keys,
                                         config.training.grad_accum_steps)
  grads = _pmean(grads, axis_name)
  loss = _pmean(loss, axis_name)
  grad_norm = optax.tree.norm(grads)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  ema_params = train_state.update_ema(params, state.ema_params,
                                      train_state.ema_rate(config))
  sums, counts = loss_group_metrics(aux['losses'], aux['labels'],
                                    config.model.num_classes,
                                    config.training.n_loss_groups, axis_name)
  metrics = {
      'loss': loss,
      'grad_norm': grad_norm,
      'learning_rate': train_state.create_learning_rate_fn(config)(
          state.step),
      'group_loss_sums': sums,
      'group_counts': counts,
      'nonfinite': 1 - finite.astype(jnp.int32),
  }
  new_state = train_state.TrainState(
      step=state.step + 1,
      params=_keep_if(finite, params, state.params),
      opt_state=_keep_if(finite, opt_state, state.opt_state),
      ema_params=_keep_if(finite, ema_params, state.ema_params))
  return new_state, metrics


def multi_train_step(state, images, keys, **kwargs):
  """k train steps in one call; images `[k,B,H,W,C]`, keys `[k,B]`.

  Where `backend.unroll_train_steps()` (XLA:CPU) the k steps are traced one
  after the other; elsewhere they run in one `lax.scan`. Convolution
  gradients inside a while loop run several times slower on XLA:CPU, even
  when the loop runs once (and `scan(unroll=True)` keeps that loop);
  unrolling only costs compile time. `kwargs` go to `train_step`.

  Returns:
    (state after k steps, metrics stacked `[k, ...]`).
  """
  step = functools.partial(train_step, **kwargs)
  body = lambda s, batch: step(s, *batch)
  if not backend.unroll_train_steps():
    return jax.lax.scan(body, state, (images, keys))
  metrics = []
  for i in range(images.shape[0]):
    state, m = step(state, images[i], keys[i])
    metrics.append(m)
  return state, jax.tree.map(lambda *xs: jnp.stack(xs), *metrics)


def eval_step(params, images, keys, *, config, loss_fn,
              axis_name: Optional[str] = None):
  """Mean loss of `params` on test images `[B,...]` with keys `[B]`."""
  loss, _ = loss_fn(params, score.data_transform(images, config), keys)
  return _pmean(loss, axis_name)


def make_train_step(config, model, perturb_fn=None):
  """The pmapped train step of a config, as the training loop runs it.

  `p_train(state [D,...], images [k,B,...], keys [k,B]) -> (state,
  metrics)` over all local devices, the state donated (`parallel`). k steps
  per call (`multi_train_step`), the config's optimiser and loss.

  Args:
    config: the experiment config.
    model: the score network (`models.create_model(config)`).
    perturb_fn: the loss's hook for injected noise draws
      (`losses.get_loss_fn`); None draws from the per-example keys.

  Returns:
    (p_train, tx): the program and its optimiser (which
    `train_state.create_train_state` needs for the initial state).
  """
  tx = train_state.create_optimizer(config)
  loss_fn = losses.get_loss_fn(config, model, perturb_fn)
  return parallel.pmap_train_step(functools.partial(
      multi_train_step, config=config, loss_fn=loss_fn, tx=tx,
      axis_name=parallel.AXIS)), tx


def make_eval_step(config, model):
  """`p_eval(params, images [B,...], keys [B]) -> mean loss`, pmapped."""
  loss_fn = losses.get_loss_fn(config, model)
  return parallel.pmap_eval_step(functools.partial(
      eval_step, config=config, loss_fn=loss_fn, axis_name=parallel.AXIS))
