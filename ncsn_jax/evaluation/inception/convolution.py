"""The Inception network's convolutions, in the fastest equivalent form.

`conv2d` is the one place that picks a convolution's form: a stride-1 1x1
convolution is a matmul, which XLA:CPU runs ~1.5x faster than its
convolution; large stride-1 3x3 maps may run by Winograd (`winograd`, on
CPU: `backend.winograd_min_pixels`); everything else is XLA's convolution.
All forms agree to float32 rounding.
"""

from jax import lax
import jax.numpy as jnp

from ncsn_jax.evaluation.inception import winograd

HIGHEST = lax.Precision.HIGHEST


def _pad(padding):
  """((top, bottom), (left, right)) from symmetric per-axis padding."""
  return ((padding[0], padding[0]), (padding[1], padding[1]))


def conv2d(x, kernel, strides, padding, winograd_min_pixels: int = 0):
  """NHWC x HWIO convolution, by the fastest equivalent form here.

  Stride 1 only: a 1x1 convolution is a matmul, which XLA:CPU runs ~1.5x
  faster; 3x3 convolutions with at least `winograd_min_pixels` output
  pixels per image (0: none) run as `winograd.conv3x3`. All others, and
  every strided one, are XLA's convolution. The forms agree to float32
  rounding.
  """
  kh, kw = kernel.shape[:2]
  if tuple(strides) == (1, 1):
    if (kh, kw) == (1, 1) and tuple(padding) == (0, 0):
      return jnp.dot(x, kernel[0, 0], precision=HIGHEST)
    out_pixels = ((x.shape[1] + 2 * padding[0] - kh + 1) *
                  (x.shape[2] + 2 * padding[1] - kw + 1))
    if (kh, kw) == (3, 3) and 0 < winograd_min_pixels <= out_pixels:
      return winograd.conv3x3(x, kernel, padding, precision=HIGHEST)
  return lax.conv_general_dilated(
      x, kernel, strides, _pad(padding),
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'), precision=HIGHEST)
