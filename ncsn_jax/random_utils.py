"""Per-example random keys.

Every random draw that belongs to one example (its noise label, its noise,
its Langevin noise) comes from a key that depends only on the root key and
the example's global index, key_i = fold_in(root, i). The keys travel with
the batch as data `[B]`, so a batch gives the same numbers whether it runs
on one device or is split over many (`parallel` picks the global indices).
"""

import jax
import jax.numpy as jnp


def keys_at(key: jax.Array, indices: jax.Array) -> jax.Array:
  """fold_in(key, i) for every global example index i of `indices` `[N]`."""
  return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, indices)


def per_example_keys(key: jax.Array, batch_size: int) -> jax.Array:
  """Keys `[batch_size]` of the examples 0 .. batch_size - 1."""
  return keys_at(key, jnp.arange(batch_size))


def step_keys(keys: jax.Array, t) -> jax.Array:
  """fold_in(key_i, t) for every per-example key: the draws of step t."""
  return jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, t)


def split_each(keys: jax.Array):
  """Two independent keys per example: (first `[B]`, second `[B]`)."""
  return tuple(jax.vmap(jax.random.split, out_axes=1)(keys))


def per_example_normal(keys: jax.Array, shape, dtype=jnp.float32):
  """One standard normal draw of `shape` per key -> `[B, *shape]`."""
  return jax.vmap(lambda k: jax.random.normal(k, shape, dtype))(keys)


def per_example_uniform(keys: jax.Array, shape, dtype=jnp.float32):
  """One U[0, 1) draw of `shape` per key -> `[B, *shape]`."""
  return jax.vmap(lambda k: jax.random.uniform(k, shape, dtype))(keys)
