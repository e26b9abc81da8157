"""Pairwise Euclidean distances of large image sets, block by block on device.

Used by the NCSNv2 hyperparameter tool (sigma_1 = the largest distance
between training images) and by the nearest-neighbour figure of sample mode.
Rows are flattened to vectors; squared distances are computed as
||a||^2 + ||b||^2 - 2 a.b with full-precision matrix products (no TF32), one
`[block, N]` tile at a time, so memory stays O(block * N) besides the data.
The nearest neighbours found that way are then measured again directly, as
||a - b||: their distances carry no cancellation error (an image is at
distance 0 from itself).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from ncsn_jax import console

_HIGHEST = jax.lax.Precision.HIGHEST


def _flatten(x) -> jax.Array:
  x = jnp.asarray(x, jnp.float32)
  return x.reshape(x.shape[0], -1)


def _pad_rows(x: jax.Array, block: int) -> tuple[jax.Array, int]:
  """Pads `[N, D]` to a multiple of `block` rows by repeating row 0."""
  n = x.shape[0]
  pad = -n % block
  if pad:
    x = jnp.concatenate([x, jnp.broadcast_to(x[:1], (pad, x.shape[1]))])
  return x, n


def _squared_distances(a: jax.Array, b: jax.Array,
                       b_norms: jax.Array) -> jax.Array:
  """`[Na, Nb]` squared distances between the rows of a and b (>= 0)."""
  a_norms = jnp.sum(a * a, axis=1)
  d2 = a_norms[:, None] + b_norms[None, :] - 2.0 * jnp.matmul(
      a, b.T, precision=_HIGHEST)
  return jnp.maximum(d2, 0.0)


@functools.partial(jax.jit, static_argnames='block')
def _block_max(x: jax.Array, norms: jax.Array, start, block: int):
  """Largest squared distance of rows start .. start + block - 1 to all."""
  rows = jax.lax.dynamic_slice_in_dim(x, start, block)
  return jnp.max(_squared_distances(rows, x, norms))


def max_pairwise_distance(x, block_size: int = 1000,
                          desc: str = 'pairwise distances') -> float:
  """The largest Euclidean distance between two rows of `x`.

  One compiled tile program runs per block of rows, from a host loop that
  reports progress (`desc`: its label).

  Args:
    x: `[N, ...]` (each example flattened), N >= 1.
    block_size: rows per tile (the tile is `[block_size, N]`).
    desc: label of the progress line.

  Returns:
    max_{i,j} ||x_i - x_j|| as a Python float.
  """
  x = _flatten(x)
  if x.shape[0] == 0:
    raise ValueError('max_pairwise_distance needs at least one example.')
  block = max(1, min(block_size, x.shape[0]))
  x, n = _pad_rows(x, block)  # Repeated rows do not change the maximum.
  norms = jnp.sum(x * x, axis=1)
  best = 0.0
  with console.Progress(n, desc, unit='rows') as bar:
    for start in range(0, x.shape[0], block):
      best = max(best, float(_block_max(x, norms, start, block)))
      bar.update(min(block, n - start))
  return float(np.sqrt(best))


@functools.partial(jax.jit, static_argnames=('k', 'block', 'n'))
def _nearest(queries, data, k: int, block: int, n: int):
  q = queries.shape[0]
  norms = jnp.sum(data * data, axis=1)
  starts = jnp.arange(0, data.shape[0], block)

  def body(best, start):
    best_d2, best_idx = best
    tile = jax.lax.dynamic_slice_in_dim(data, start, block)
    tile_norms = jax.lax.dynamic_slice_in_dim(norms, start, block)
    idx = start + jnp.arange(block)
    d2 = _squared_distances(queries, tile, tile_norms)
    d2 = jnp.where(idx[None, :] < n, d2, jnp.inf)  # Padding rows.
    all_d2 = jnp.concatenate([best_d2, d2], axis=1)
    all_idx = jnp.concatenate([best_idx, jnp.broadcast_to(idx, (q, block))],
                              axis=1)
    neg, pos = jax.lax.top_k(-all_d2, k)
    return (-neg, jnp.take_along_axis(all_idx, pos, axis=1)), None

  init = (jnp.full((q, k), jnp.inf), jnp.full((q, k), -1, jnp.int32))
  (_, idx), _ = jax.lax.scan(body, init, starts)

  # The expansion loses about sqrt(ulp(||a||^2)) to cancellation (an image
  # of 25 values in [0, 1] came out 1.4e-3 from itself): measure them again.
  def direct(column):  # [Q] indices into data -> [Q] distances
    diff = queries - jnp.take(data, column, axis=0)
    return jnp.sqrt(jnp.sum(diff * diff, axis=1))

  dist = jax.lax.map(direct, idx.T).T
  order = jnp.argsort(dist, axis=1, stable=True)
  return (jnp.take_along_axis(dist, order, axis=1),
          jnp.take_along_axis(idx, order, axis=1))


def nearest_neighbors(queries, data, k: int, block_size: int = 1000):
  """The k rows of `data` closest to each query, in Euclidean distance.

  Args:
    queries: `[Q, ...]`.
    data: `[N, ...]` with the same example shape, N >= k.
    k: neighbours per query.
    block_size: data rows per tile (the tile is `[Q, block_size]`).

  Returns:
    (distances float `[Q, k]` ascending, indices int `[Q, k]` into `data`) as
    NumPy arrays.
  """
  queries, data = _flatten(queries), _flatten(data)
  if queries.shape[1] != data.shape[1]:
    raise ValueError(f'queries have {queries.shape[1]} values per example, '
                     f'data {data.shape[1]}.')
  if not 1 <= k <= data.shape[0]:
    raise ValueError(f'k={k} neighbours need 1 <= k <= {data.shape[0]} '
                     '(the number of data rows).')
  block = max(1, min(block_size, data.shape[0]))
  data, n = _pad_rows(data, block)
  d, idx = _nearest(queries, data, k, block, n)
  return np.asarray(d), np.asarray(idx)
