"""Transforms fixture: the official data transforms on fixed inputs.

`data_transform` / `inverse_data_transform` of ermongroup/ncsnv2
`datasets/__init__.py` with rescaled, logit_transform and neither; its
uniform and Gaussian dequantisation with the draws recorded; and the
official CelebA transform (torchvision CenterCrop(140), Resize(size),
ToTensor, as NCSN and NCSNv2 build it) on a fixed 178x218 uint8 image.
Where torchvision does not import, its semantics for PIL images are applied
with PIL itself (`celeba_method` says which): CenterCrop's corner is
(int(round((H - 140) / 2)), int(round((W - 140) / 2))), Resize(s) of an
image with W <= H gives (s, int(s * H / W)) (else the transpose) through
PIL's `Image.resize(..., BILINEAR)` (antialiased), ToTensor is k / 255 in
float32.

Output: transforms.npz.
"""

import os
import types

import numpy as np
from PIL import Image
import PIL
import torch
import torch_fixture_common as common

CELEBA_CROP, CELEBA_SIZES = 140, (64, 32)


def _config(**data):
  flags = dict(uniform_dequantization=False, gaussian_dequantization=False,
               rescaled=False, logit_transform=False)
  flags.update(data)
  return types.SimpleNamespace(data=types.SimpleNamespace(**flags))


def _nchw(x: np.ndarray) -> torch.Tensor:
  return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def face_like_image(rng) -> np.ndarray:
  """A fixed 218x178 (H x W) RGB uint8 image: smooth parts and fine detail.

  The fine checkerboard makes the resize's antialiasing matter.
  """
  h, w = 218, 178
  yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
  r = np.hypot((yy - 100) / 60, (xx - 89) / 45)
  img = np.stack([
      200 * np.exp(-r**2) + 30 * np.sin(xx / 7),
      120 + 80 * np.cos(yy / 23) * (r < 1.2),
      60 + 0.8 * xx,
  ], -1)
  img[150:200, 20:160] += 60 * ((yy[150:200, 20:160] + xx[150:200, 20:160])
                                % 2)[..., None]
  img += rng.normal(0, 4, img.shape)
  return np.clip(np.round(img), 0, 255).astype(np.uint8)


def _torchvision_celeba(image, size: int):
  import torchvision.transforms as tv  # pylint: disable=g-import-not-at-top
  crop = tv.CenterCrop(CELEBA_CROP)(image)
  out = tv.Compose([tv.CenterCrop(CELEBA_CROP), tv.Resize(size),
                    tv.ToTensor()])(image)
  return np.asarray(crop), common.nhwc(out)


def _pil_celeba(image, size: int):
  """torchvision's CenterCrop / Resize / ToTensor on a PIL image."""
  w, h = image.size
  top = int(round((h - CELEBA_CROP) / 2.0))
  left = int(round((w - CELEBA_CROP) / 2.0))
  crop = image.crop((left, top, left + CELEBA_CROP, top + CELEBA_CROP))
  cw, ch = crop.size
  if cw <= ch:
    new_w, new_h = size, int(size * ch / cw)
  else:
    new_w, new_h = int(size * cw / ch), size
  resized = crop.resize((new_w, new_h), Image.BILINEAR)
  out = np.asarray(resized).astype(np.float32) / np.float32(255)
  return np.asarray(crop), out


def record(repo: str, out_dir: str, seed: int) -> None:
  datasets = common.import_official(repo, 'datasets')
  rng = np.random.default_rng(seed)
  torch.manual_seed(seed)
  x = rng.integers(0, 256, (2, 8, 8, 3)).astype(np.float32) / 255.
  x[0, 0, 0], x[0, 0, 1] = 0.0, 1.0  # The ends of [0, 1].
  z = (3.0 * rng.standard_normal((2, 8, 8, 3))).astype(np.float32)
  out = dict(x=x, z=z, torch_version=torch.__version__,
             pil_version=PIL.__version__)
  for name, flags in (('plain', {}), ('rescaled', dict(rescaled=True)),
                      ('logit', dict(logit_transform=True))):
    config = _config(**flags)
    forward = datasets.data_transform(config, _nchw(x))
    out[f'{name}_forward'] = common.nhwc(forward)
    out[f'{name}_inverse'] = common.nhwc(
        datasets.inverse_data_transform(config, _nchw(z)))
    out[f'{name}_roundtrip'] = common.nhwc(
        datasets.inverse_data_transform(config, forward))
  for name, flag, draw in (('uniform', 'uniform_dequantization', 'rand_like'),
                           ('gaussian', 'gaussian_dequantization',
                            'randn_like')):
    draws = []
    undo = common.patch_torch(datasets, 'datasets', draws)
    try:
      result = datasets.data_transform(_config(**{flag: True}), _nchw(x))
    finally:
      undo()
    assert [d[1] for d in draws] == [draw], draws
    out[f'{name}_draw'] = common.nhwc(draws[0][2])
    out[f'{name}_dequantized'] = common.nhwc(result)
  image = face_like_image(rng)
  out['celeba_image'] = image
  celeba = _torchvision_celeba if common.has_torchvision() else _pil_celeba
  out['celeba_method'] = ('torchvision' if celeba is _torchvision_celeba
                          else 'PIL, with torchvision\'s semantics')
  for size in CELEBA_SIZES:
    out['celeba_crop'], out[f'celeba_{size}'] = celeba(
        Image.fromarray(image), size)
  out['celeba_crop_corner'] = np.array(
      [(image.shape[0] - CELEBA_CROP) // 2,
       (image.shape[1] - CELEBA_CROP) // 2], np.int32)
  common.save_npz(os.path.join(out_dir, 'transforms.npz'), out)
