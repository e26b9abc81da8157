"""The official PyTorch NCSNv2 as a timing worker (run by bench.py).

  python bench/torch_reference.py --ncsnv2_repo=PATH --batch=16 --threads=2 \
      [--device=cuda]

Builds the official `models.ncsnv2.NCSNv2` (CIFAR-10 settings) from a local
checkout, with Adam and the official `anneal_dsm_score_estimation` loss,
prints one JSON line (torch version, device, threads), then serves
"train N" / "forward N" lines on stdin with the seconds N steps took
(`interleave.serve`), so warm-up is paid once. Nothing in ncsn_jax imports
this file; torch is never a dependency.
"""

import argparse
import os
import sys
import types

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import interleave  # pylint: disable=g-import-not-at-top


def namespace(d):
  return types.SimpleNamespace(**{
      k: namespace(v) if isinstance(v, dict) else v for k, v in d.items()
  })


def build(args):
  """(tasks, info, sync) for `interleave.serve`."""
  sys.path.insert(0, args.ncsnv2_repo)
  import torch  # pylint: disable=g-import-not-at-top
  from models.ncsnv2 import NCSNv2  # pylint: disable=g-import-not-at-top
  from losses.dsm import anneal_dsm_score_estimation  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(args.threads)
  torch.manual_seed(0)
  device = torch.device(args.device)
  if device.type == 'cuda':
    torch.backends.cudnn.benchmark = True  # As the official main.py.
  config = namespace({
      'data': {
          'logit_transform': False,
          'rescaled': False,
          'channels': 3,
          'image_size': args.image_size
      },
      'model': {
          'ngf': args.ngf,
          'num_classes': 232,
          'sigma_begin': 50.0,
          'sigma_end': 0.01,
          'sigma_dist': 'geometric',
          'normalization': 'InstanceNorm++',
          'nonlinearity': 'elu'
      },
      'device': device
  })
  model = NCSNv2(config).to(device)
  opt = torch.optim.Adam(model.parameters(), lr=1e-4)
  shape = (args.batch, 3, args.image_size, args.image_size)
  x = torch.rand(shape, device=device)
  y = torch.randint(0, 232, (args.batch,), device=device)

  def train():
    loss = anneal_dsm_score_estimation(model, x, model.sigmas, None, 2.0)
    opt.zero_grad()
    loss.backward()
    opt.step()

  def forward():
    with torch.no_grad():
      model(x, y)

  sync = torch.cuda.synchronize if device.type == 'cuda' else lambda: None
  info = {
      'torch_version': torch.__version__,
      'device': str(device),
      'threads': args.threads,
      'batch': args.batch
  }
  if device.type == 'cuda':
    info['device_name'] = torch.cuda.get_device_name(device)
  return {'train': train, 'forward': forward}, info, sync


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--ncsnv2_repo', required=True)
  parser.add_argument('--batch', type=int, default=16)
  parser.add_argument('--threads', type=int, default=2)
  parser.add_argument('--device', default='cpu')
  parser.add_argument('--ngf', type=int, default=128)
  parser.add_argument('--image_size', type=int, default=32)
  tasks, info, sync = build(parser.parse_args())
  interleave.serve(tasks, info, sync)


if __name__ == '__main__':
  main()
