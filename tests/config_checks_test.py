"""Every config field a mode cannot use fails before any work, in one line.

In-process checks of `config_checks.check_config` (4 simulated devices), and
run.py end to end: bad fields, misspelt overrides and values of the wrong
type exit 2 with one stderr line and leave the workdir as it was.
"""

import glob
import importlib
import os
import subprocess
import sys

from absl.testing import absltest
from absl.testing import parameterized
from configs import digits
from configs import toy_gmm

from ncsn_jax import config_checks
from ncsn_jax import errors

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAN = float('nan')

# (mode, {field: value}, message regex); each message names the field.
BAD = (
    ('train', {
        'model.name': 'foo'
    }, r"config.model.name='foo' is unknown; use one of ncsn, ncsnv2, "
     r'ncsnv2_deeper, ncsnv2_deepest'),
    ('train', {
        'training.loss': 'foo'
    }, r"config.training.loss='foo' is unknown; use one of dsm, ssm, ssm_vr"),
    ('train', {
        'training.loss': 'ssm',
        'training.projection': 'foo'
    }, r"config.training.projection='foo' is unknown; use one of gaussian, "
     r'rademacher'),
    ('sample', {
        'model.sigma_dist': 'foo'
    }, r"config.model.sigma_dist='foo' is unknown; use one of geometric, "
     r'uniform'),
    ('sample', {
        'model.dtype': 'float16'
    }, r"config.model.dtype='float16' is unknown; use one of float32"),
    ('train', {
        'data.image_size': 7
    }, r"config.data.image_size=7 does not fit model 'ncsnv2': it must be a "
     r'multiple of 2'),
    ('train', {
        'data.dataset': 'foo'
    }, r"config.data.dataset='foo' is unknown"),
    ('eval', {
        'data.channels': 2
    }, r'config.data.channels=2 must be 1 or 3'),
    ('train', {
        'data.dataset': 'cifar10',
        'data.image_size': 32
    }, r'config.data.channels=1, but cifar10 images have 3 channels'),
    ('train', {
        'data.rescaled': True,
        'data.logit_transform': True
    }, r'config.data.rescaled and config.data.logit_transform are both set'),
    ('train', {
        'training.batch_size': -4
    }, r'config.training.batch_size=-4 must be a positive multiple of the 4 '
     r'devices; use e.g. 4'),
    ('train', {
        'training.batch_size': 0
    }, r'config.training.batch_size=0 must be a positive multiple'),
    ('train', {
        'training.batch_size': 6
    }, r'config.training.batch_size=6 is not divisible by the 4 devices; use '
     r'4 or 8'),
    ('train', {
        'training.batch_size': 3
    }, r'config.training.batch_size=3 is not divisible by the 4 devices; use '
     r'4\.'),
    ('sample', {
        'sampling.batch_size': 0
    }, r'config.sampling.batch_size=0 must be a positive multiple of the 4 '
     r'local devices'),
    ('sample', {
        'sampling.batch_size': 10
    }, r'config.sampling.batch_size=10 is not divisible by the 4 local '
     r'devices; use 8 or 12'),
    ('eval', {
        'eval.batch_size': -8
    }, r'config.eval.batch_size=-8 must be a positive multiple'),
    ('train', {
        'eval.batch_size': 30
    }, r'config.eval.batch_size=30 is not divisible by the 4 devices; use 28 '
     r'or 32'),
    ('train', {
        'training.snapshot_n_samples': 6
    }, r'config.training.snapshot_n_samples=6 is not divisible by the 4 local'),
    ('train', {
        'training.n_iters': 0
    }, r'config.training.n_iters=0 must be an integer >= 1'),
    ('train', {
        'training.log_freq': 0
    }, r'config.training.log_freq=0 must be an integer >= 1'),
    ('train', {
        'training.grad_accum_steps': 3
    }, r'config.training.grad_accum_steps=3 must divide the per-device batch '
     r'of 16'),
    ('train', {
        'training.loss': 'ssm',
        'training.n_particles': 0
    }, r'config.training.n_particles=0 must be an integer >= 1'),
    ('sample', {
        'model.sigma_begin': 0.01
    }, r'config.model.sigma_begin=0.01 must be larger than '
     r'config.model.sigma_end=0.05'),
    ('train', {
        'model.sigma_begin': 0.05
    }, r'config.model.sigma_begin=0.05 must be larger than'),
    ('train', {
        'model.sigma_end': 0.0
    }, r'config.model.sigma_end=0.0 must be a finite number > 0.0'),
    ('train', {
        'model.num_classes': 1
    }, r'config.model.num_classes=1 must be an integer >= 2'),
    ('train', {
        'model.ema_rate': 1.5
    }, r'config.model.ema_rate=1.5 must be a finite number in \[0.0, 1.0\)'),
    ('train', {
        'model.ema_rate': 1.0
    }, r'config.model.ema_rate=1.0 must be'),
    ('train', {
        'model.ema_rate': -0.1
    }, r'config.model.ema_rate=-0.1 must be'),
    ('sample', {
        'sampling.step_lr': 0.0
    }, r'config.sampling.step_lr=0.0 must be a finite number > 0.0'),
    ('sample', {
        'sampling.step_lr': -1e-5
    }, r'config.sampling.step_lr=-1e-05'),
    ('train', {
        'sampling.step_lr': NAN
    }, r'config.sampling.step_lr=nan must'),
    ('eval', {
        'sampling.n_steps_each': 0
    }, r'config.sampling.n_steps_each=0 must be an integer >= 1'),
    ('sample', {
        'sampling.inpainting': True,
        'sampling.inpainting_mask': 'ring'
    }, r"config.sampling.inpainting_mask='ring' is unknown; use one of "
     r'right_half'),
    ('sample', {
        'sampling.interpolation': True,
        'sampling.n_interpolations': 7
    }, r'config.sampling.n_interpolations=7 must be >= 1 and divide '
     r'config.sampling.batch_size=100'),
    ('sample', {
        'sampling.tag': ''
    }, r"config.sampling.tag='' must be"),
    ('train', {
        'optim.lr': 0.0
    }, r'config.optim.lr=0.0 must be a finite number > 0.0'),
    ('train', {
        'optim.lr': -1e-3
    }, r'config.optim.lr=-0.001 must be'),
    ('train', {
        'optim.optimizer': 'SGD'
    }, r"config.optim.optimizer='SGD' is unknown; use one of Adam"),
    ('train', {
        'optim.beta1': 1.0
    }, r'config.optim.beta1=1.0 must be'),
    ('eval', {
        'eval.num_samples': -1
    }, r'config.eval.num_samples=-1 must be an integer >= 0'),
    ('eval', {
        'eval.begin_ckpt': 4,
        'eval.end_ckpt': 2
    }, r'config.eval.begin_ckpt=4 must be at most config.eval.end_ckpt=2'),
    ('fid_stats', {
        'eval.inception_preprocessing': 'keras'
    }, r"config.eval.inception_preprocessing='keras' is unknown; use one of "
     r'tf, pytorch'),
    ('fid_stats', {
        'eval.stats_split': 'val'
    }, r"config.eval.stats_split='val' is unknown"),
    ('tune', {
        'tune.subset_size': 1
    }, r'config.tune.subset_size=1 must be an integer >= 2'),
    ('export', {
        'model.ngf': 0
    }, r'config.model.ngf=0 must be an integer'),
)


def _config(overrides, base=digits.get_config):
  config = base()
  for field, value in overrides.items():
    section, name = field.split('.')
    config[section][name] = value
  return config


class CheckConfigTest(parameterized.TestCase):

  @parameterized.parameters(*BAD)
  def test_bad_field_fails_in_one_line_naming_it(self, mode, overrides,
                                                 message):
    with self.assertRaisesRegex(errors.ConfigError, message) as raised:
      config_checks.check_config(_config(overrides), mode)
    self.assertNotIn('\n', str(raised.exception))

  @parameterized.parameters(({
      'toy.langevin_step': 0.0
  }, r'config.toy.langevin_step=0.0 must be'), ({
      'toy.plain_loss': 'dsm'
  }, r"config.toy.plain_loss='dsm' is unknown; use one of ssm, ssm_vr"), ({
      'model.ema_rate': 2.0
  }, r'config.model.ema_rate=2.0 must be'), ({
      'sampling.step_lr': NAN
  }, r'config.sampling.step_lr=nan must be'))
  def test_toy_mode(self, overrides, message):
    with self.assertRaisesRegex(errors.ConfigError, message):
      config_checks.check_config(_config(overrides, toy_gmm.get_config), 'toy')
    with self.assertRaisesRegex(errors.ConfigError, r'needs a toy config'):
      config_checks.check_config(digits.get_config(), 'toy')

  def test_fields_a_mode_does_not_use_are_not_checked(self):
    config = _config({
        'sampling.batch_size': 0,
        'eval.num_samples': 0,
        'training.n_iters': 0
    })
    config_checks.check_config(config, 'export')
    config_checks.check_config(config, 'eval')  # No samples: no sampler.
    config_checks.check_config(_config({'sampling.batch_size': 0}), 'train')

  def test_tune_with_a_given_sigma_reads_no_data_fields(self):
    config = _config({'tune.sigma_begin': 50.0, 'data.dataset': 'none'})
    config_checks.check_config(config, 'tune')
    config.data.channels = 2
    with self.assertRaisesRegex(errors.ConfigError,
                                r'config.data.channels=2 is unknown'):
      config_checks.check_config(config, 'tune')

  def test_every_shipped_config_passes_its_modes(self):
    checked = 0
    for path in sorted(glob.glob(os.path.join(ROOT, 'configs', '*.py'))):
      module = importlib.import_module('configs.' + os.path.basename(path)[:-3])
      if not hasattr(module, 'get_config'):
        continue
      config = module.get_config()
      modes = ('toy',) if 'toy' in config else tuple(
          m for m in config_checks.MODES if m != 'toy')
      for mode in modes:
        config_checks.check_config(config, mode)
        checked += 1
    self.assertGreater(checked, 50)


def run_py(workdir, *overrides):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', JAX_PLATFORMS='cpu')
  cmd = [
      sys.executable,
      os.path.join(ROOT, 'run.py'),
      f'--config={os.path.join(ROOT, "configs", "digits.py")}',
      f'--workdir={workdir}', '--mode=train', *overrides
  ]
  return subprocess.run(cmd,
                        env=env,
                        capture_output=True,
                        text=True,
                        timeout=300,
                        cwd=ROOT)


class RunPyTest(absltest.TestCase):

  def test_bad_input_is_one_line_exit_2_and_nothing_is_touched(self):
    workdir = self.create_tempdir().full_path
    kept = os.path.join(workdir, 'metrics.jsonl')
    with open(kept, 'w') as f:
      f.write('{"step": 1}\n')
    before = os.stat(kept)
    for overrides, message in (
        (['--config.training.batch_size=6'],
         'error: config.training.batch_size=6 is not divisible by the 4 '
         'devices; use 4 or 8.'),
        (['--config.training.batchsize=8'],
         'error: unknown config field training.batchsize (did you mean '
         'training.batch_size?); see configs/default.py.'),
        (['--config.training.batch_size=abc'],
         "error: flag --config.training.batch_size=abc: invalid literal for "
         "int() with base 10: 'abc'; config.training.batch_size takes int "
         'values'),
    ):
      result = run_py(workdir, *overrides)
      self.assertEqual(result.returncode, 2, result.stderr[-3000:])
      self.assertEqual(result.stderr.splitlines(), [message])
      self.assertEqual(result.stdout, '')
    self.assertEqual(os.listdir(workdir), ['metrics.jsonl'])
    after = os.stat(kept)
    self.assertEqual((after.st_mtime_ns, after.st_size),
                     (before.st_mtime_ns, before.st_size))


if __name__ == '__main__':
  absltest.main()
