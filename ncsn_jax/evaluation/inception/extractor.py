"""Inception weights -> one jitted, batched feature function of uint8 images.

`create_extractor` returns a host function: uint8 [N,H,W,C] -> {'pool_3':
[N,2048], 'logits': [N,1008] when the head is loaded}, run in fixed-size
batches (the last one zero-padded, the padding dropped) so that each input
shape compiles once. The backend-specific forms (micro-batches, Winograd,
shifted-view pools; see `ncsn_jax.backend`) are chosen by the platform of
the device it runs on.
"""

from typing import Callable, Optional

import flax
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from ncsn_jax import backend
from ncsn_jax import errors
from ncsn_jax.evaluation.inception import network
from ncsn_jax.evaluation.inception import preprocessing
from ncsn_jax.evaluation.inception import weight_files


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
    raise errors.ConfigError(
        f'{path}: parameters do not match InceptionV3 (missing '
        f'{missing}, unexpected {extra}, or shapes differ).')
  return params, meta


def get_features_fn(model: network.InceptionV3, mode: str = 'tf',
                    micro_batch: Optional[int] = None) -> Callable:
  """Pure fn(params, uint8 [B,H,W,C]) -> {'pool_3', ('logits')}, jittable.

  Args:
    model: the network (`network.create_model`).
    mode: preprocessing mode (`preprocessing.MODES`).
    micro_batch: run the network on this many images at a time, in a
      `lax.map` inside the one program (B must be a multiple). XLA:CPU's
      convolutions are faster per image at batch 1 (cache-resident
      activations); accelerators want None (the whole batch at once).
  """
  preprocessing.check_mode(mode)

  def features(params, images):
    return model.apply({'params': params},
                       preprocessing.preprocess(images, mode))

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
  `convolution.conv2d`): -1 lets `backend` pick by the device's platform,
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
      raise TypeError(f'images must be uint8 (see image_io.to_uint8), got '
                      f'{images.dtype}.')
    outs = [fn(params, jax.device_put(chunk, device))
            for chunk in _padded_batches(images, batch_size)]
    if not outs:
      raise ValueError('no images to extract features from.')
    n = images.shape[0]
    return {k: np.concatenate([np.asarray(o[k]) for o in outs])[:n]
            for k in outs[0]}

  return extract
