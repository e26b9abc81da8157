"""Writes the PyTorch fixtures of the tests (checkpoints, parity records).

Dev-only: needs PyTorch and local checkouts of the two official repositories
(ermongroup/ncsn for NCSN v1, ermongroup/ncsnv2 for NCSNv2); the library and
its tests never import torch. It builds a tiny model of each kind with the
official classes, gives it random weights (norm parameters and embeddings
too), trains it for a few Adam steps on a denoising loss so the optimizer
state holds moments and the EMA shadow differs from the weights, and saves it
in the official checkpoint list layout:

  v1 (AnnealRunner):  [model_state_dict, optimizer_state_dict]
  v2 (NCSNRunner):    [model_state_dict, optimizer_state_dict, epoch, step,
                       ema_shadow]

with the DataParallel `module.` key prefix, once in the zip serialisation
(torch >= 1.6 default) and once in the legacy one (torch 1.5 default). The
reference outputs are computed in float64 from the float32 weights.

To stay small (~0.5 MB in all) only `ncsnv2_legacy.pth`, the closest
stand-in for an official NCSNv2 file (torch 1.5 wrote the legacy format and
kept Adam's `step` as a Python int), carries the Adam moments; in
`ncsnv2_zip.pth` the optimizer's per-parameter state is left empty, and the
v1 model is saved untrained, with a fresh optimizer (empty state).

  torchvenv/bin/python tools/make_torch_fixture.py \
      --ncsn_repo=PATH/TO/ncsn --ncsnv2_repo=PATH/TO/ncsnv2 [--parts=...]

The torch environment also needs torchvision, pyyaml, tqdm and the
project's requirements (the export check runs ncsn_jax).

Outputs in --out_dir (default tests/testdata/torch_checkpoints), by part:
  checkpoints: ncsn_zip.pth, ncsn_legacy.pth, ncsnv2_zip.pth,
    ncsnv2_legacy.pth, reference.npz (inputs NHWC, labels, outputs NHWC,
    and the sizes used).
  train: <kind>_train_init.pth, <kind>_train_draws.npz,
    <kind>_train_states.npz (torch_fixture_train.py).
  sampling: ncsn_sampler.pth, ncsnv2_sampler.pth, sampler_ncsn.npz,
    sampler_ncsnv2.npz, inpainting_ncsnv2.npz (torch_fixture_sampling.py).
  transforms: transforms.npz (torch_fixture_transforms.py).
  export: export_check.json (torch_fixture_export.py).
  Every part but checkpoints also updates parity_notes.json: what each
  array holds and the official conventions (torch_fixture_notes.py).
"""

import argparse
import copy
import os
import sys
import types

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))  # The repository root: ncsn_jax, configs.

# pylint: disable=g-import-not-at-top,g-bad-import-order
import torch_fixture_common as common
import torch_fixture_export
import torch_fixture_notes
import torch_fixture_sampling
import torch_fixture_train
import torch_fixture_transforms

NGF = 2  # Tiny width keeps the files small.
NUM_CLASSES = 4
SIGMA_BEGIN, SIGMA_END = 1.0, 0.01
V1_SIZE, V2_SIZE = 12, 8  # 12 px: MSF upsamples 6 -> 12 (align_corners).
BATCH = 4
TRAIN_STEPS = 3
LR = 1e-2
EMA_RATE = 0.9


def make_config(image_size: int):
  """The attribute tree the official model constructors read."""
  ns = types.SimpleNamespace
  return ns(
      data=ns(logit_transform=False, rescaled=False, channels=3,
              image_size=image_size),
      model=ns(ngf=NGF, num_classes=NUM_CLASSES, sigma_begin=SIGMA_BEGIN,
               sigma_end=SIGMA_END, sigma_dist='geometric',
               normalization='InstanceNorm++', nonlinearity='elu',
               spec_norm=False, ema=True, ema_rate=EMA_RATE),
      device='cpu')


def sigmas() -> torch.Tensor:
  return torch.tensor(np.exp(np.linspace(np.log(SIGMA_BEGIN),
                                         np.log(SIGMA_END), NUM_CLASSES)),
                      dtype=torch.float32)


def train_a_little(model, gen, image_size, ema=None):
  """A few Adam steps of annealed DSM, as the official runners do."""
  opt = torch.optim.Adam(model.parameters(), lr=LR, weight_decay=0.0,
                         betas=(0.9, 0.999), amsgrad=False, eps=1e-8)
  s = sigmas()
  for _ in range(TRAIN_STEPS):
    x = torch.rand((BATCH, 3, image_size, image_size), generator=gen)
    labels = torch.randint(0, NUM_CLASSES, (BATCH,), generator=gen)
    used = s[labels].view(-1, 1, 1, 1)
    z = torch.randn(x.shape, generator=gen)
    scores = model(x + used * z, labels)
    # ||s + z / sigma||^2 / 2 * sigma^2, summed over pixels.
    loss = (0.5 * ((scores * used + z) ** 2).sum(dim=(1, 2, 3))).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    if ema is not None:
      ema.update(model)
  return opt


def reference_output(model, x, y) -> np.ndarray:
  """Float64 forward pass of the float32 weights, NHWC."""
  m64 = copy.deepcopy(model).double().eval()
  # The official MSF block sums into torch.zeros(...) of the default dtype.
  default = torch.get_default_dtype()
  torch.set_default_dtype(torch.float64)
  try:
    with torch.no_grad():
      out = m64(torch.from_numpy(x.transpose(0, 3, 1, 2)).double(),
                torch.from_numpy(y).long())
  finally:
    torch.set_default_dtype(default)
  assert out.dtype == torch.float64
  return out.numpy().transpose(0, 2, 3, 1)


def save_both(states, out_dir: str, stem: str) -> None:
  torch.save(states, os.path.join(out_dir, f'{stem}_zip.pth'))
  torch.save(states, os.path.join(out_dir, f'{stem}_legacy.pth'),
             _use_new_zipfile_serialization=False)


def write_checkpoints(args):
  """The reference checkpoints of tests/checkpoint_import_test.py."""
  torch.manual_seed(0)
  gen = torch.Generator().manual_seed(2019)
  ref = {}

  # NCSN v1: CondRefineNetDilated, [model, optimizer].
  v1 = common.import_official(args.ncsn_repo,
                            'models.cond_refinenet_dilated')
  model = v1.CondRefineNetDilated(make_config(V1_SIZE))
  common.perturb_norms(model, gen)
  model = torch.nn.DataParallel(model)
  opt = torch.optim.Adam(model.parameters(), lr=LR, eps=1e-8)
  x = torch.rand((BATCH, V1_SIZE, V1_SIZE, 3), generator=gen).numpy()
  y = np.array([3, 0, 2, 1], np.int32)
  ref.update(v1_x=x, v1_y=y, v1_out=reference_output(model.module, x, y))
  save_both([model.state_dict(), opt.state_dict()], args.out_dir, 'ncsn')

  # NCSNv2: [model, optimizer, epoch, step, ema_shadow].
  v2 = common.import_official(args.ncsnv2_repo, 'models.ncsnv2')
  ema_lib = common.import_official(args.ncsnv2_repo, 'models.ema')
  model = v2.NCSNv2(make_config(V2_SIZE))
  common.perturb_norms(model, gen)
  model = torch.nn.DataParallel(model)
  ema = ema_lib.EMAHelper(mu=EMA_RATE)
  ema.register(model)
  opt = train_a_little(model, gen, V2_SIZE, ema)
  x = torch.rand((BATCH, V2_SIZE, V2_SIZE, 3), generator=gen).numpy()
  y = np.array([0, 1, 2, 3], np.int32)
  ref.update(v2_x=x, v2_y=y, v2_out=reference_output(model.module, x, y),
             v2_ema_out=reference_output(ema.ema_copy(model).module, x, y))
  opt_state = opt.state_dict()
  for entry in opt_state['state'].values():  # torch 1.5: step is an int.
    entry['step'] = int(entry['step'])
  states = [model.state_dict(), opt_state, 1, TRAIN_STEPS, ema.state_dict()]
  torch.save(states, os.path.join(args.out_dir, 'ncsnv2_legacy.pth'),
             _use_new_zipfile_serialization=False)
  states[1] = dict(opt_state, state={})
  torch.save(states, os.path.join(args.out_dir, 'ncsnv2_zip.pth'))

  ref.update(ngf=NGF, num_classes=NUM_CLASSES, sigma_begin=SIGMA_BEGIN,
             sigma_end=SIGMA_END, v1_image_size=V1_SIZE,
             v2_image_size=V2_SIZE, v2_step=TRAIN_STEPS,
             torch_version=torch.__version__)
  np.savez_compressed(os.path.join(args.out_dir, 'reference.npz'), **ref)


PARTS = ('checkpoints', 'train', 'sampling', 'transforms', 'export')


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--ncsn_repo', required=True,
                      help='checkout of ermongroup/ncsn (v1)')
  parser.add_argument('--ncsnv2_repo', required=True,
                      help='checkout of ermongroup/ncsnv2')
  parser.add_argument('--out_dir', default=os.path.join(
      os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'tests',
      'testdata', 'torch_checkpoints'))
  parser.add_argument('--parts', default=','.join(PARTS),
                      help=f'comma-separated subset of {",".join(PARTS)}')
  args = parser.parse_args()
  parts = args.parts.split(',')
  unknown = set(parts) - set(PARTS)
  if unknown:
    parser.error(f'unknown --parts {sorted(unknown)}')
  os.makedirs(args.out_dir, exist_ok=True)
  if 'checkpoints' in parts:
    write_checkpoints(args)
  if 'train' in parts:
    torch_fixture_train.record('ncsnv2', args.ncsnv2_repo, args.out_dir, 2020)
    torch_fixture_train.record('ncsn', args.ncsn_repo, args.out_dir, 2019)
  if 'sampling' in parts:
    torch_fixture_sampling.record(args.ncsn_repo, args.ncsnv2_repo,
                                  args.out_dir, 11)
  if 'transforms' in parts:
    torch_fixture_transforms.record(args.ncsnv2_repo, args.out_dir, 5)
  if 'export' in parts:
    torch_fixture_export.record(args.ncsn_repo, args.ncsnv2_repo,
                                args.out_dir)
  if set(parts) - {'checkpoints'}:
    torch_fixture_notes.write(args.out_dir)
  for name in sorted(os.listdir(args.out_dir)):
    print(name, os.path.getsize(os.path.join(args.out_dir, name)))


if __name__ == '__main__':
  main()
