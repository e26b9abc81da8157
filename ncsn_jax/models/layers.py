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

from ncsn_jax import bilinear
from ncsn_jax.models import pooling

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
  rows, cols = (jnp.asarray(bilinear.matrix(n, m, 'align_corners').astype(
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
    pool = {'max': pooling.max_pool, 'avg': pooling.avg_pool}[self.pool]
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
