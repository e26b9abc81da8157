"""Data parallelism over all local devices; the only user of `jax.pmap`.

Step and sampler functions stay device-agnostic: they see one device's slice
and communicate only through `lax.pmean(..., AXIS)` and
`lax.axis_index(AXIS)` (to offset per-example random keys), so results match
a single-device run of the same global batch.
"""

import functools

import jax
import numpy as np

from ncsn_jax import errors

AXIS = 'batch'


def check_divisible(batch_size: int, field: str) -> int:
  """Per-device batch size; raises naming `field` if it does not divide."""
  n = jax.device_count()
  if batch_size % n:
    raise errors.ConfigError(
        f'{field}={batch_size} is not divisible by the {n} devices; set it '
        f'to a multiple of {n}.')
  return batch_size // n


def shard(tree):
  """Splits the leading axis `[B,...]` into `[local_devices, B/devices,...]`."""
  d = jax.local_device_count()

  def split(x):
    if x.shape[0] % d:
      raise ValueError(f'batch of {x.shape[0]} is not divisible by the {d} '
                       'local devices.')
    return x.reshape((d, x.shape[0] // d) + x.shape[1:])

  return jax.tree.map(split, tree)


def unshard(tree):
  """Inverse of `shard`: `[D, B/D,...]` -> `[B,...]`."""
  return jax.tree.map(lambda x: x.reshape((-1,) + x.shape[2:]), tree)


def device_offset(per_device: int):
  """Global index of this device's first example (inside pmap)."""
  return jax.lax.axis_index(AXIS) * per_device


@functools.lru_cache(maxsize=None)
def _pmapped_sampler(sample_fn, per_device: int):
  def run(params, x0, key):
    return sample_fn(params, x0, key, device_offset(per_device))

  return jax.pmap(run, axis_name=AXIS, in_axes=(None, 0, None))


def p_sample(sample_fn, params, x0, key):
  """Runs `sample_fn(params, x0, key, offset)` split over local devices.

  Args:
    sample_fn: from `langevin.get_sampler` (must be hashable: reuse it).
    params: model parameters (replicated).
    x0: initial states `[B,...]`, B divisible by the local device count.
    key: root sampling key.

  Returns:
    (final states `[B,...]`, trajectory `[n, B,...]` or None) as NumPy.
  """
  per_device = x0.shape[0] // jax.local_device_count()
  x, trajectory = _pmapped_sampler(sample_fn, per_device)(
      params, shard(x0), key)
  x = np.asarray(unshard(x))
  if trajectory is not None:
    trajectory = np.asarray(trajectory)  # [D, n, B/D, ...]
    trajectory = np.swapaxes(trajectory, 0, 1)
    trajectory = trajectory.reshape(trajectory.shape[:1] + (-1,) +
                                    trajectory.shape[3:])
  return x, trajectory


def pmap_train_step(step_fn, devices=None):
  """pmaps `step_fn(state, images, key) -> (state, metrics)`.

  The state and key are replicated (`in_axes=None`), images are sharded
  `[D, ...]`, and state and metrics come back replicated: the step function
  keeps them identical on every device through `lax.pmean`. `devices`
  defaults to all devices.
  """
  return jax.pmap(step_fn, axis_name=AXIS, in_axes=(None, 0, None),
                  out_axes=(None, None), devices=devices)


def pmap_eval_step(eval_fn):
  """pmaps `eval_fn(params, images, key) -> pmean'ed metrics`."""
  return jax.pmap(eval_fn, axis_name=AXIS, in_axes=(None, 0, None),
                  out_axes=None)


def check_divisible_local(batch_size: int, field: str) -> int:
  """Per-device batch over local devices; raises naming `field`."""
  d = jax.local_device_count()
  if batch_size % d or batch_size <= 0:
    raise errors.ConfigError(
        f'{field}={batch_size} is not divisible by the {d} '
        f'local devices; set it to a multiple of {d}.')
  return batch_size // d


def initialize_distributed(coordinator_address: str = '',
                           num_processes: int = 0, process_id: int = -1):
  """Joins a multi-process run (call before any other JAX use).

  With no arguments JAX finds the coordinator itself (Cloud TPU, SLURM,
  Open MPI); on CPU-only clusters give the address explicitly. CPU
  processes use gloo for cross-process collectives.
  """
  kwargs = {}
  if coordinator_address:
    kwargs = dict(coordinator_address=coordinator_address,
                  num_processes=num_processes, process_id=process_id)
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(**kwargs)
