"""Host-side sample drawing with a sampler pmapped once.

`p_sample` is `parallel.pmap_sampler(langevin.get_sampler(config, model))`,
built once per process and passed to every snapshot, sample-mode call and
swept checkpoint, so the sampler compiles once. Batch i of `generate` and
the single batch of `sample_batch` start chain j from the key
fold_in(batch key, j), which also drives its Langevin noise.
"""

from typing import Optional

import jax
import numpy as np

from ncsn_jax import parallel
from ncsn_jax import progress
from ncsn_jax import random_utils
from ncsn_jax import transforms
from ncsn_jax.sampling import langevin


def sample_batch(config, p_sample, params, key: jax.Array, n: int,
                 data: Optional[np.ndarray] = None):
  """`n` chains from `key`: (samples, trajectory) in data space (NumPy).

  Args:
    config: run config (data transform, `sampling.data_init` handled by the
      caller through `data`).
    p_sample: `p_sample(params, x0, keys) -> (x, trajectory or None)`.
    params: the model parameters (usually the EMA ones).
    key: root key of the batch.
    n: number of chains (divisible by the local device count).
    data: data-space images `[n,H,W,C]` to start from (NCSNv2's data_init).

  Returns:
    (samples float `[n,H,W,C]`, trajectory `[m, n,H,W,C]` or None).
  """
  keys = random_utils.per_example_keys(key, n)
  x0 = langevin.init_samples(keys, config, data)
  x, trajectory = p_sample(params, x0, keys)
  images = np.asarray(transforms.inverse_data_transform(x, config))
  if trajectory is not None:
    trajectory = np.asarray(
        transforms.inverse_data_transform(trajectory, config))
  return images, trajectory


def generate(config, p_sample, params, key: jax.Array, n: int) -> np.ndarray:
  """`n` samples in data space, float `[n,H,W,C]`, in sampler-sized batches.

  Every batch has `config.sampling.batch_size` chains (the last one padded),
  so the sampler runs one compiled shape; batch i uses fold_in(key, i).
  Reports progress per batch (`progress.Progress`).
  """
  batch = config.sampling.batch_size
  parallel.check_divisible_local(batch, 'config.sampling.batch_size')
  out = []
  with progress.Progress(n, 'sampling', unit='samples') as bar:
    for i in range(-(-n // batch)):
      out.append(sample_batch(config, p_sample, params,
                              jax.random.fold_in(key, i), batch)[0])
      bar.update(min(batch, n - i * batch))
  return np.concatenate(out)[:n]
