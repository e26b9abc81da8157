"""Compile time of the train step with JAX's persistent compilation cache.

  python -m bench.compile_cache [--config=configs/digits.py] [--steps=2]
  python -m bench.compile_cache --program=step [--batch=128]

Starts the same training twice, each in a fresh Python process, with the
same new cache folder (`--cache_dir`, default a temporary one): the first
start compiles and fills the cache, the second loads from it. Inside each
process `jax.monitoring` listeners record every backend compilation
('/jax/core/compile/backend_compile_duration', which on a cache hit is the
time to load the program) and the cache's hit and miss events. The train
step's compile time is what the backend spent during the first call of the
`p_train` that `step.make_train_step` returns (wrapped in the child
process only). The script prints it for both starts, their ratio, and the
totals.

`--program=run` (default) runs `run.py --mode=train` for a few steps
(`--steps`) with `--compilation_cache_dir` given explicitly, so it needs
what run.py needs (TensorFlow, ml_collections, ...). `--program=step`
needs only jax, flax, optax and numpy: it builds the CIFAR-10 NCSNv2
config (`plain_config`; `--batch`, `--ngf`, `--image_size`, `--dtype`),
`make_train_step`'s program, and runs it once (what the loop's first step
compiles).
"""

import argparse
import collections
import datetime
import json
import os
import platform
import runpy
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMPILE_EVENT = '/jax/core/compile/backend_compile_duration'


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--program', choices=('run', 'step'), default='run')
  p.add_argument('--config', default='configs/digits.py',
                 help='run: the config file given to run.py.')
  p.add_argument('--steps', type=int, default=2, help='run: train steps.')
  p.add_argument('--override', action='append', default=[],
                 help='run: more run.py flags, e.g. --config.model.ngf=8.')
  p.add_argument('--batch', type=int, default=128, help='step: batch.')
  p.add_argument('--ngf', type=int, default=0, help='step: 0 = 128.')
  p.add_argument('--image_size', type=int, default=0, help='step: 0 = 32.')
  p.add_argument('--dtype', default='float32', help='step: model.dtype.')
  p.add_argument('--cache_dir', default='',
                 help='Cache folder; must not exist yet (default: a new '
                 'temporary one).')
  p.add_argument('--json', default='')
  p.add_argument('--child', default='', help=argparse.SUPPRESS)
  return p.parse_args(argv)


class Recorder:
  """Collects JAX's compile and compilation-cache events of this process."""

  def __init__(self):
    self.compiles = []  # (program name, seconds, during the train step)
    self.events = collections.Counter()
    self.durations = collections.defaultdict(float)
    self.in_train_step = False
    self.train_step_call_s = None

  def install(self) -> None:
    """Listens to JAX's events; wraps `make_train_step`'s first call."""
    # pylint: disable-next=g-import-not-at-top
    import jax
    # pylint: disable-next=g-import-not-at-top
    from ncsn_jax.training import step as step_lib
    jax.monitoring.register_event_duration_secs_listener(self._duration)
    jax.monitoring.register_event_listener(self._event)
    make_train_step = step_lib.make_train_step

    def recorded(*args, **kwargs):
      p_train, tx = make_train_step(*args, **kwargs)

      def first_call_recorded(*call_args):
        if self.train_step_call_s is not None:
          return p_train(*call_args)
        self.in_train_step, start = True, time.perf_counter()
        try:
          return p_train(*call_args)
        finally:
          self.in_train_step = False
          self.train_step_call_s = time.perf_counter() - start

      return first_call_recorded, tx

    # The loop (and `_step`) look the builder up at call time.
    step_lib.make_train_step = recorded

  def _duration(self, event: str, seconds: float, **kwargs) -> None:
    if event == COMPILE_EVENT:
      self.compiles.append((str(kwargs.get('fun_name', '?')), seconds,
                            self.in_train_step))
    elif event.startswith('/jax/compilation_cache/'):
      self.durations[event.rsplit('/', 1)[1]] += seconds

  def _event(self, event: str, **kwargs) -> None:
    del kwargs
    if event.startswith('/jax/compilation_cache/'):
      self.events[event.rsplit('/', 1)[1]] += 1

  def summary(self) -> dict:
    train = [s for _, s, in_step in self.compiles if in_step]
    return {
        'train_step_compile_s': sum(train) if train else None,
        'train_step_first_call_s': self.train_step_call_s,
        'compile_s_total': sum(s for _, s, _ in self.compiles),
        'programs': len(self.compiles),
        'slowest': sorted(self.compiles, key=lambda c: -c[1])[:5],
        'cache_events': dict(self.events),
        'cache_seconds': dict(self.durations),
    }


def _run_py(args, cache_dir: str, workdir: str) -> None:
  """run.py --mode=train in this process (its own flags and exit)."""
  sys.argv = [os.path.join(ROOT, 'run.py'),
              f'--config={os.path.join(ROOT, args.config)}',
              f'--workdir={workdir}', '--mode=train',
              f'--compilation_cache_dir={cache_dir}',
              f'--config.training.n_iters={args.steps}',
              '--config.training.snapshot_sampling=False',
              f'--config.training.eval_freq={10**6}',
              *args.override]
  try:
    runpy.run_path(sys.argv[0], run_name='__main__')
  except SystemExit as e:
    if e.code:
      raise


def _step(args, cache_dir: str) -> None:
  """The config's train step, compiled (or loaded) and run once."""
  # pylint: disable=g-import-not-at-top
  import jax
  jax.config.update('jax_compilation_cache_dir', cache_dir)
  from bench import jax_timers
  from bench import plain_config
  from ncsn_jax import models
  from ncsn_jax import parallel
  from ncsn_jax.training import step as step_lib
  # pylint: enable=g-import-not-at-top
  config = plain_config.get_config()
  if args.ngf:
    config.model.ngf = args.ngf
  if args.image_size:
    config.data.image_size = args.image_size
  config = jax_timers.train_config(config, args.batch, args.dtype)
  p_train, _ = step_lib.make_train_step(config, models.create_model(config))
  state = parallel.replicate(jax_timers.bench_state(config))
  images, keys = jax_timers.train_inputs(config)
  jax.block_until_ready(p_train(state, images, keys))


def child(args) -> None:
  """One start: run the program, write what the listeners saw as JSON."""
  recorder = Recorder()
  recorder.install()
  start = time.perf_counter()
  cache_dir = os.path.join(os.path.dirname(args.child), 'cache')
  with tempfile.TemporaryDirectory() as workdir:
    if args.program == 'run':
      _run_py(args, cache_dir, workdir)
    else:
      _step(args, cache_dir)
  out = dict(recorder.summary(), wall_s=time.perf_counter() - start)
  with open(args.child, 'w') as f:
    json.dump(out, f)


def start(argv, folder: str, name: str) -> dict:
  """One fresh process of this script in child mode; its JSON."""
  path = os.path.join(folder, f'{name}.json')
  argv = [a for a in argv if not a.startswith(('--json', '--cache_dir'))]
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(
      [ROOT] + [p for p in [os.environ.get('PYTHONPATH')] if p]))
  t0 = time.perf_counter()
  # The child's own output (run.py's console) goes to stderr.
  subprocess.run([sys.executable, '-m', 'bench.compile_cache', *argv,
                  f'--child={path}'], cwd=ROOT, env=env, check=True,
                 stdout=sys.stderr)
  with open(path) as f:
    out = json.load(f)
  out['process_s'] = time.perf_counter() - t0
  return out


def main(argv=None):
  argv = sys.argv[1:] if argv is None else list(argv)
  args = parse_args(argv)
  if args.child:
    child(args)
    return None
  with tempfile.TemporaryDirectory() as tmp:
    folder = args.cache_dir or tmp
    if os.path.exists(os.path.join(folder, 'cache')):
      sys.exit(f'error: --cache_dir={folder} already holds a cache/ folder; '
               'give a new folder.')
    os.makedirs(folder, exist_ok=True)
    cold = start(argv, folder, 'cold')
    warm = start(argv, folder, 'warm')
  import jax  # pylint: disable=g-import-not-at-top
  result = {
      'date': datetime.datetime.now(datetime.timezone.utc).isoformat(
          timespec='seconds'),
      'backend': jax.default_backend(),
      'device': jax.devices()[0].device_kind,
      'versions': {'jax': jax.__version__, 'python': platform.python_version()},
      'program': args.program,
      'what': (f'run.py --mode=train {args.config}, {args.steps} steps'
               if args.program == 'run' else
               f'CIFAR-10 NCSNv2 train step, batch {args.batch}, ngf '
               f'{args.ngf or 128}, {args.image_size or 32}px, {args.dtype}'),
      'cold': cold, 'warm': warm,
  }
  c, w = cold['train_step_compile_s'], warm['train_step_compile_s']
  result['train_step_ratio'] = c / w if c and w else None
  print(f"{result['device']} ({result['backend']}), jax {jax.__version__}: "
        f"{result['what']}, two fresh processes, one new cache folder")
  for name, r in (('first start', cold), ('second start', warm)):
    step = (f"{r['train_step_compile_s']:.2f} s"
            if r['train_step_compile_s'] is not None else 'not seen')
    print(f"{name:12s}: train step compile {step}; all {r['programs']} "
          f"programs {r['compile_s_total']:.2f} s; process "
          f"{r['process_s']:.1f} s; cache {r['cache_events']}")
  if result['train_step_ratio']:
    print(f"train step: {c:.2f} s -> {w:.2f} s with the cache "
          f"({result['train_step_ratio']:.1f}x faster)")
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(result, f, indent=2)
  return result


if __name__ == '__main__':
  main()
