"""Seeds, fixed train/test splits and per-process shards of a data set."""

import numpy as np


def seeds(seed: int, process_index: int) -> tuple[int, int, int]:
  """Three independent 32-bit seeds (file order, shuffle, augmentation)."""
  entropy = [int(seed) & 0xFFFFFFFFFFFFFFFF, int(process_index)]
  states = np.random.SeedSequence(entropy).generate_state(3, np.uint32)
  return tuple(int(s) for s in states)


def split_indices(n: int, config, split: str) -> np.ndarray:
  """Indices of `split` in a fixed permutation of `n` examples.

  The permutation comes from `np.random.RandomState(config.data.split_seed)`;
  the last `round(n * config.data.test_fraction)` entries form the test split.
  """
  perm = np.random.RandomState(config.data.split_seed).permutation(n)
  n_test = int(round(n * config.data.test_fraction))
  return perm[n - n_test:] if split == 'test' else perm[:n - n_test]


def process_shard(indices: np.ndarray, process_index: int,
                  process_count: int) -> np.ndarray:
  """Contiguous equal-sized shard of `indices` for one process.

  Like `tfds.split_for_jax_process(..., drop_remainder=True)`: the last
  `len(indices) % process_count` entries are dropped so that every process
  yields the same number of batches and multi-host steps stay in lockstep.
  """
  size = len(indices) // process_count
  return indices[process_index * size:(process_index + 1) * size]
