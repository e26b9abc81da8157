"""Pure per-image transforms of the input pipeline: geometry and dequantisation.

Geometry follows the torchvision transforms of the reference NCSN/NCSNv2 code:
an optional centre crop of `crop_size` (CelebA: `CenterCrop(140)`), then
`Resize(image_size)` (the shorter side becomes `image_size`, bilinear) and a
centre square of `image_size`. `center_crop_and_resize` does this with
TensorFlow ops (antialiased bilinear, rounded back to uint8 as PIL's resize
does) for tfds data; `center_crop_and_resize_pil` does it with PIL for image
folders. Both keep resized images on the 256-level grid that
`uniform_dequantize` assumes.
"""

import numpy as np
from PIL import Image
import tensorflow as tf

# TensorFlow only feeds data, on the host; the accelerators' memory is JAX's.
# Global state: TensorFlow's visible devices (before it first uses them; a
# program that already ran TensorFlow on a GPU keeps its choice).
try:
  tf.config.set_visible_devices([], 'GPU')
except RuntimeError:
  pass


def resized_shape(height: int, width: int, size: int) -> tuple[int, int]:
  """torchvision `Resize(int)` output `(h, w)`: the shorter side is `size`."""
  new_h = size if height <= width else size * height // width
  new_w = size if width <= height else size * width // height
  return new_h, new_w


def center_offsets(height: int, width: int, crop_h: int,
                   crop_w: int) -> tuple[int, int]:
  """torchvision `CenterCrop` `(top, left)` (round half to even, as Python)."""
  return (int(round((height - crop_h) / 2.0)),
          int(round((width - crop_w) / 2.0)))


def _center_crop_tf(image: tf.Tensor, crop_h, crop_w) -> tf.Tensor:
  """Centre crop of an `[H, W, C]` image with torchvision's offsets."""
  shape = tf.shape(image)
  tf.debugging.assert_greater_equal(
      shape[:2], tf.constant([crop_h, crop_w]),
      message=f'image smaller than the {crop_h}x{crop_w} centre crop '
      '(config.data.crop_size / config.data.image_size)')
  # tf.round rounds half to even, as Python's round in torchvision does.
  top = tf.cast(tf.round(tf.cast(shape[0] - crop_h, tf.float32) / 2), tf.int32)
  left = tf.cast(tf.round(tf.cast(shape[1] - crop_w, tf.float32) / 2),
                 tf.int32)
  return image[top:top + crop_h, left:left + crop_w]


def center_crop_and_resize(image, image_size: int,
                           crop_size: int = 0) -> tf.Tensor:
  """uint8 `[H, W, C]` -> uint8 `[image_size, image_size, C]` (TF ops).

  Args:
    image: one uint8 image (a tensor or an array), any `H, W`.
    image_size: side S of the output square.
    crop_size: centre crop before resizing; 0 = none.

  Returns:
    The centre crop, resized (antialiased bilinear) so that its shorter side
    is S, its centre S x S square, rounded to uint8. An image that is already
    S x S (after the crop) is returned unchanged.
  """
  image = tf.convert_to_tensor(image)
  if crop_size:
    image = _center_crop_tf(image, crop_size, crop_size)
  if tuple(image.shape[:2]) != (image_size, image_size):
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    new_h = tf.where(height <= width, image_size, image_size * height // width)
    new_w = tf.where(width <= height, image_size, image_size * width // height)
    image = tf.image.resize(image, tf.stack([new_h, new_w]), 'bilinear',
                            antialias=True)
    image = _center_crop_tf(image, image_size, image_size)
    image = tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)
  return image


def center_crop_and_resize_pil(img: Image.Image, image_size: int,
                               crop_size: int = 0) -> Image.Image:
  """The same geometry on a PIL image (PIL bilinear resize).

  Args:
    img: an 8-bit PIL image (mode L or RGB), at least `crop_size` on each
      side.
    image_size: side S of the output square.
    crop_size: centre crop before resizing; 0 = none.

  Returns:
    An S x S PIL image of the same mode: torchvision's `CenterCrop(crop_size)`,
    `Resize(S)`, `CenterCrop(S)`.
  """
  if crop_size:
    top, left = center_offsets(img.height, img.width, crop_size, crop_size)
    img = img.crop((left, top, left + crop_size, top + crop_size))
  if (img.height, img.width) != (image_size, image_size):
    new_h, new_w = resized_shape(img.height, img.width, image_size)
    img = img.resize((new_w, new_h), Image.Resampling.BILINEAR)
    top, left = center_offsets(new_h, new_w, image_size, image_size)
    img = img.crop((left, top, left + image_size, top + image_size))
  return img


def to_8bit(img: Image.Image) -> Image.Image:
  """A PIL image with 8-bit samples; 16/32-bit grey becomes L by v / 257.

  PIL opens 16-bit grey PNGs as mode `I;16` (or `I`), and converting those to
  L clips every value above 255 to white. This maps 0..65535 onto 0..255
  (rounded). Other modes are returned unchanged (PIL already reduces 16-bit
  colour PNGs to 8 bits per sample).
  """
  if not img.mode.startswith('I'):
    return img
  values = np.asarray(img, dtype=np.float64)
  return Image.fromarray(
      np.clip(np.round(values / 257.0), 0, 255).astype(np.uint8), 'L')


def uniform_dequantize(x, u):
  """Uniform dequantisation x <- (255 x + u) / 256 (NCSNv2, CIFAR-10).

  Args:
    x: images in [0, 1] on the 256-level grid k / 255 (an array or tensor).
    u: noise of x's shape, U[0, 1) in the pipeline.

  Returns:
    `(255 x + u) / 256`, which lies in [k / 256, (k + 1) / 256) for x = k / 255.
  """
  return (255.0 * x + u) / 256.0


def gaussian_dequantize(x, n):
  """Gaussian dequantisation x <- x + 0.01 n (NCSNv2's second option).

  Args:
    x: images in [0, 1] (an array or tensor).
    n: noise of x's shape, N(0, 1) in the pipeline.

  Returns:
    `x + 0.01 n`.
  """
  return x + 0.01 * n
