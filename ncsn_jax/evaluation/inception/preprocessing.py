"""uint8 images of any size -> the FID Inception's input, two conventions.

* 'tf' (default): TTUR's FID and improved-gan's IS. TF1 `ResizeBilinear`
  (legacy `align_corners=False`, `half_pixel_centers=False`: source = dst *
  in/out, clamped to the last pixel) on the 0..255 scale, then
  (x - 128) / 128.
* 'pytorch': pytorch-fid and NCSNv2's `fast_fid`. `F.interpolate(bilinear,
  align_corners=False)` (half-pixel centres, source clamped at 0), then
  x / 127.5 - 1 (pytorch-fid's 2 (x / 255) - 1).

Both resize by exact interpolation matrices (`bilinear`); neither
antialiases, as neither reference does (it matters only when shrinking
images larger than 299 px).
"""

import jax.numpy as jnp

from ncsn_jax import bilinear
from ncsn_jax import errors
from ncsn_jax.evaluation.inception import convolution
from ncsn_jax.evaluation.inception import network

MODES = ('tf', 'pytorch')
# Preprocessing mode -> its `bilinear` sampling rule.
RESIZE_RULES = {'tf': 'asymmetric', 'pytorch': 'half_pixel'}


def check_mode(mode: str) -> None:
  """Raises ConfigError unless `mode` is one of `MODES`."""
  if mode not in MODES:
    raise errors.ConfigError(
        f'config.eval.inception_preprocessing={mode!r} is unknown; use one '
        f'of {MODES}.')


def _resize_matrix(in_size: int, mode: str):
  """float32 [299, in_size] resize matrix of a preprocessing mode."""
  check_mode(mode)
  return jnp.asarray(
      bilinear.matrix(in_size, network.INPUT_SIZE, RESIZE_RULES[mode]),
      jnp.float32)


def preprocess(images, mode: str = 'tf'):
  """uint8 (or 0..255 float) [B,H,W,C] -> float32 [B,299,299,3] net input.

  C may be 1 (repeated to RGB) or 3. Resizing is on the 0..255 scale; then
  'tf' maps x -> (x - 128) / 128 and 'pytorch' x -> x / 127.5 - 1.
  """
  check_mode(mode)
  if images.ndim != 4 or images.shape[-1] not in (1, 3):
    raise ValueError(f'images must be [B,H,W,C] with C in (1, 3), got '
                     f'{images.shape}.')
  x = jnp.asarray(images).astype(jnp.float32)
  h, w = x.shape[1:3]
  size = network.INPUT_SIZE
  if (h, w) != (size, size):  # At 299 both modes are the identity.
    x = jnp.einsum('bhwc,pw->bhpc', x, _resize_matrix(w, mode),
                   precision=convolution.HIGHEST)
    x = jnp.einsum('bhpc,oh->bopc', x, _resize_matrix(h, mode),
                   precision=convolution.HIGHEST)
  if x.shape[-1] == 1:
    x = jnp.repeat(x, 3, axis=-1)
  if mode == 'tf':
    return (x - 128.0) / 128.0
  return x / 127.5 - 1.0
