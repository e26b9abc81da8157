"""A network with its parameters, seen as a score function.

Losses, samplers, the toy experiment and evaluation all call the network
through `ScoreFn`: `score_fn(x [B,...], labels [B]) -> scores [B,...]`, the
labels indexing the noise levels (label 0 = the largest sigma). Plain
(unconditional) networks are called without labels.
"""

from typing import Any, Callable, Optional

import flax.linen as nn
import jax

# score_fn(x [B,...], labels [B] or None) -> scores [B,...].
ScoreFn = Callable[[jax.Array, Optional[jax.Array]], jax.Array]


def make_score_fn(model: nn.Module, params: Any) -> ScoreFn:
  """`score_fn(x, labels=None)` of `model` with `params`.

  Args:
    model: a flax score network `model(x [B,...], labels [B]) -> [B,...]`
      (or `model(x)` for an unconditional one).
    params: its parameters (the `'params'` collection).

  Returns:
    The score function; with `labels=None` the network gets `x` only.
  """

  def score_fn(x: jax.Array, labels: Optional[jax.Array] = None):
    if labels is None:
      return model.apply({'params': params}, x)
    return model.apply({'params': params}, x, labels)

  return score_fn
