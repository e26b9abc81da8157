"""Bilinear interpolation as matrices: one builder, three sampling rules.

A separable bilinear resize of a [B,H,W,C] image is `R_h x R_w^T` per
channel, with R an [out, in] matrix whose row i holds the two weights of
output pixel i. The rules differ only in where output pixel i samples the
input (s = in / out):

* 'align_corners': i (in - 1) / (out - 1), in float64; PyTorch's bilinear
  upsampling with align_corners=True (the RefineNet's multi-resolution
  fusion).
* 'half_pixel': max(0, (i + 0.5) s - 0.5), in float32; PyTorch's
  `F.interpolate(align_corners=False)` (pytorch-fid's Inception input).
* 'asymmetric': i s, in float32; TF1's legacy `ResizeBilinear` (TTUR's and
  improved-gan's Inception input).

Source positions past the last pixel clamp to it. Neither reference
antialiases, so neither does this module (it matters only when shrinking).
"""

import numpy as np

RULES = ('align_corners', 'half_pixel', 'asymmetric')


def _sources(in_size: int, out_size: int, rule: str) -> np.ndarray:
  """Source coordinate [out_size] of each output pixel, in the rule's dtype."""
  if rule == 'align_corners':
    if out_size == 1 or in_size == 1:
      return np.zeros(out_size)
    return np.arange(out_size) * (in_size - 1) / (out_size - 1)
  scale = np.float32(in_size) / np.float32(out_size)
  dst = np.arange(out_size, dtype=np.float32)
  if rule == 'asymmetric':
    return dst * scale
  return np.maximum((dst + np.float32(0.5)) * scale - np.float32(0.5),
                    np.float32(0))


def matrix(in_size: int, out_size: int, rule: str) -> np.ndarray:
  """Interpolation matrix [out_size, in_size], float64 weights.

  Row i is (1 - f) at i0 = floor(src) and f at min(i0 + 1, in - 1), with
  f = src - i0 computed in the source coordinate's dtype; rows sum to 1.
  """
  if rule not in RULES:
    raise ValueError(f'bilinear rule {rule!r} is unknown; use one of {RULES}.')
  if in_size < 1 or out_size < 1:
    raise ValueError(f'sizes must be >= 1, got {in_size} -> {out_size}.')
  src = _sources(in_size, out_size, rule)
  i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
  i1 = np.minimum(i0 + 1, in_size - 1)
  frac = (src - i0.astype(src.dtype)).astype(np.float64)
  m = np.zeros((out_size, in_size), np.float64)
  rows = np.arange(out_size)
  np.add.at(m, (rows, i0), 1.0 - frac)
  np.add.at(m, (rows, i1), frac)
  return m
