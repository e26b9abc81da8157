"""InceptionV3, FID variant ("inception-2015-12-05"), in flax.linen, NHWC.

The network of TTUR's FID, OpenAI improved-gan's Inception Score and
pytorch-fid, with the TF graph's quirks (EVALUATION.md §1):

* every conv is bias-free and followed by inference BN *without gamma*
  (beta, moving mean and variance; eps 1e-3) and a ReLU;
* the pool branches of blocks A, C and E_1 (`Mixed_7b`) average 3x3 windows
  with padding 1 *not counted*; E_2 (`Mixed_7c`) max-pools instead;
* pool_3 is the mean of the final 8x8 map: [B,2048]; the optional 1008-way
  `fc` head gives logits (improved-gan multiplies by the weights only, no
  bias: `fc_bias=False`).

Parameter names are torchvision's (`Mixed_6b/branch7x7dbl_4/kernel`), so the
pytorch-fid state dict converts by a transpose (`inception_weights`).

Inputs are float32 [B,299,299,3] in the network's range; `preprocess` gets
them from uint8 images of any size with exact interpolation matrices:

* 'tf' (default): TTUR / improved-gan. TF1 `ResizeBilinear` (legacy
  `align_corners=False`, `half_pixel_centers=False`: source = dst * in/out,
  clamped to the last pixel) on the 0..255 scale, then (x - 128) / 128.
* 'pytorch': pytorch-fid / NCSNv2 `fast_fid`. `F.interpolate(bilinear,
  align_corners=False)` (half-pixel centres, source clamped at 0), then
  x / 127.5 - 1 (pytorch-fid's 2 (x / 255) - 1).

Neither reference antialiases, so neither does this module (it matters only
when shrinking images larger than 299 px).

`create_extractor` returns a host function: uint8 [N,H,W,C] -> {'pool_3':
[N,2048], 'logits': [N,1008] when the head is loaded}, run in fixed-size
batches (the last one padded) so that nothing recompiles.
"""

import functools
from typing import Callable, Optional

import flax
import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from ncsn_jax import backend
from ncsn_jax import errors
from ncsn_jax.evaluation.inception import weight_files
from ncsn_jax.evaluation.inception import winograd
from ncsn_jax.models import pooling

INPUT_SIZE = 299
POOL3_DIM = 2048
NUM_LOGITS = 1008
PREPROCESSING_MODES = ('tf', 'pytorch')
QUANTISATION = {
    'round': 'uint8 = floor(clip(x, 0, 1) * 255 + 0.5) (torchvision '
             'save_image / PNG; NCSN, NCSNv2 repositories)',
    'truncate': 'uint8 = floor(clip(x * 255, 0, 255)) (score_sde / tf-gan)',
}

_HIGHEST = lax.Precision.HIGHEST


def _pad(padding):
  """((top, bottom), (left, right)) from symmetric per-axis padding."""
  return ((padding[0], padding[0]), (padding[1], padding[1]))


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
    winograd_min_pixels: see `conv2d` (0: XLA's convolution always).
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
      return jnp.dot(x, kernel[0, 0], precision=_HIGHEST)
    out_pixels = ((x.shape[1] + 2 * padding[0] - kh + 1) *
                  (x.shape[2] + 2 * padding[1] - kw + 1))
    if (kh, kw) == (3, 3) and 0 < winograd_min_pixels <= out_pixels:
      return winograd.conv3x3(x, kernel, padding, precision=_HIGHEST)
  return lax.conv_general_dilated(
      x, kernel, strides, _pad(padding),
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'), precision=_HIGHEST)


def fused_1x1(x, convs):
  """Parallel 1x1 `ConvBN`s of one input as a single matmul: list of outputs.

  Each output column depends on its own kernel column only, so this equals
  calling the convs one by one (up to float summation order, ~1e-7); XLA:CPU
  runs one wide matmul faster than several narrow ones.
  """
  ps = [conv(x, params_only=True) for conv in convs]
  cat = lambda k: jnp.concatenate([p[k] for p in ps], axis=-1)
  kernel = jnp.concatenate([p['kernel'][0, 0] for p in ps], axis=-1)
  y = jnp.dot(x, kernel, precision=_HIGHEST)
  y = nn.relu((y - cat('mean')) * cat('inv') + cat('bias'))
  ends = np.cumsum([conv.features for conv in convs])
  return jnp.split(y, ends[:-1], axis=-1)


def avg_pool_3x3(x):
  """3x3 stride-1 average pool, padding 1 not counted: [B,H,W,C]."""
  return pooling.avg_pool(x, 3, padding=1, count_include_pad=False)


def max_pool_3x3(x, stride: int = 1):
  """3x3 max pool: stride 1 with padding 1 (-inf), or stride 2 VALID."""
  return pooling.max_pool(x, 3, stride, padding=1 if stride == 1 else 0)


class InceptionA(nn.Module):
  """Mixed_5b/c/d: 35x35 block, pool branch avg (padding not counted)."""
  pool_features: int
  conv: Callable[..., nn.Module] = ConvBN  # `ConvBN` with shared settings.

  @nn.compact
  def __call__(self, x):
    conv = self.conv
    b1, b5, b3 = fused_1x1(x, [conv(64, name='branch1x1'),
                               conv(48, name='branch5x5_1'),
                               conv(64, name='branch3x3dbl_1')])
    b5 = conv(64, (5, 5), padding=(2, 2), name='branch5x5_2')(b5)
    b3 = conv(96, (3, 3), padding=(1, 1), name='branch3x3dbl_2')(b3)
    b3 = conv(96, (3, 3), padding=(1, 1), name='branch3x3dbl_3')(b3)
    bp = conv(self.pool_features, name='branch_pool')(avg_pool_3x3(x))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
  """Mixed_6a: 35x35 -> 17x17 reduction."""
  conv: Callable[..., nn.Module] = ConvBN  # `ConvBN` with shared settings.

  @nn.compact
  def __call__(self, x):
    conv = self.conv
    b3 = conv(384, (3, 3), (2, 2), name='branch3x3')(x)
    bd = conv(64, name='branch3x3dbl_1')(x)
    bd = conv(96, (3, 3), padding=(1, 1), name='branch3x3dbl_2')(bd)
    bd = conv(96, (3, 3), (2, 2), name='branch3x3dbl_3')(bd)
    return jnp.concatenate([b3, bd, max_pool_3x3(x, 2)], axis=-1)


class InceptionC(nn.Module):
  """Mixed_6b..6e: 17x17 block with factorised 7x7 convs."""
  channels_7x7: int
  conv: Callable[..., nn.Module] = ConvBN  # `ConvBN` with shared settings.

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
    bp = conv(192, name='branch_pool')(avg_pool_3x3(x))
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
  """Mixed_7a: 17x17 -> 8x8 reduction."""
  conv: Callable[..., nn.Module] = ConvBN  # `ConvBN` with shared settings.

  @nn.compact
  def __call__(self, x):
    conv = self.conv
    b3, b7 = fused_1x1(x, [conv(192, name='branch3x3_1'),
                           conv(192, name='branch7x7x3_1')])
    b3 = conv(320, (3, 3), (2, 2), name='branch3x3_2')(b3)
    b7 = conv(192, (1, 7), padding=(0, 3), name='branch7x7x3_2')(b7)
    b7 = conv(192, (7, 1), padding=(3, 0), name='branch7x7x3_3')(b7)
    b7 = conv(192, (3, 3), (2, 2), name='branch7x7x3_4')(b7)
    return jnp.concatenate([b3, b7, max_pool_3x3(x, 2)], axis=-1)


class InceptionE(nn.Module):
  """Mixed_7b (avg pool branch, padding not counted) and 7c (max pool)."""
  max_pool: bool
  conv: Callable[..., nn.Module] = ConvBN  # `ConvBN` with shared settings.

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
    pooled = max_pool_3x3(x) if self.max_pool else avg_pool_3x3(x)
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
      output pixels per image run by Winograd (`conv2d`); 0: none.
  """
  with_logits: bool = False
  fc_bias: bool = False
  use_scale: bool = False
  winograd_min_pixels: int = 0

  @nn.compact
  def __call__(self, x):
    """Returns {'pool_3': [B,2048]} (+ 'logits': [B,1008])."""
    if x.shape[1:] != (INPUT_SIZE, INPUT_SIZE, 3):
      raise ValueError(f'InceptionV3 takes [B,{INPUT_SIZE},{INPUT_SIZE},3] '
                       f'inputs (use preprocess), got {x.shape}.')
    conv = functools.partial(ConvBN, use_scale=self.use_scale,
                             winograd_min_pixels=self.winograd_min_pixels)
    x = conv(32, (3, 3), (2, 2), name='Conv2d_1a_3x3')(x)
    x = conv(32, (3, 3), name='Conv2d_2a_3x3')(x)
    x = conv(64, (3, 3), padding=(1, 1), name='Conv2d_2b_3x3')(x)
    x = max_pool_3x3(x, 2)
    x = conv(80, name='Conv2d_3b_1x1')(x)
    x = conv(192, (3, 3), name='Conv2d_4a_3x3')(x)
    x = max_pool_3x3(x, 2)
    x = InceptionA(32, conv, name='Mixed_5b')(x)
    x = InceptionA(64, conv, name='Mixed_5c')(x)
    x = InceptionA(64, conv, name='Mixed_5d')(x)
    x = InceptionB(conv, name='Mixed_6a')(x)
    x = InceptionC(128, conv, name='Mixed_6b')(x)
    x = InceptionC(160, conv, name='Mixed_6c')(x)
    x = InceptionC(160, conv, name='Mixed_6d')(x)
    x = InceptionC(192, conv, name='Mixed_6e')(x)
    x = InceptionD(conv, name='Mixed_7a')(x)
    x = InceptionE(False, conv, name='Mixed_7b')(x)
    x = InceptionE(True, conv, name='Mixed_7c')(x)
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
    y = jnp.dot(x, kernel, precision=_HIGHEST)
    return y + bias if self.use_bias else y


# ------------------------------------------------------------ preprocessing


def resize_matrix(in_size: int, out_size: int = INPUT_SIZE,
                  mode: str = 'tf') -> np.ndarray:
  """Bilinear interpolation matrix [out_size, in_size], float64 weights.

  Row i holds the two weights of output pixel i. Source coordinates are
  computed in float32, as both references do:
  'tf': src = i * (in / out) (TF1 legacy); 'pytorch': src = max(0, (i + 0.5)
  * (in / out) - 0.5). Then i0 = floor(src), i1 = min(i0 + 1, in - 1),
  weights (1 - f, f) with f = src - i0.
  """
  if mode not in PREPROCESSING_MODES:
    raise errors.ConfigError(
        f'preprocessing mode {mode!r} is unknown; use one of '
        f'{PREPROCESSING_MODES}.')
  scale = np.float32(in_size) / np.float32(out_size)
  dst = np.arange(out_size, dtype=np.float32)
  if mode == 'tf':
    src = dst * scale
  else:
    src = np.maximum((dst + np.float32(0.5)) * scale - np.float32(0.5),
                     np.float32(0))
  i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
  i1 = np.minimum(i0 + 1, in_size - 1)
  frac = (src - i0.astype(np.float32)).astype(np.float64)
  m = np.zeros((out_size, in_size), np.float64)
  rows = np.arange(out_size)
  np.add.at(m, (rows, i0), 1.0 - frac)
  np.add.at(m, (rows, i1), frac)
  return m


def preprocess(images, mode: str = 'tf'):
  """uint8 (or 0..255 float) [B,H,W,C] -> float32 [B,299,299,3] net input.

  C may be 1 (repeated to RGB) or 3. Resizing uses `resize_matrix` on the
  0..255 scale; then 'tf' maps x -> (x - 128) / 128 and 'pytorch' x -> x /
  127.5 - 1.
  """
  if mode not in PREPROCESSING_MODES:
    raise errors.ConfigError(
        f'preprocessing mode {mode!r} is unknown; use one of '
        f'{PREPROCESSING_MODES}.')
  if images.ndim != 4 or images.shape[-1] not in (1, 3):
    raise ValueError(f'images must be [B,H,W,C] with C in (1, 3), got '
                     f'{images.shape}.')
  x = jnp.asarray(images).astype(jnp.float32)
  h, w = x.shape[1:3]
  if (h, w) != (INPUT_SIZE, INPUT_SIZE):  # At 299 both modes are identity.
    rh = jnp.asarray(resize_matrix(h, INPUT_SIZE, mode), jnp.float32)
    rw = jnp.asarray(resize_matrix(w, INPUT_SIZE, mode), jnp.float32)
    x = jnp.einsum('bhwc,pw->bhpc', x, rw, precision=_HIGHEST)
    x = jnp.einsum('bhpc,oh->bopc', x, rh, precision=_HIGHEST)
  if x.shape[-1] == 1:
    x = jnp.repeat(x, 3, axis=-1)
  if mode == 'tf':
    return (x - 128.0) / 128.0
  return x / 127.5 - 1.0


def quantize(images, method: str = 'round') -> np.ndarray:
  """Float samples in [0, 1] -> uint8 (see `QUANTISATION`); NaN -> 0."""
  x = np.nan_to_num(np.asarray(images, np.float32), nan=0.0)
  if method == 'round':
    return np.floor(np.clip(x, 0, 1) * np.float32(255) +
                    np.float32(0.5)).astype(np.uint8)
  if method == 'truncate':
    return np.clip(x * np.float32(255), 0, 255).astype(np.uint8)
  raise ValueError(f'quantisation {method!r} is unknown; use one of '
                   f'{tuple(QUANTISATION)}.')


# ---------------------------------------------------------------- loading


def create_model(params, fc_bias: bool = False,
                 winograd_min_pixels: int = 0) -> InceptionV3:
  """The module matching a params tree (head and BN gamma when present)."""
  flat = flax.traverse_util.flatten_dict(params, sep='/')
  return InceptionV3(with_logits='fc/kernel' in flat, fc_bias=fc_bias,
                     use_scale=any(k.endswith('/scale') for k in flat),
                     winograd_min_pixels=winograd_min_pixels)


def load_params(path: str) -> tuple[dict, dict]:
  """Params tree and metadata of a canonical `.npz` (`inception_weights`)."""
  flat, meta = weight_files.load_weights(path)
  params = flax.traverse_util.unflatten_dict(
      {tuple(k.split('/')): v for k, v in flat.items()})
  expected = jax.eval_shape(lambda: create_model(params).init(
      jax.random.key(0), jnp.zeros((1, INPUT_SIZE, INPUT_SIZE, 3))))['params']
  want = flax.traverse_util.flatten_dict(expected, sep='/')
  got = {k: v.shape for k, v in flat.items()}
  if set(want) != set(got) or any(want[k].shape != got[k] for k in want):
    missing = sorted(set(want) - set(got))[:3]
    extra = sorted(set(got) - set(want))[:3]
    raise errors.ConfigError(
        f'{path}: parameters do not match InceptionV3 (missing '
        f'{missing}, unexpected {extra}, or shapes differ).')
  return params, meta


def get_features_fn(model: InceptionV3, mode: str = 'tf',
                    micro_batch: Optional[int] = None) -> Callable:
  """Pure fn(params, uint8 [B,H,W,C]) -> {'pool_3', ('logits')}, jittable.

  Args:
    model: the network (`create_model`).
    mode: preprocessing mode (`preprocess`).
    micro_batch: run the network on this many images at a time, in a
      `lax.map` inside the one program (B must be a multiple). XLA:CPU's
      convolutions are faster per image at batch 1 (cache-resident
      activations); accelerators want None (the whole batch at once).
  """
  if mode not in PREPROCESSING_MODES:
    raise errors.ConfigError(
        f'preprocessing mode {mode!r} is unknown; use one of '
        f'{PREPROCESSING_MODES}.')

  def features(params, images):
    return model.apply({'params': params}, preprocess(images, mode))

  if not micro_batch:
    return features

  def mapped(params, images):
    b = images.shape[0]
    if b % micro_batch:
      raise ValueError(f'batch {b} is not a multiple of micro_batch '
                       f'{micro_batch}.')
    chunks = images.reshape((b // micro_batch, micro_batch) + images.shape[1:])
    out = lax.map(lambda x: features(params, x), chunks)
    return jax.tree.map(lambda y: y.reshape((b,) + y.shape[2:]), out)

  return mapped


def create_extractor(params, mode: str = 'tf', batch_size: int = 50,
                     fc_bias: bool = False,
                     micro_batch: Optional[int] = -1,
                     winograd_min_pixels: int = -1,
                     device: Optional[jax.Device] = None) -> Callable:
  """Host extractor: uint8 [N,H,W,C] -> {'pool_3': [N,2048] float32, ...}.

  Batches have a fixed size (`batch_size`; the last one is zero-padded and
  the padding dropped), so each input shape compiles once. 'logits' [N,1008]
  are returned when `params` hold the fc head. `micro_batch` (see
  `get_features_fn`): -1 picks 1 on CPU and None elsewhere.
  `winograd_min_pixels` (see `conv2d`): -1 lets `backend` pick by the
  device's platform.
  """
  if batch_size < 1:
    raise ValueError(f'batch_size must be >= 1, got {batch_size}.')
  device = device or jax.local_devices()[0]
  if micro_batch == -1:
    micro_batch = backend.inception_micro_batch(device.platform)
  if winograd_min_pixels == -1:
    winograd_min_pixels = backend.winograd_min_pixels(device.platform)
  model = create_model(params, fc_bias, winograd_min_pixels)
  fn = jax.jit(get_features_fn(model, mode, micro_batch))
  params = jax.device_put(params, device)

  def extract(images) -> dict[str, np.ndarray]:
    images = np.asarray(images)
    if images.dtype != np.uint8:
      raise TypeError(f'images must be uint8 (see quantize), got '
                      f'{images.dtype}.')
    n = images.shape[0]
    outs = []
    for start in range(0, n, batch_size):
      chunk = images[start:start + batch_size]
      if chunk.shape[0] < batch_size:
        pad = np.zeros((batch_size - chunk.shape[0],) + chunk.shape[1:],
                       np.uint8)
        chunk = np.concatenate([chunk, pad])
      outs.append(fn(params, jax.device_put(chunk, device)))
    if not outs:
      raise ValueError('no images to extract features from.')
    return {k: np.concatenate([np.asarray(o[k]) for o in outs])[:n]
            for k in outs[0]}

  extract.jitted = fn  # For tests: one compiled program per input shape.
  return extract
