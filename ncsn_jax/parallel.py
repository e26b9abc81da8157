"""Data parallelism over all local devices (the only user of `jax.pmap`)
and per-example random keys.

Step and sampler functions stay device-agnostic: they see one device's slice
of the batch and its per-example keys, and communicate only through
`lax.pmean(..., AXIS)` when given `axis_name=AXIS`. This module is the only
one that knows where a device's or a process's examples sit in the global
batch (`process_keys`), so results match a single-device run of the same
global batch. Each `pmap_*` builder is called once per process and its
result reused: every call of a new pmapped closure compiles again.

Every random draw that belongs to one example (its noise label, its noise,
its Langevin noise) comes from a key that depends only on the root key and
the example's global index, key_i = fold_in(root, i) (`keys_at`). The keys
travel with the batch as data `[B]`, so a batch gives the same numbers on
one device or split over many.
"""

import jax
import jax.numpy as jnp
import numpy as np

AXIS = 'batch'


def process_keys(key: jax.Array, n: int) -> jax.Array:
  """Per-example keys `[n]` of this process's `n` examples of a global batch.

  Process p holds the global examples p n .. p n + n - 1 (and its device j
  the next n / devices of them), as `shard` splits them.
  """
  return keys_at(key, jax.process_index() * n + jnp.arange(n))


def shard(tree, axis: int = 0, devices: int = 0):
  """Splits `axis` of every leaf, `[..., B, ...]` -> `[D, ..., B/D, ...]`.

  D is `devices`, or the local device count when 0.
  """
  d = devices or jax.local_device_count()

  def split(x):
    n = x.shape[axis]
    if n % d:
      raise ValueError(f'batch of {n} is not divisible by the {d} devices.')
    x = x.reshape(x.shape[:axis] + (d, n // d) + x.shape[axis + 1:])
    if not axis:
      return x
    return (np.moveaxis if isinstance(x, np.ndarray) else jnp.moveaxis)(
        x, axis, 0)

  return jax.tree.map(split, tree)


def unshard(tree, axis: int = 0):
  """Inverse of `shard`: `[D, ..., B/D, ...]` -> `[..., B, ...]` (NumPy)."""

  def join(x):
    x = np.moveaxis(np.asarray(x), 0, axis)
    return x.reshape(x.shape[:axis] + (-1,) + x.shape[axis + 2:])

  return jax.tree.map(join, tree)


def replicate(tree, devices=None):
  """A copy of `tree` on every device, `[D, ...]` (the train state's form)."""
  devices = devices or jax.local_devices()
  mesh = jax.sharding.Mesh(np.asarray(devices), (AXIS,))
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(AXIS))
  return jax.tree.map(
      lambda x: jax.device_put(np.stack([np.asarray(x)] * len(devices)),
                               sharding), tree)


def unreplicate(tree):
  """This process's first device's copy of a replicated tree, as NumPy.

  Read from the local buffer itself: indexing a pmap output would run a
  device program, which with several processes may wait for the others.
  """
  return jax.tree.map(lambda x: np.asarray(x.addressable_shards[0].data)[0],
                      tree)


def pmap_sampler(sample_fn):
  """pmaps `sample_fn(params, *batched) -> (x, trajectory or None)`.

  Returns:
    `p_sample(params, *batched)`: params (host or single-device arrays) are
    broadcast to every device; each batched argument (`x0`, `keys`, ...,
    leading axis B, divisible by the local device count) is split over the
    local devices. Gives (final states `[N,...]`, trajectory `[n, N,...]` or
    None) as NumPy, in the order of a single-device run.
  """

  def sample_shard(params, batched):
    return sample_fn(params, *batched)

  # Local devices only: chains need no collective, so one process (e.g. the
  # main one writing a snapshot grid) can sample alone.
  mapped = jax.pmap(sample_shard, axis_name=AXIS, in_axes=(None, 0),
                    devices=jax.local_devices())

  def p_sample(params, *batched):
    x, trajectory = mapped(params, shard(batched))
    if trajectory is not None:
      trajectory = unshard(trajectory, axis=1)  # [D, n, N/D,...]
    return unshard(x), trajectory

  return p_sample


def pmap_train_step(step_fn, devices=None):
  """pmaps `step_fn(state, images [k,b,...], keys [k,b]) -> (state, metrics)`.

  The state is device-replicated (`replicate`) and donated: its buffers are
  reused for the new state, so one copy of params, optimiser state and EMA
  is alive. `step_fn` keeps the copies identical through `lax.pmean` over
  `AXIS`.

  Args:
    step_fn: e.g. `step.multi_train_step` with `axis_name=AXIS`.
    devices: the devices to use (default: all, the local ones feeding).

  Returns:
    `p_train(state, images [k,B,...], keys [k,B]) -> (state, metrics)`:
    this process's B examples are split over its devices; the metrics come
    back from the first device.
  """
  mapped = jax.pmap(step_fn, axis_name=AXIS, in_axes=(0, 0, 0),
                    out_axes=(0, None), devices=devices, donate_argnums=(0,))
  d = len(devices) if devices else jax.local_device_count()

  def p_train(state, images, keys):
    return mapped(state, shard(images, 1, d), shard(keys, 1, d))

  return p_train


def pmap_eval_step(eval_fn):
  """pmaps `eval_fn(params, images [b,...], keys [b]) -> pmean'ed metrics`.

  Returns:
    `p_eval(params, images [B,...], keys [B])` with params broadcast and
    this process's batch split over its devices.
  """
  mapped = jax.pmap(eval_fn, axis_name=AXIS, in_axes=(None, 0, 0),
                    out_axes=None)
  return lambda params, images, keys: mapped(params, shard(images),
                                             shard(keys))


def initialize_distributed(coordinator_address: str = '',
                           num_processes: int = 0, process_id: int = -1,
                           timeout_s: int = 300):
  """Joins a multi-process run (call before any other JAX use).

  With no address JAX finds the coordinator itself (Cloud TPU, SLURM,
  Open MPI); on CPU-only clusters give the address explicitly. CPU
  processes use gloo for cross-process collectives. `timeout_s` bounds the
  wait for the other processes: joining the coordinator, then
  `connect_collectives`.
  """
  kwargs = {'initialization_timeout': timeout_s}
  if coordinator_address:
    kwargs.update(coordinator_address=coordinator_address,
                  num_processes=num_processes, process_id=process_id)
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(**kwargs)
  if jax.process_count() > 1 and jax.default_backend() == 'cpu':
    connect_collectives(timeout_s)


def connect_collectives(timeout_s: int) -> None:
  """Opens gloo's connections between all devices while processes are level.

  The first collective over a set of devices makes each process look up the
  others' gloo addresses with a fixed 30 s deadline. On a loaded machine one
  process can reach that first collective (after compiling the train step)
  more than 30 s after another. So all processes first meet at a barrier
  that waits up to `timeout_s`, then run one tiny psum over every device;
  later programs over the same devices reuse its connections.
  """
  # orbax's barrier waits on the coordination service (no device program),
  # so its timeout is ours, unlike the first collective's.
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  ocp.multihost.get_barrier_sync_fn()(key='ncsn_jax_connect_collectives',
                                      timeout_ms=int(timeout_s * 1000))
  ones = np.ones((jax.local_device_count(),), np.float32)
  total = jax.pmap(lambda x: jax.lax.psum(x, AXIS), axis_name=AXIS)(ones)
  count = float(np.asarray(total.addressable_shards[0].data).reshape(-1)[0])
  if count != jax.device_count():
    raise RuntimeError(f'psum over {jax.device_count()} devices gave {count}.')


# ------------------------------------------------------ per-example keys


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
