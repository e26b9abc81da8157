"""ncsn_jax entry point: flags, then one function per --mode.

  python run.py --config=configs/cifar10_ncsnv2.py --workdir=runs/c10 \
      [--mode=train|sample|eval|...] [--config.sampling.ckpt_id=300000]
"""

import os
import sys

from ncsn_jax import console

# Before TensorFlow or JAX is imported: their C++ start-up logs.
sys.argv = console.normalize_argv(sys.argv)
console.set_environment(console.verbosity(sys.argv) > 0)

# pylint: disable=g-import-not-at-top,g-bad-import-order
from absl import app
from absl import flags
from ml_collections import config_flags

from ncsn_jax import errors

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    'config', None, 'Experiment config file; override fields with '
    '--config.<section>.<field>=<value>.', lock_config=True)
flags.DEFINE_string('workdir', None, 'Folder of checkpoints, samples, logs.')
flags.DEFINE_enum('mode', 'train', ['train', 'sample', 'eval', 'import',
                                     'export', 'toy', 'tune', 'fid_stats'],
                  'What to do; see the README\'s table of modes.')
flags.DEFINE_string('checkpoint', None, 'Official NCSN/NCSNv2 .pth file to '
                    'import (--mode=import) or to write (--mode=export).')
flags.DEFINE_bool('overwrite', False, 'Let export replace --checkpoint.')
flags.DEFINE_bool('multihost', False, 'Join a multi-process run.')
flags.DEFINE_string('coordinator_address', '', 'host:port of process 0.')
flags.DEFINE_integer('num_processes', 0, 'Processes in a multihost run.')
flags.DEFINE_integer('process_id', -1, 'This process in a multihost run.')
flags.DEFINE_integer('distributed_timeout', 300, 'Seconds a multihost '
                     'process waits for the others at start-up.')
flags.DEFINE_bool('compilation_cache', True, 'Keep compiled programs on '
                  'disk, so a restart does not compile them again.')
flags.DEFINE_string('compilation_cache_dir', '', 'Folder of that cache '
                    '(default: jax/ in the user cache folder).')
flags.mark_flags_as_required(['config', 'workdir'])


def parse_flags(argv):
  """absl flag parsing; bad flags and config overrides exit 2 in one line."""
  try:
    return FLAGS(argv)
  except (flags.Error, AttributeError, KeyError) as e:  # Key, Attribute: a
    # --config.<field> that is not one.
    print(f'error: {console.flag_error(argv, e, FLAGS)}', file=sys.stderr)
    sys.exit(2)


# Each mode imports what it needs (a bad flag fails before TF or JAX loads)
# and returns the lines to print: where its outputs went, a summary.
def run_train(config, workdir: str) -> list[str]:
  from ncsn_jax.training import loop
  result = loop.train(config, workdir)
  lines = [f'{what}: {os.path.join(workdir, name)}' for what, name in (
      ('Checkpoints', 'checkpoints'), ('Sample grids', 'samples'),
      ('Loss curve', 'loss_curve.png'))]
  if result.stopped_early:  # Checkpointed on SIGTERM: say where, leave now.
    print('\n'.join(lines), flush=True)
    console.exit_now(0)
  return lines


def run_import(config, workdir: str) -> list[str]:
  from ncsn_jax.interop import official_checkpoint as official
  step = official.import_checkpoint(config, workdir, FLAGS.checkpoint)
  return [f'Imported {FLAGS.checkpoint} as step {step} into {workdir}']


def run_export(config, workdir: str) -> list[str]:
  from ncsn_jax.interop import export
  step = export.export_checkpoint(config, workdir, FLAGS.checkpoint,
                                  FLAGS.overwrite)
  return [f'Exported step {step} of {workdir} as {FLAGS.checkpoint}']


def run_sample(config, workdir: str) -> list[str]:
  from ncsn_jax.sampling import sample_mode
  return [f'{k}: {v}' for k, v in sample_mode.sample(config, workdir).items()]


def run_eval(config, workdir: str) -> list[str]:
  from ncsn_jax.evaluation import evaluate
  path = evaluate.evaluate(config, workdir)
  return [f'Report: {path}', evaluate.summary_line(path)]


def run_toy(config, workdir: str) -> list[str]:
  from ncsn_jax.experiments import toy
  report = toy.run_toy(config, workdir)
  return [f'annealed_weight: {report["annealed_weight"]:.3f}, '
          f'langevin_weight: {report["langevin_weight"]:.3f} (true 0.8)',
          f'Report and figures: {os.path.join(workdir, "toy")}']


def run_tune(config, workdir: str) -> list[str]:
  from ncsn_jax.experiments import tune
  return [tune.config_snippet(tune.tune(config, workdir)) +
          f'Report: {os.path.join(workdir, "tune.json")}']


def run_fid_stats(config, unused_workdir: str) -> list[str]:  # To the cache.
  from ncsn_jax.evaluation import sample_quality
  return [f'Reference stats: {sample_quality.reference_stats(config)}']


MODES = {'train': run_train, 'import': run_import, 'export': run_export,
         'sample': run_sample, 'eval': run_eval, 'toy': run_toy,
         'tune': run_tune, 'fid_stats': run_fid_stats}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError('Too many command-line arguments.')
  console.quiet_logging(FLAGS.verbosity > 0)
  from ncsn_jax import config_checks, outputs, parallel
  outputs.compilation_cache(FLAGS.compilation_cache,
                            FLAGS.compilation_cache_dir)
  if FLAGS.multihost:
    parallel.initialize_distributed(FLAGS.coordinator_address,
                                    FLAGS.num_processes, FLAGS.process_id,
                                    timeout_s=FLAGS.distributed_timeout)
  config, workdir, mode = FLAGS.config, FLAGS.workdir, FLAGS.mode
  try:
    # Every field first: nothing is read or written for a config that fails.
    config_checks.check_config(config, mode)
    if mode in ('import', 'export') and not FLAGS.checkpoint:
      raise errors.ConfigError(f'--mode={mode} needs --checkpoint=PATH.pth.')
    print(console.header(config_flags.get_config_filename(FLAGS['config']),
                         mode, workdir), flush=True)
    print('\n'.join(MODES[mode](config, workdir)))
  except errors.Interrupted as e:  # SIGTERM / SIGINT: the parts are kept.
    print(f'stopped: {e}', file=sys.stderr)
    console.exit_now(0)
  except (errors.InputError, errors.NonFiniteLossError) as e:
    print(f'error: {e}', file=sys.stderr)  # And no teardown: it would print
    console.exit_now(2)  # the threads' tracebacks of a failed checkpoint.


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
