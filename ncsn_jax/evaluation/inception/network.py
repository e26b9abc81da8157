"""InceptionV3, FID variant ("inception-2015-12-05"), in flax.linen, NHWC.

The network of the FID (Heusel et al., 2017; the TTUR code), of the
Inception Score (Salimans et al., 2016; the improved-gan code) and of
pytorch-fid, with the TF graph's quirks:

* every conv is bias-free and followed by inference BN *without gamma*
  (beta, moving mean and variance; eps 1e-3) and a ReLU;
* the pool branches of blocks A, C and E_1 (`Mixed_7b`) average 3x3 windows
  with padding 1 *not counted*; E_2 (`Mixed_7c`) max-pools instead;
* pool_3 is the mean of the final 8x8 map: [B,2048]; the optional 1008-way
  `fc` head gives logits (improved-gan multiplies by the weights only, no
  bias: `fc_bias=False`).

Parameter names are torchvision's (`Mixed_6b/branch7x7dbl_4/kernel`), so the
pytorch-fid state dict converts by a transpose (`weight_files`).
Inputs are float32 [B,299,299,3] in the network's range (`preprocessing`);
`extractor` runs the network on uint8 images in fixed-size batches.
"""

import functools
from typing import Callable, Optional

import flax
import flax.linen as nn
from jax import lax
import jax.numpy as jnp
import numpy as np

from ncsn_jax.evaluation.inception import winograd
from ncsn_jax.models import layers

INPUT_SIZE = 299
NUM_LOGITS = 1008


class ConvBN(nn.Module):
  """Bias-free conv, inference BN (optional gamma, eps 1e-3), ReLU.

  y = relu((conv(x) - mean) * scale * rsqrt(var + eps) + bias).

  Attributes:
    features: output channels.
    kernel_size: (kh, kw).
    strides: (sh, sw).
    padding: (ph, pw), symmetric, as PyTorch's integer padding.
    use_scale: whether the BN has a gamma (`scale`); the FID graph has none.
    eps: BN epsilon.
    winograd_min_pixels: see `conv2d` (0: XLA's convolution
      always).
  """
  features: int
  kernel_size: tuple[int, int] = (1, 1)
  strides: tuple[int, int] = (1, 1)
  padding: tuple[int, int] = (0, 0)
  use_scale: bool = False
  eps: float = 1e-3
  winograd_min_pixels: int = 0

  @nn.compact
  def __call__(self, x, params_only: bool = False):
    """[B,H,W,Cin] -> [B,H',W',features] (or the BN'd params, see below).

    With `params_only` it declares its parameters and returns them as
    {'kernel', 'mean', 'bias', 'inv'} (inv = scale * rsqrt(var + eps))
    without computing, for `fused_1x1`.
    """
    shape = (*self.kernel_size, x.shape[-1], self.features)
    kernel = self.param('kernel', nn.initializers.lecun_normal(), shape)
    bias = self.param('bias', nn.initializers.zeros, (self.features,))
    mean = self.param('mean', nn.initializers.zeros, (self.features,))
    var = self.param('var', nn.initializers.ones, (self.features,))
    inv = lax.rsqrt(var + self.eps)
    if self.use_scale:
      inv = inv * self.param('scale', nn.initializers.ones, (self.features,))
    if params_only:
      return {'kernel': kernel, 'mean': mean, 'bias': bias, 'inv': inv}
    y = conv2d(x, kernel, self.strides, self.padding,
                           self.winograd_min_pixels)
    return nn.relu((y - mean) * inv + bias)


def fused_1x1(x, convs):
  """Parallel 1x1 `ConvBN`s of one input as a single matmul: list of outputs.

  Each output column depends on its own kernel column only, so this equals
  calling the convs one by one (up to float summation order, ~1e-7); XLA:CPU
  runs one wide matmul faster than several narrow ones.
  """
  ps = [conv(x, params_only=True) for conv in convs]
  cat = lambda k: jnp.concatenate([p[k] for p in ps], axis=-1)
  kernel = jnp.concatenate([p['kernel'][0, 0] for p in ps], axis=-1)
  y = jnp.dot(x, kernel, precision=HIGHEST)
  y = nn.relu((y - cat('mean')) * cat('inv') + cat('bias'))
  ends = np.cumsum([conv.features for conv in convs])
  return jnp.split(y, ends[:-1], axis=-1)


def avg_pool_3x3(x, shifted_views: Optional[bool] = None):
  """3x3 stride-1 average pool, padding 1 not counted: [B,H,W,C].

  `shifted_views`: the pool's form (`models.layers`; None: the backend's).
  """
  return layers.avg_pool(x, 3, padding=1, count_include_pad=False,
                         shifted_views=shifted_views)


def max_pool_3x3(x, stride: int = 1, shifted_views: Optional[bool] = None):
  """3x3 max pool: stride 1 with padding 1 (-inf), or stride 2 VALID."""
  return layers.max_pool(x, 3, stride, padding=1 if stride == 1 else 0,
                         shifted_views=shifted_views)


class InceptionA(nn.Module):
  """Mixed_5b/c/d: 35x35 block, pool branch avg (padding not counted)."""
  pool_features: int
  conv: Callable[..., nn.Module] = ConvBN  # `ConvBN` with shared settings.
  shifted_views: Optional[bool] = None  # Pool form (`models.layers`).

  @nn.compact
  def __call__(self, x):
    conv = self.conv
    b1, b5, b3 = fused_1x1(x, [conv(64, name='branch1x1'),
                               conv(48, name='branch5x5_1'),
                               conv(64, name='branch3x3dbl_1')])
    b5 = conv(64, (5, 5), padding=(2, 2), name='branch5x5_2')(b5)
    b3 = conv(96, (3, 3), padding=(1, 1), name='branch3x3dbl_2')(b3)
    b3 = conv(96, (3, 3), padding=(1, 1), name='branch3x3dbl_3')(b3)
    pooled = avg_pool_3x3(x, self.shifted_views)
    bp = conv(self.pool_features, name='branch_pool')(pooled)
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
  """Mixed_6a: 35x35 -> 17x17 reduction."""
  conv: Callable[..., nn.Module] = ConvBN  # `ConvBN` with shared settings.
  shifted_views: Optional[bool] = None  # Pool form (`models.layers`).

  @nn.compact
  def __call__(self, x):
    conv = self.conv
    b3 = conv(384, (3, 3), (2, 2), name='branch3x3')(x)
    bd = conv(64, name='branch3x3dbl_1')(x)
    bd = conv(96, (3, 3), padding=(1, 1), name='branch3x3dbl_2')(bd)
    bd = conv(96, (3, 3), (2, 2), name='branch3x3dbl_3')(bd)
    return jnp.concatenate([b3, bd, max_pool_3x3(x, 2, self.shifted_views)],
                           axis=-1)


class InceptionC(nn.Module):
  """Mixed_6b..6e: 17x17 block with factorised 7x7 convs."""
  channels_7x7: int
  conv: Callable[..., nn.Module] = ConvBN  # `ConvBN` with shared settings.
  shifted_views: Optional[bool] = None  # Pool form (`models.layers`).

  @nn.compact
  def __call__(self, x):
    conv = self.conv
    c7 = self.channels_7x7
    b1, b7, bd = fused_1x1(x, [conv(192, name='branch1x1'),
                               conv(c7, name='branch7x7_1'),
                               conv(c7, name='branch7x7dbl_1')])
    b7 = conv(c7, (1, 7), padding=(0, 3), name='branch7x7_2')(b7)
    b7 = conv(192, (7, 1), padding=(3, 0), name='branch7x7_3')(b7)
    bd = conv(c7, (7, 1), padding=(3, 0), name='branch7x7dbl_2')(bd)
    bd = conv(c7, (1, 7), padding=(0, 3), name='branch7x7dbl_3')(bd)
    bd = conv(c7, (7, 1), padding=(3, 0), name='branch7x7dbl_4')(bd)
    bd = conv(192, (1, 7), padding=(0, 3), name='branch7x7dbl_5')(bd)
    bp = conv(192, name='branch_pool')(avg_pool_3x3(x, self.shifted_views))
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
  """Mixed_7a: 17x17 -> 8x8 reduction."""
  conv: Callable[..., nn.Module] = ConvBN  # `ConvBN` with shared settings.
  shifted_views: Optional[bool] = None  # Pool form (`models.layers`).

  @nn.compact
  def __call__(self, x):
    conv = self.conv
    b3, b7 = fused_1x1(x, [conv(192, name='branch3x3_1'),
                           conv(192, name='branch7x7x3_1')])
    b3 = conv(320, (3, 3), (2, 2), name='branch3x3_2')(b3)
    b7 = conv(192, (1, 7), padding=(0, 3), name='branch7x7x3_2')(b7)
    b7 = conv(192, (7, 1), padding=(3, 0), name='branch7x7x3_3')(b7)
    b7 = conv(192, (3, 3), (2, 2), name='branch7x7x3_4')(b7)
    return jnp.concatenate([b3, b7, max_pool_3x3(x, 2, self.shifted_views)],
                           axis=-1)


class InceptionE(nn.Module):
  """Mixed_7b (avg pool branch, padding not counted) and 7c (max pool)."""
  max_pool: bool
  conv: Callable[..., nn.Module] = ConvBN  # `ConvBN` with shared settings.
  shifted_views: Optional[bool] = None  # Pool form (`models.layers`).

  @nn.compact
  def __call__(self, x):
    conv = self.conv
    b1, b3, bd = fused_1x1(x, [conv(320, name='branch1x1'),
                               conv(384, name='branch3x3_1'),
                               conv(448, name='branch3x3dbl_1')])
    b3 = jnp.concatenate([
        conv(384, (1, 3), padding=(0, 1), name='branch3x3_2a')(b3),
        conv(384, (3, 1), padding=(1, 0), name='branch3x3_2b')(b3)], axis=-1)
    bd = conv(384, (3, 3), padding=(1, 1), name='branch3x3dbl_2')(bd)
    bd = jnp.concatenate([
        conv(384, (1, 3), padding=(0, 1), name='branch3x3dbl_3a')(bd),
        conv(384, (3, 1), padding=(1, 0), name='branch3x3dbl_3b')(bd)],
                         axis=-1)
    pooled = (max_pool_3x3(x, 1, self.shifted_views) if self.max_pool else
              avg_pool_3x3(x, self.shifted_views))
    bp = conv(192, name='branch_pool')(pooled)
    return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class InceptionV3(nn.Module):
  """FID InceptionV3: [B,299,299,3] in the network range -> features.

  Attributes:
    with_logits: add the 1008-way `fc` head (`logits` output).
    fc_bias: add the fc bias to the logits (False: improved-gan's IS, which
      multiplies pool_3 by the weights only).
    use_scale: BN layers have a gamma (`scale`) parameter.
    winograd_min_pixels: 3x3 stride-1 convolutions with at least this many
      output pixels per image run by Winograd (`conv2d`); 0:
      none.
    shifted_view_pools: the pools' form (`models.layers`); None: the backend's.
  """
  with_logits: bool = False
  fc_bias: bool = False
  use_scale: bool = False
  winograd_min_pixels: int = 0
  shifted_view_pools: Optional[bool] = None

  @nn.compact
  def __call__(self, x):
    """Returns {'pool_3': [B,2048]} (+ 'logits': [B,1008])."""
    if x.shape[1:] != (INPUT_SIZE, INPUT_SIZE, 3):
      raise ValueError(f'InceptionV3 takes [B,{INPUT_SIZE},{INPUT_SIZE},3] '
                       f'inputs (see preprocessing), got {x.shape}.')
    conv = functools.partial(ConvBN, use_scale=self.use_scale,
                             winograd_min_pixels=self.winograd_min_pixels)
    x = conv(32, (3, 3), (2, 2), name='Conv2d_1a_3x3')(x)
    x = conv(32, (3, 3), name='Conv2d_2a_3x3')(x)
    x = conv(64, (3, 3), padding=(1, 1), name='Conv2d_2b_3x3')(x)
    sv = self.shifted_view_pools
    x = max_pool_3x3(x, 2, sv)
    x = conv(80, name='Conv2d_3b_1x1')(x)
    x = conv(192, (3, 3), name='Conv2d_4a_3x3')(x)
    x = max_pool_3x3(x, 2, sv)
    x = InceptionA(32, conv, sv, name='Mixed_5b')(x)
    x = InceptionA(64, conv, sv, name='Mixed_5c')(x)
    x = InceptionA(64, conv, sv, name='Mixed_5d')(x)
    x = InceptionB(conv, sv, name='Mixed_6a')(x)
    x = InceptionC(128, conv, sv, name='Mixed_6b')(x)
    x = InceptionC(160, conv, sv, name='Mixed_6c')(x)
    x = InceptionC(160, conv, sv, name='Mixed_6d')(x)
    x = InceptionC(192, conv, sv, name='Mixed_6e')(x)
    x = InceptionD(conv, sv, name='Mixed_7a')(x)
    x = InceptionE(False, conv, sv, name='Mixed_7b')(x)
    x = InceptionE(True, conv, sv, name='Mixed_7c')(x)
    out = {'pool_3': jnp.mean(x, axis=(1, 2))}
    if self.with_logits:
      out['logits'] = _Head(self.fc_bias, name='fc')(out['pool_3'])
    return out


class _Head(nn.Module):
  """pool_3 @ kernel (+ bias): the 1008-way softmax logits."""
  use_bias: bool

  @nn.compact
  def __call__(self, x):
    kernel = self.param('kernel', nn.initializers.lecun_normal(),
                        (x.shape[-1], NUM_LOGITS))
    bias = self.param('bias', nn.initializers.zeros, (NUM_LOGITS,))
    y = jnp.dot(x, kernel, precision=HIGHEST)
    return y + bias if self.use_bias else y


def create_model(params, fc_bias: bool = False, winograd_min_pixels: int = 0,
                 shifted_view_pools: Optional[bool] = None) -> InceptionV3:
  """The module matching a params tree (head and BN gamma when present)."""
  flat = flax.traverse_util.flatten_dict(params, sep='/')
  return InceptionV3(with_logits='fc/kernel' in flat, fc_bias=fc_bias,
                     use_scale=any(k.endswith('/scale') for k in flat),
                     winograd_min_pixels=winograd_min_pixels,
                     shifted_view_pools=shifted_view_pools)


# -------- The Inception network's convolutions, in the fastest equivalent form
#
# `conv2d` is the one place that picks a convolution's form: a stride-1 1x1
# convolution is a matmul, which XLA:CPU runs ~1.5x faster than its
# convolution; large stride-1 3x3 maps may run by Winograd (`winograd`, on
# CPU: `backend.winograd_min_pixels`); everything else is XLA's convolution.
# All forms agree to float32 rounding.


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
