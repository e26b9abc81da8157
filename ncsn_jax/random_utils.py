"""Per-example random keys.

Every random draw that belongs to one example (its noise label, its noise,
its Langevin noise) comes from a key that depends only on the root key and
the example's global index. A batch therefore gives the same numbers whether
it runs on one device or is split over many.
"""

import jax
import jax.numpy as jnp


def per_example_keys(key: jax.Array, batch_size: int, offset=0) -> jax.Array:
  """Keys `[batch_size]` for global example indices offset .. offset+B-1."""
  indices = offset + jnp.arange(batch_size)
  return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, indices)


def per_example_normal(keys: jax.Array, shape, dtype=jnp.float32):
  """One standard normal draw of `shape` per key -> `[B, *shape]`."""
  return jax.vmap(lambda k: jax.random.normal(k, shape, dtype))(keys)


def per_example_uniform(keys: jax.Array, shape, dtype=jnp.float32):
  """One U[0, 1) draw of `shape` per key -> `[B, *shape]`."""
  return jax.vmap(lambda k: jax.random.uniform(k, shape, dtype))(keys)
