"""Building blocks of the RefineNet score networks, NHWC.

Convolutions use PyTorch's default initialisation (kernel and bias drawn from
U(+-1/sqrt(fan_in))) so a fresh model matches the reference in distribution,
and explicit symmetric zero padding, so dilated and 1x1 convolutions keep the
spatial size exactly as the reference's `padding=dilation` does.

Every block takes `(x, y)` and passes the noise label `y` `[B]` to its
normalisation layers; `norm` is a module factory (a class or
`functools.partial`) called with `name=...`, or None for blocks without
normalisation (the NCSNv2 refine blocks).
"""

import functools
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ncsn_jax import backend

NormFactory = Optional[Callable[..., nn.Module]]


def uniform_init(bound: float):
  """U(-bound, bound) initialiser."""

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


class Conv2d(nn.Module):
  """Stride-1 convolution with symmetric zero padding (size preserving).

  Attributes:
    features: output channels.
    kernel_size: odd square kernel size.
    dilation: kernel dilation; the padding is dilation * (kernel_size // 2).
    use_bias: whether to add a learned bias.
    dtype: compute dtype (parameters stay float32).
  """

  features: int
  kernel_size: int = 3
  dilation: int = 1
  use_bias: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    k = self.kernel_size
    fan_in = x.shape[-1] * k * k
    init = uniform_init(1.0 / np.sqrt(fan_in))
    kernel = self.param('kernel', init, (k, k, x.shape[-1], self.features))
    pad = self.dilation * (k // 2)
    out = jax.lax.conv_general_dilated(
        x.astype(self.dtype),
        kernel.astype(self.dtype),
        window_strides=(1, 1),
        padding=((pad, pad), (pad, pad)),
        rhs_dilation=(self.dilation, self.dilation),
        dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    if self.use_bias:
      bias = self.param('bias', init, (self.features,))
      out = out + bias.astype(self.dtype)
    return out


def mean_pool2x2(x: jax.Array) -> jax.Array:
  """2x2 average pooling with stride 2 of `[B,H,W,C]` (H, W even)."""
  b, h, w, c = x.shape
  if h % 2 or w % 2:
    raise ValueError(f'mean pooling needs an even spatial size, got {h}x{w}')
  return x.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


class ConvMeanPool(nn.Module):
  """Convolution followed by 2x2 mean pooling (halves H and W)."""

  features: int
  kernel_size: int = 3
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = Conv2d(self.features, self.kernel_size, dtype=self.dtype,
               name='conv')(x)
    return mean_pool2x2(x)


def resize_bilinear_align_corners(x: jax.Array, size: Sequence[int]):
  """Bilinear resize of `[B,H,W,C]` to `size` = (H', W'), align_corners=True.

  Output pixel i samples the input at i * (in - 1) / (out - 1), the rule of
  PyTorch's bilinear upsampling with align_corners=True (not the half-pixel
  rule of `jax.image.resize`).
  """
  h, w = x.shape[1:3]
  if (h, w) == tuple(size):
    return x
  rows, cols = (jnp.asarray(bilinear_matrix(n, m, 'align_corners').astype(
      np.float32), x.dtype) for n, m in ((h, size[0]), (w, size[1])))
  x = jnp.einsum('oh,bhwc->bowc', rows, x)
  return jnp.einsum('pw,bowc->bopc', cols, x)


class ResidualBlock(nn.Module):
  """Pre-activation residual block (NCSN ConditionalResidualBlock / NCSNv2).

  norm -> act -> conv1 -> norm -> act -> conv2, plus a shortcut of the raw
  input. `resample='down'` without dilation halves the resolution with
  ConvMeanPool; with a dilation it keeps the resolution and only forces a
  learned (dilated 3x3) shortcut, as in the reference networks.
  """

  features: int
  norm: NormFactory
  resample: Optional[str] = None
  dilation: Optional[int] = None
  act: Callable[[jax.Array], jax.Array] = nn.elu
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, y: jax.Array) -> jax.Array:
    in_features = x.shape[-1]
    conv = functools.partial(Conv2d, dtype=self.dtype)
    d = self.dilation or 1
    down = self.resample == 'down'
    mid = in_features if down else self.features
    h = self.act(self.norm(name='normalize1')(x, y))
    h = conv(mid, 3, d, name='conv1')(h)
    h = self.act(self.norm(name='normalize2')(h, y))
    if down and self.dilation is None:
      h = ConvMeanPool(self.features, 3, self.dtype, name='conv2')(h)
      shortcut = ConvMeanPool(self.features, 1, self.dtype, name='shortcut')(x)
    else:
      h = conv(self.features, 3, d, name='conv2')(h)
      if down or in_features != self.features:
        kernel = 1 if self.dilation is None else 3
        shortcut = conv(self.features, kernel, d, name='shortcut')(x)
      else:
        shortcut = x
    return shortcut + h


class RCUBlock(nn.Module):
  """Residual conv unit: n_blocks x ([norm] -> act -> conv3x3) x n_stages."""

  features: int
  n_blocks: int
  n_stages: int
  norm: NormFactory = None
  act: Callable[[jax.Array], jax.Array] = nn.elu
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, y: jax.Array) -> jax.Array:
    for i in range(1, self.n_blocks + 1):
      residual = x
      for j in range(1, self.n_stages + 1):
        if self.norm is not None:
          x = self.norm(name=f'{i}_{j}_norm')(x, y)
        x = self.act(x)
        x = Conv2d(self.features, 3, use_bias=False, dtype=self.dtype,
                   name=f'{i}_{j}_conv')(x)
      x = x + residual
    return x


class CRPBlock(nn.Module):
  """Chained residual pooling: act, then n_stages of pool -> conv added up.

  `pool='max'` (NCSNv2) takes a 5x5 max with -inf padding; `pool='avg'`
  (NCSN v1) a 5x5 mean that counts the zero padding.
  """

  features: int
  n_stages: int = 2
  pool: str = 'max'
  norm: NormFactory = None
  act: Callable[[jax.Array], jax.Array] = nn.elu
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, y: jax.Array) -> jax.Array:
    pool = {'max': max_pool, 'avg': avg_pool}[self.pool]
    x = self.act(x)
    path = x
    for k in range(self.n_stages):
      if self.norm is not None:
        path = self.norm(name=f'norms_{k}')(path, y)
      path = pool(path, 5, padding=2)
      path = Conv2d(self.features, 3, use_bias=False, dtype=self.dtype,
                    name=f'convs_{k}')(path)
      x = x + path
    return x


class MSFBlock(nn.Module):
  """Multi-resolution fusion: sum of conv3x3(x_k) upsampled to `shape`."""

  features: int
  norm: NormFactory = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, xs: Sequence[jax.Array], y: jax.Array,
               shape: Sequence[int]) -> jax.Array:
    total = 0.0
    for k, x in enumerate(xs):
      if self.norm is not None:
        x = self.norm(name=f'norms_{k}')(x, y)
      x = Conv2d(self.features, 3, dtype=self.dtype, name=f'convs_{k}')(x)
      total = total + resize_bilinear_align_corners(x, shape)
    return total


class RefineBlock(nn.Module):
  """RefineNet block: adapt RCUs per input, fusion, chained pooling, RCU.

  Inputs are ordered (skip feature, coarser refine output); the output has
  the spatial size of the first input.
  """

  features: int
  start: bool = False
  end: bool = False
  pool: str = 'max'
  norm: NormFactory = None
  act: Callable[[jax.Array], jax.Array] = nn.elu
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, xs: Sequence[jax.Array], y: jax.Array) -> jax.Array:
    blocks = dict(norm=self.norm, act=self.act, dtype=self.dtype)
    hs = [
        RCUBlock(x.shape[-1], 2, 2, name=f'adapt_convs_{k}', **blocks)(x, y)
        for k, x in enumerate(xs)
    ]
    if self.start:
      if len(hs) != 1 or hs[0].shape[-1] != self.features:
        raise ValueError('a start RefineBlock takes one input of its width')
      h = hs[0]
    else:
      h = MSFBlock(self.features, self.norm, self.dtype, name='msf')(
          hs, y, xs[0].shape[1:3])
    h = CRPBlock(self.features, 2, self.pool, name='crp', **blocks)(h, y)
    n_out = 3 if self.end else 1
    return RCUBlock(self.features, n_out, 2, name='output_convs',
                    **blocks)(h, y)


# --------------------------------------------------------------------------
# Square max and average pooling, NHWC, in the form the backend runs best
#
# On XLA:CPU (`backend.shifted_view_pools`) a k x k window reduction is a
# k-reduction along H followed by one along W, each k shifted (strided) views
# of the input combined elementwise, which XLA fuses into plain loops: 3-4x
# faster there than `lax.reduce_window` (flax's `nn.max_pool` /
# `nn.avg_pool`), and their gradients avoid `select_and_scatter`. Elsewhere
# the pools are flax's. The forms agree (max exactly, averages to float32
# rounding); gradients differ only on exact ties of a max, which split the
# gradient in the shifted form and go to one element in `reduce_window`.
#
# `shifted_views=None` takes the choice from `backend` when the function is
# traced.


def _window(x: jax.Array, op, size: int, stride: int) -> jax.Array:
  """op-reduction over size x size windows (VALID): [B,H,W,C] -> [B,H',W',C]."""
  ho = (x.shape[1] - size) // stride + 1
  wo = (x.shape[2] - size) // stride + 1
  rows = x[:, :stride * (ho - 1) + 1:stride]
  for k in range(1, size):
    rows = op(rows, x[:, k:k + stride * (ho - 1) + 1:stride])
  out = rows[:, :, :stride * (wo - 1) + 1:stride]
  for k in range(1, size):
    out = op(out, rows[:, :, k:k + stride * (wo - 1) + 1:stride])
  return out


def _pad(x: jax.Array, padding: int, value) -> jax.Array:
  if not padding:
    return x
  return jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)),
                 constant_values=value)


def _check_fits(x: jax.Array, size: int, padding: int) -> None:
  h, w = x.shape[1] + 2 * padding, x.shape[2] + 2 * padding
  if h < size or w < size:
    raise ValueError(f'a {size}x{size} window does not fit in a {h}x{w} map '
                     '(after padding).')


def _use_shifted_views(shifted_views: Optional[bool]) -> bool:
  return (backend.shifted_view_pools() if shifted_views is None else
          shifted_views)


def max_pool(x: jax.Array, size: int, stride: int = 1, padding: int = 0,
             shifted_views: Optional[bool] = None) -> jax.Array:
  """Max over size x size windows; padding is -inf (never wins).

  [B,H,W,C] -> [B,(H + 2 padding - size) // stride + 1, ...,C].
  """
  _check_fits(x, size, padding)
  if not _use_shifted_views(shifted_views):
    return nn.max_pool(x, (size, size), (stride, stride),
                       ((padding, padding), (padding, padding)))
  return _window(_pad(x, padding, -jnp.inf), jnp.maximum, size, stride)


def avg_pool(x: jax.Array, size: int, stride: int = 1, padding: int = 0,
             count_include_pad: bool = True,
             shifted_views: Optional[bool] = None) -> jax.Array:
  """Mean over size x size windows of the zero-padded input.

  With `count_include_pad` (PyTorch's default) every window divides by
  size^2; without it, by the number of its pixels inside the input (the
  TF 'SAME' average of the Inception graph).
  """
  _check_fits(x, size, padding)
  if not _use_shifted_views(shifted_views):
    return nn.avg_pool(x, (size, size), (stride, stride),
                       ((padding, padding), (padding, padding)),
                       count_include_pad=count_include_pad)
  sums = _window(_pad(x, padding, 0), jnp.add, size, stride)
  if count_include_pad or not padding:
    return sums / (size * size)
  inside = np.pad(np.ones(x.shape[1:3], np.float32), padding)[None, ..., None]
  counts = _window(inside, np.add, size, stride)
  return sums / counts[0].astype(sums.dtype)


# ------- Bilinear interpolation as matrices: one builder, three sampling rules
#
# A separable bilinear resize of a [B,H,W,C] image is `R_h x R_w^T` per
# channel, with R an [out, in] matrix whose row i holds the two weights of
# output pixel i. The rules differ only in where output pixel i samples the
# input (s = in / out):
#
# * 'align_corners': i (in - 1) / (out - 1), in float64; PyTorch's bilinear
#   upsampling with align_corners=True (the RefineNet's multi-resolution
#   fusion).
# * 'half_pixel': max(0, (i + 0.5) s - 0.5), in float32; PyTorch's
#   `F.interpolate(align_corners=False)` (pytorch-fid's Inception input).
# * 'asymmetric': i s, in float32; TF1's legacy `ResizeBilinear` (TTUR's and
#   improved-gan's Inception input).
#
# Source positions past the last pixel clamp to it. Neither reference
# antialiases, so neither does this module (it matters only when shrinking).


BILINEAR_RULES = ('align_corners', 'half_pixel', 'asymmetric')


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


def bilinear_matrix(in_size: int, out_size: int, rule: str) -> np.ndarray:
  """Interpolation matrix [out_size, in_size], float64 weights.

  Row i is (1 - f) at i0 = floor(src) and f at min(i0 + 1, in - 1), with
  f = src - i0 computed in the source coordinate's dtype; rows sum to 1.
  """
  if rule not in BILINEAR_RULES:
    raise ValueError(f'bilinear rule {rule!r} is unknown; use one of '
                     f'{BILINEAR_RULES}.')
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
