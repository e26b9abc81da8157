"""Times the official PyTorch NCSNv2 (run by bench.py; needs torch).

Usage (from bench.py, or by hand):
  python bench/torch_reference.py --ncsnv2_repo=PATH --batch=16 --threads=2

Prints one JSON line: train and forward images/s of the official network
on the CPU with the given thread count, using the official DSM loss and
Adam, so bench.py can print ratios. Nothing here is imported by ncsn_jax.
"""

import argparse
import json
import sys
import time
import types


def namespace(d):
  return types.SimpleNamespace(**{
      k: namespace(v) if isinstance(v, dict) else v for k, v in d.items()})


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--ncsnv2_repo', required=True)
  parser.add_argument('--batch', type=int, default=16)
  parser.add_argument('--threads', type=int, default=2)
  parser.add_argument('--steps', type=int, default=5)
  parser.add_argument('--ngf', type=int, default=128)
  parser.add_argument('--image_size', type=int, default=32)
  args = parser.parse_args()
  sys.path.insert(0, args.ncsnv2_repo)
  import torch  # pylint: disable=g-import-not-at-top
  from models.ncsnv2 import NCSNv2  # pylint: disable=g-import-not-at-top
  from losses.dsm import anneal_dsm_score_estimation  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(args.threads)
  torch.manual_seed(0)
  config = namespace({
      'data': {'logit_transform': False, 'rescaled': False, 'channels': 3,
               'image_size': args.image_size},
      'model': {'ngf': args.ngf, 'num_classes': 232, 'sigma_begin': 50.0,
                'sigma_end': 0.01, 'sigma_dist': 'geometric',
                'normalization': 'InstanceNorm++', 'nonlinearity': 'elu'},
      'device': torch.device('cpu')})
  model = NCSNv2(config)
  opt = torch.optim.Adam(model.parameters(), lr=1e-4)
  x = torch.rand(args.batch, 3, args.image_size, args.image_size)

  def train_step():
    loss = anneal_dsm_score_estimation(model, x, model.sigmas, None, 2.0)
    opt.zero_grad()
    loss.backward()
    opt.step()

  y = torch.randint(0, 232, (args.batch,))

  def forward():
    with torch.no_grad():
      model(x, y)

  out = {'torch_version': torch.__version__, 'threads': args.threads}
  for name, fn in (('train', train_step), ('forward', forward)):
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(args.steps):
      fn()
    seconds = (time.perf_counter() - start) / args.steps
    out[f'{name}_images_per_s'] = args.batch / seconds
  print(json.dumps(out))


if __name__ == '__main__':
  main()
