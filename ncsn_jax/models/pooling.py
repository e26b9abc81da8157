"""Square max and average pooling, NHWC, in the form the backend runs best.

On XLA:CPU (`backend.shifted_view_pools`) a k x k window reduction is a
k-reduction along H followed by one along W, each k shifted (strided) views
of the input combined elementwise, which XLA fuses into plain loops: 3-4x
faster there than `lax.reduce_window` (flax's `nn.max_pool` /
`nn.avg_pool`), and their gradients avoid `select_and_scatter`. Elsewhere
the pools are flax's. The forms agree (max exactly, averages to float32
rounding); gradients differ only on exact ties of a max, which split the
gradient in the shifted form and go to one element in `reduce_window`.

`shifted_views=None` takes the choice from `backend` when the function is
traced.
"""

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ncsn_jax import backend


def _window(x: jax.Array, op, size: int, stride: int) -> jax.Array:
  """op-reduction over size x size windows (VALID): [B,H,W,C] -> [B,H',W',C]."""
  ho = (x.shape[1] - size) // stride + 1
  wo = (x.shape[2] - size) // stride + 1
  rows = x[:, :stride * (ho - 1) + 1:stride]
  for k in range(1, size):
    rows = op(rows, x[:, k:k + stride * (ho - 1) + 1:stride])
  out = rows[:, :, :stride * (wo - 1) + 1:stride]
  for k in range(1, size):
    out = op(out, rows[:, :, k:k + stride * (wo - 1) + 1:stride])
  return out


def _pad(x: jax.Array, padding: int, value) -> jax.Array:
  if not padding:
    return x
  return jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)),
                 constant_values=value)


def _check_fits(x: jax.Array, size: int, padding: int) -> None:
  h, w = x.shape[1] + 2 * padding, x.shape[2] + 2 * padding
  if h < size or w < size:
    raise ValueError(f'a {size}x{size} window does not fit in a {h}x{w} map '
                     '(after padding).')


def _use_shifted_views(shifted_views: Optional[bool]) -> bool:
  return (backend.shifted_view_pools() if shifted_views is None else
          shifted_views)


def max_pool(x: jax.Array, size: int, stride: int = 1, padding: int = 0,
             shifted_views: Optional[bool] = None) -> jax.Array:
  """Max over size x size windows; padding is -inf (never wins).

  [B,H,W,C] -> [B,(H + 2 padding - size) // stride + 1, ...,C].
  """
  _check_fits(x, size, padding)
  if not _use_shifted_views(shifted_views):
    return nn.max_pool(x, (size, size), (stride, stride),
                       ((padding, padding), (padding, padding)))
  return _window(_pad(x, padding, -jnp.inf), jnp.maximum, size, stride)


def avg_pool(x: jax.Array, size: int, stride: int = 1, padding: int = 0,
             count_include_pad: bool = True,
             shifted_views: Optional[bool] = None) -> jax.Array:
  """Mean over size x size windows of the zero-padded input.

  With `count_include_pad` (PyTorch's default) every window divides by
  size^2; without it, by the number of its pixels inside the input (the
  TF 'SAME' average of the Inception graph).
  """
  _check_fits(x, size, padding)
  if not _use_shifted_views(shifted_views):
    return nn.avg_pool(x, (size, size), (stride, stride),
                       ((padding, padding), (padding, padding)),
                       count_include_pad=count_include_pad)
  sums = _window(_pad(x, padding, 0), jnp.add, size, stride)
  if count_include_pad or not padding:
    return sums / (size * size)
  inside = np.pad(np.ones(x.shape[1:3], np.float32), padding)[None, ..., None]
  counts = _window(inside, np.add, size, stride)
  return sums / counts[0].astype(sums.dtype)
