"""Backend-specific implementation choices, all in one place.

Some ops have a faster form on XLA:CPU than the plain XLA op, measured there
(numbers in `bench/README.md`). Each choice below is made by platform name
(`jax.default_backend()` unless a device's platform is given); GPUs and TPUs
get the plain XLA ops until a measurement on that backend says otherwise.

| choice                  | XLA:CPU                     | GPU / TPU          |
|-------------------------|-----------------------------|--------------------|
| `shifted_view_pools`    | pools as shifted views      | `reduce_window`    |
| `winograd_min_pixels`   | Winograd for large 3x3 maps | XLA's convolution  |
| `inception_micro_batch` | one image at a time         | whole batch        |
| `unroll_train_steps`    | k steps traced one by one   | one `lax.scan`     |
| `sampler_chains`        | 256 chains per device call  | 4096               |

Users: `models.layers` (the RefineNet's CRP pools, when traced) and the
Inception extractor (`evaluation.inception.extractor`, by its device) for
the first three, the training step for the fourth, the host side of the
sampler (`sampling.langevin`) for the last.
"""

from typing import Optional

import jax

# 3x3 stride-1 convolutions with at least this many output pixels per image
# run as Winograd on CPU (the Inception stem's 147x147 and 71x71 maps).
CPU_WINOGRAD_MIN_PIXELS = 71 * 71


def platform(name: Optional[str] = None) -> str:
  """`name`, or the default backend's platform ('cpu', 'gpu', 'tpu')."""
  return name or jax.default_backend()


def is_cpu(name: Optional[str] = None) -> bool:
  return platform(name) == 'cpu'


def shifted_view_pools(name: Optional[str] = None) -> bool:
  """Max/avg pools as separable shifted views (3-4x faster on XLA:CPU)."""
  return is_cpu(name)


def winograd_min_pixels(name: Optional[str] = None) -> int:
  """Output pixels from which 3x3 convolutions use Winograd (0: never)."""
  return CPU_WINOGRAD_MIN_PIXELS if is_cpu(name) else 0


def inception_micro_batch(name: Optional[str] = None) -> Optional[int]:
  """Images per Inception forward inside a batch (None: the whole batch)."""
  return 1 if is_cpu(name) else None


def sampler_chains(devices: int, name: Optional[str] = None) -> int:
  """Langevin chains per device call when `sampling.chains_per_call` is 0.

  On a CPU a call of 256 small chains takes seconds, so progress lines come
  often; accelerators get more chains per call: the H200 measurement gave
  the best score evaluations/s at 2000-4000 chains (and memory stays far
  from full there).
  """
  return max(devices, 256 if is_cpu(name) else 4096)


def unroll_train_steps(name: Optional[str] = None) -> bool:
  """Whether k jitted train steps are traced one by one (no while loop).

  XLA:CPU runs convolution gradients inside a while loop several times
  slower (3.5x for the digits model's step); elsewhere the loop's compile
  time, which does not grow with k, wins.
  """
  return is_cpu(name)
