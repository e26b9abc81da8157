"""Inception weights -> one jitted, batched feature function of uint8 images.

`create_extractor` returns a host function: uint8 [N,H,W,C] -> {'pool_3':
[N,2048], 'logits': [N,1008] when the head is loaded}, run in fixed-size
batches (the last one zero-padded, the padding dropped) so that each input
shape compiles once. The backend-specific forms (micro-batches, Winograd,
shifted-view pools; see `ncsn_jax.backend`) are chosen by the platform of
the device it runs on.
"""

import dataclasses
from typing import Callable, Optional

import flax
from jax import lax
import jax
import jax.numpy as jnp
import numpy as np

from ncsn_jax import backend
from ncsn_jax import errors
from ncsn_jax.evaluation.inception import network
from ncsn_jax.evaluation.inception import weight_files
from ncsn_jax.models import layers


def load_params(path: str) -> tuple[dict, dict]:
  """Params tree and metadata of a canonical `.npz` (`weight_files`)."""
  flat, meta = weight_files.load_weights(path)
  params = flax.traverse_util.unflatten_dict(
      {tuple(k.split('/')): v for k, v in flat.items()})
  size = network.INPUT_SIZE
  expected = jax.eval_shape(lambda: network.create_model(params).init(
      jax.random.key(0), jnp.zeros((1, size, size, 3))))['params']
  want = flax.traverse_util.flatten_dict(expected, sep='/')
  got = {k: v.shape for k, v in flat.items()}
  if set(want) != set(got) or any(want[k].shape != got[k] for k in want):
    missing = sorted(set(want) - set(got))[:3]
    extra = sorted(set(got) - set(want))[:3]
    raise errors.InputError(
        f'{path}: parameters do not match InceptionV3 (missing '
        f'{missing}, unexpected {extra}, or shapes differ).')
  return params, meta


def get_features_fn(model: network.InceptionV3, mode: str = 'tf',
                    micro_batch: Optional[int] = None) -> Callable:
  """Pure fn(params, uint8 [B,H,W,C]) -> {'pool_3', ('logits')}, jittable.

  Args:
    model: the network (`network.create_model`).
    mode: preprocessing mode (`MODES`).
    micro_batch: run the network on this many images at a time, in a
      `lax.map` inside the one program (B must be a multiple). XLA:CPU's
      convolutions are faster per image at batch 1 (cache-resident
      activations); accelerators want None (the whole batch at once).
  """

  def features(params, images):
    return model.apply({'params': params},
                       preprocess(images, mode))

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


def _padded_batches(images: np.ndarray, batch_size: int):
  """Yields `batch_size` slices of `images`, the last one zero-padded."""
  for start in range(0, images.shape[0], batch_size):
    chunk = images[start:start + batch_size]
    if chunk.shape[0] < batch_size:
      pad = np.zeros((batch_size - chunk.shape[0],) + chunk.shape[1:],
                     np.uint8)
      chunk = np.concatenate([chunk, pad])
    yield chunk


def create_extractor(params, mode: str = 'tf', batch_size: int = 50,
                     fc_bias: bool = False,
                     micro_batch: Optional[int] = -1,
                     winograd_min_pixels: int = -1,
                     device: Optional[jax.Device] = None) -> Callable:
  """Host extractor: uint8 [N,H,W,C] -> {'pool_3': [N,2048] float32, ...}.

  Batches have a fixed size (`batch_size`; the last one is zero-padded and
  the padding dropped), so each input shape compiles once. 'logits' [N,1008]
  are returned when `params` hold the fc head. `micro_batch` (see
  `get_features_fn`) and `winograd_min_pixels` (see
  `network.conv2d`): -1 lets `backend` pick by the device's platform,
  which also picks the pools' form.
  """
  if batch_size < 1:
    raise ValueError(f'batch_size must be >= 1, got {batch_size}.')
  device = device or jax.local_devices()[0]
  if micro_batch == -1:
    micro_batch = backend.inception_micro_batch(device.platform)
  if winograd_min_pixels == -1:
    winograd_min_pixels = backend.winograd_min_pixels(device.platform)
  model = network.create_model(
      params, fc_bias, winograd_min_pixels,
      backend.shifted_view_pools(device.platform))
  fn = jax.jit(get_features_fn(model, mode, micro_batch))
  params = jax.device_put(params, device)

  def extract(images) -> dict[str, np.ndarray]:
    images = np.asarray(images)
    if images.dtype != np.uint8:
      raise TypeError(f'images must be uint8 (see outputs.to_uint8), got '
                      f'{images.dtype}.')
    outs = [fn(params, jax.device_put(chunk, device))
            for chunk in _padded_batches(images, batch_size)]
    if not outs:
      raise ValueError('no images to extract features from.')
    n = images.shape[0]
    return {k: np.concatenate([np.asarray(o[k]) for o in outs])[:n]
            for k in outs[0]}

  return extract


@dataclasses.dataclass(frozen=True)
class Extractor:
  """An Inception feature function and the weights it was made from.

  Call it on uint8 `[N,H,W,C]` images (C = 1 or 3, any size) for
  {'pool_3': float32 [N,2048], 'logits': [N,1008] (with the fc head)}.
  """
  fn: Callable[[np.ndarray], dict]
  preprocessing: str  # 'tf' or 'pytorch'
  path: str  # The converted weights file (`weight_files`).
  source: str  # What it was converted from.
  source_sha256: str
  trunk_sha256: str  # Of the weights up to pool_3: what FID depends on.
  has_head: bool  # Whether it has the 1008-way fc head (the IS needs it).

  def __call__(self, images) -> dict:
    return self.fn(images)


def load(path: str, preprocessing: str, batch_size: int) -> Extractor:
  """The `Extractor` of a converted weights file (`weight_files`)."""
  params, meta = load_params(path)
  return Extractor(
      fn=create_extractor(params, preprocessing, batch_size),
      preprocessing=preprocessing, path=path, source=meta['source'],
      source_sha256=meta['source_sha256'],
      trunk_sha256=meta['trunk_sha256'], has_head='fc' in params)


# --------------------------------------------------------------------------
# uint8 images of any size -> the FID Inception's input, two conventions
#
# * 'tf' (default): TTUR's FID and improved-gan's IS. TF1 `ResizeBilinear`
#   (legacy `align_corners=False`, `half_pixel_centers=False`: source = dst *
#   in/out, clamped to the last pixel) on the 0..255 scale, then
#   (x - 128) / 128.
# * 'pytorch': pytorch-fid and NCSNv2's `fast_fid`. `F.interpolate(bilinear,
#   align_corners=False)` (half-pixel centres, source clamped at 0), then
#   x / 127.5 - 1 (pytorch-fid's 2 (x / 255) - 1).
#
# Both resize by exact interpolation matrices (`layers.bilinear_matrix`);
# neither antialiases, as neither reference does (it matters only when
# shrinking images larger than 299 px).


# Preprocessing mode (config_checks.INCEPTION_PREPROCESSING) -> its bilinear
# sampling rule (`layers.bilinear_matrix`).
RESIZE_RULES = {'tf': 'asymmetric', 'pytorch': 'half_pixel'}


def _resize_matrix(in_size: int, mode: str):
  """float32 [299, in_size] resize matrix of a preprocessing mode."""
  return jnp.asarray(
      layers.bilinear_matrix(in_size, network.INPUT_SIZE, RESIZE_RULES[mode]),
      jnp.float32)


def preprocess(images, mode: str = 'tf'):
  """uint8 (or 0..255 float) [B,H,W,C] -> float32 [B,299,299,3] net input.

  C may be 1 (repeated to RGB) or 3. Resizing is on the 0..255 scale; then
  'tf' maps x -> (x - 128) / 128 and 'pytorch' x -> x / 127.5 - 1.
  """
  if images.ndim != 4 or images.shape[-1] not in (1, 3):
    raise ValueError(f'images must be [B,H,W,C] with C in (1, 3), got '
                     f'{images.shape}.')
  x = jnp.asarray(images).astype(jnp.float32)
  h, w = x.shape[1:3]
  size = network.INPUT_SIZE
  if (h, w) != (size, size):  # At 299 both modes are the identity.
    x = jnp.einsum('bhwc,pw->bhpc', x, _resize_matrix(w, mode),
                   precision=network.HIGHEST)
    x = jnp.einsum('bhpc,oh->bopc', x, _resize_matrix(h, mode),
                   precision=network.HIGHEST)
  if x.shape[-1] == 1:
    x = jnp.repeat(x, 3, axis=-1)
  if mode == 'tf':
    return (x - 128.0) / 128.0
  return x / 127.5 - 1.0
