"""Official PyTorch checkpoints: reader, conversion, parity and run.py import.

The fixture in testdata/torch_checkpoints/ was written by
tools/make_torch_fixture.py with PyTorch and the official model code (tiny
NCSN v1 and NCSNv2, ngf 2, L = 4, each in the zip and the legacy
serialisation) together with float64 reference outputs; these tests need no
torch.
"""

import io
import os
import pickle
import shutil
import subprocess
import sys
import zipfile

from absl.testing import absltest
from absl.testing import parameterized
from configs import tiny
import jax
import jax.numpy as jnp
import numpy as np
from tests import torch_files

from ncsn_jax import checkpoints
from ncsn_jax import models
from ncsn_jax import outputs
from ncsn_jax.interop import official_checkpoint
from ncsn_jax.interop import param_mapping
from ncsn_jax.interop import torch_pickle

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, 'tests', 'testdata', 'torch_checkpoints')
REF = dict(np.load(os.path.join(DATA, 'reference.npz')))
PREFIX = {'ncsn': 'v1', 'ncsnv2': 'v2'}


def fixture(name: str) -> str:
  return os.path.join(DATA, name)


def load(path: str):
  """The fixtures hold well under 1 MiB of tensors."""
  return torch_pickle.load_pth(path, 1 << 20)


def make_config(kind: str):
  """configs/tiny.py with the fixture's model settings."""
  config = tiny.get_config()
  config.model.ngf = int(REF['ngf'])
  config.model.num_classes = int(REF['num_classes'])
  config.model.sigma_begin = float(REF['sigma_begin'])
  config.model.sigma_end = float(REF['sigma_end'])
  config.data.image_size = int(REF[f'{PREFIX[kind]}_image_size'])
  if kind == 'ncsn':
    config.model.name = 'ncsn'
    config.model.ema = False
  return config


def forward(config, params, kind: str) -> np.ndarray:
  p = PREFIX[kind]
  out = models.create_model(config).apply(
      {'params': params}, jnp.asarray(REF[f'{p}_x']),
      jnp.asarray(REF[f'{p}_y']))
  return np.asarray(out, np.float64)


class ParityMixin:

  def assert_matches_reference(self, got, want):
    # float32 round-off relative to the output scale (measured ~5e-7).
    scale = np.abs(want).max()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * scale)


class KeyMappingTest(absltest.TestCase):

  def test_examples(self):
    cases = {
        'module.res1.0.conv1.weight': ('res1_0', 'conv1', 'kernel'),
        'module.refine2.adapt_convs.1.2_1_conv.weight':
            ('refine2', 'adapt_convs_1', '2_1_conv', 'kernel'),
        'module.refine3.msf.convs.0.weight':
            ('refine3', 'msf', 'convs_0', 'kernel'),
        'module.refine3.msf.convs.0.bias': ('refine3', 'msf', 'convs_0',
                                            'bias'),
        'module.refine1.crp.norms.1.embed.weight':
            ('refine1', 'crp', 'norms_1', 'embed'),
        'module.res2.0.conv2.conv.weight':
            ('res2_0', 'conv2', 'conv', 'kernel'),
        'res1.1.normalize1.alpha': ('res1_1', 'normalize1', 'alpha'),
        'module.normalizer.embed.weight': ('normalizer', 'embed'),
    }
    for key, path in cases.items():
      self.assertEqual(param_mapping.torch_key_to_flax_path(key), path,
                       key)


class ReaderTest(absltest.TestCase):

  def test_formats_agree_and_keep_the_official_layout(self):
    for kind in ('ncsn', 'ncsnv2'):
      zipped = load(fixture(f'{kind}_zip.pth'))
      legacy = load(fixture(f'{kind}_legacy.pth'))
      self.assertLen(zipped, 2 if kind == 'ncsn' else 5)
      self.assertEqual(list(zipped[0]), list(legacy[0]))
      for key, value in zipped[0].items():
        self.assertTrue(key.startswith('module.'), key)
        self.assertEqual(value.dtype, np.float32)
        np.testing.assert_array_equal(value, legacy[0][key])
    v2 = load(fixture('ncsnv2_legacy.pth'))
    self.assertEqual(v2[0]['module.begin_conv.weight'].shape, (2, 3, 3, 3))
    self.assertEqual(v2[2:4], [1, int(REF['v2_step'])])
    self.assertNotIn('sigmas', v2[4])
    self.assertEqual(len(v2[4]), len(v2[0]) - 1)
    adam = v2[1]['state'][0]
    self.assertEqual(adam['step'], int(REF['v2_step']))
    self.assertEqual(adam['exp_avg'].shape, (2, 3, 3, 3))

  def test_non_torch_files(self):
    tmp = self.create_tempdir()
    text = tmp.create_file('notes.pth', content='hello').full_path
    with self.assertRaisesRegex(ValueError, 'notes.pth.*not a PyTorch'):
      load(text)
    npz = os.path.join(tmp.full_path, 'arrays.pth')
    with open(npz, 'wb') as f:
      np.savez(f, a=np.zeros(3))
    with self.assertRaisesRegex(ValueError, 'arrays.pth.*not a PyTorch'):
      load(npz)
    plain = os.path.join(tmp.full_path, 'plain.pth')
    with open(plain, 'wb') as f:
      pickle.dump({'a': 1}, f, protocol=2)
    with self.assertRaisesRegex(ValueError, 'plain.pth.*magic'):
      load(plain)
    with self.assertRaisesRegex(ValueError, 'does not exist'):
      load(os.path.join(tmp.full_path, 'missing.pth'))

  def test_truncated_files(self):
    tmp = self.create_tempdir().full_path
    for kind in ('zip', 'legacy'):
      with open(fixture(f'ncsnv2_{kind}.pth'), 'rb') as f:
        data = f.read()
      for cut in (len(data) // 3, len(data) - 100):
        path = os.path.join(tmp, f'cut_{kind}_{cut}.pth')
        with open(path, 'wb') as f:
          f.write(data[:cut])
        with self.assertRaisesRegex(ValueError, f'cut_{kind}_{cut}.pth'):
          load(path)

  def test_missing_storage_record(self):
    path = os.path.join(self.create_tempdir().full_path, 'gap.pth')
    with zipfile.ZipFile(fixture('ncsn_zip.pth')) as src, zipfile.ZipFile(
        path, 'w') as dst:
      for item in src.infolist():
        if not item.filename.endswith('/data/5'):
          dst.writestr(item, src.read(item.filename))
    with self.assertRaisesRegex(ValueError, r"gap.pth.*'ncsn_zip/data/5'"):
      load(path)

  def test_unknown_global_is_refused_not_run(self):
    tmp = self.create_tempdir().full_path
    marker = os.path.join(tmp, 'pwned')

    class Exploit:

      def __reduce__(self):
        return (os.system, (f'touch {marker}',))

    payload = pickle.dumps({'weight': Exploit()}, protocol=2)
    legacy = os.path.join(tmp, 'evil_legacy.pth')
    with open(legacy, 'wb') as f:
      f.write(payload)
    zipped = os.path.join(tmp, 'evil_zip.pth')
    with zipfile.ZipFile(zipped, 'w') as z:
      z.writestr('evil_zip/data.pkl', payload)
      z.writestr('evil_zip/byteorder', 'little')
    for path in (legacy, zipped):
      with self.assertRaisesRegex(ValueError,
                                  r'refusing to load global (posix|nt|os)'
                                  r'\.system'):
        load(path)
    # Also behind a valid legacy header.
    header = io.BytesIO()
    for item in (torch_pickle.LEGACY_MAGIC,
                 torch_pickle.LEGACY_PROTOCOL, {'little_endian': True}):
      pickle.dump(item, header, protocol=2)
    behind = os.path.join(tmp, 'evil_behind.pth')
    with open(behind, 'wb') as f:
      f.write(header.getvalue() + payload)
    with self.assertRaisesRegex(ValueError, r'\.system'):
      load(behind)
    self.assertFalse(os.path.exists(marker))


class BoundTest(absltest.TestCase):

  def test_reading_is_bounded_by_the_model(self):
    config = make_config('ncsnv2')
    states = load(fixture('ncsnv2_zip.pth'))
    params = official_checkpoint.convert(config, states)[0].params
    limit = official_checkpoint.max_checkpoint_bytes(params)
    count = sum(v.size for v in jax.tree.leaves(params))
    self.assertEqual(limit, 4 * 8 * count + (1 << 20))
    # A file with the model's tensors whose storages declare more than a
    # checkpoint of it can hold (one storage just over the bound) is
    # refused unread.
    pairs, arrays = {}, {}
    for i, (key, value) in enumerate(states[0].items()):
      numel = value.size if i else limit // 4 + 1
      strides = np.cumprod((1,) + value.shape[:0:-1])[::-1]
      pairs[key] = torch_files.tensor(str(i), numel, 0, value.shape,
                                      tuple(int(x) for x in strides))
      arrays[str(i)] = np.ascontiguousarray(value, np.float32)
    path = torch_files.write(
        os.path.join(self.create_tempdir().full_path, 'big.pth'),
        torch_files.zip_archive(torch_files.dict_(pairs), arrays))
    with self.assertRaisesRegex(ValueError, f'big.pth: its storages come to '
                                f'{4 * (limit // 4 + 1):,} bytes, more than the '
                                f'{limit:,} expected'):
      official_checkpoint.read_checkpoint(config, path)
    with self.assertRaisesRegex(ValueError, 'big.pth: its storages'):
      official_checkpoint.import_checkpoint(
          config, self.create_tempdir().full_path, path)


class ParityTest(ParityMixin, parameterized.TestCase):

  @parameterized.product(kind=('ncsn', 'ncsnv2'), fmt=('zip', 'legacy'))
  def test_outputs_match_pytorch(self, kind, fmt):
    config = make_config(kind)
    states = official_checkpoint.read_checkpoint(
        config, fixture(f'{kind}_{fmt}.pth'))
    state, info = official_checkpoint.convert(config, states)
    self.assertEqual(info['format'], kind)
    p = PREFIX[kind]
    self.assert_matches_reference(forward(config, state.params, kind),
                                  REF[f'{p}_out'])
    if kind == 'ncsnv2':
      self.assertTrue(info['ema'])
      self.assertEqual(int(state.step), int(REF['v2_step']))
      self.assert_matches_reference(forward(config, state.ema_params, kind),
                                    REF['v2_ema_out'])
      # The EMA really differs from the weights (else the test is moot).
      gap = np.abs(REF['v2_ema_out'] - REF['v2_out']).max()
      self.assertGreater(gap, 1e-3 * np.abs(REF['v2_out']).max())
    else:
      self.assertFalse(info['ema'])
      self.assertEqual(int(state.step), 0)


class ConvertTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.config = make_config('ncsnv2')
    self.states = load(fixture('ncsnv2_legacy.pth'))

  def test_adam_moments_imported(self):
    state, info = official_checkpoint.convert(self.config, self.states)
    self.assertEqual(info['adam'], 'imported')
    adam = state.opt_state[0]
    self.assertEqual(int(adam.count), int(REF['v2_step']))
    torch_mu = self.states[1]['state'][0]['exp_avg']  # begin_conv.weight.
    np.testing.assert_array_equal(
        adam.mu['begin_conv']['kernel'], torch_mu.transpose(2, 3, 1, 0))
    # Also behind other optax transformations of the chain.
    config = make_config('ncsnv2')
    config.optim.grad_clip = 1.0
    state, info = official_checkpoint.convert(config, self.states)
    self.assertEqual(info['adam'], 'imported')
    self.assertEqual(int(state.opt_state[1].count), int(REF['v2_step']))
    # No moments in the file: a fresh optax state.
    empty = load(fixture('ncsnv2_zip.pth'))
    state, info = official_checkpoint.convert(self.config, empty)
    self.assertIn('empty', info['adam'])
    self.assertEqual(int(state.opt_state[0].count), 0)

  def test_missing_and_unused_keys(self):
    model = dict(self.states[0])
    del model['module.refine2.msf.convs.1.bias']
    with self.assertRaisesRegex(ValueError, 'refine2/msf/convs_1/bias'):
      official_checkpoint.convert(self.config, [model] + self.states[1:])
    model = dict(self.states[0], **{'module.extra.weight': np.zeros(3)})
    with self.assertRaisesRegex(ValueError, "'module.extra.weight'"):
      official_checkpoint.convert(self.config, [model] + self.states[1:])
    ema = dict(self.states[4])
    del ema['res1.0.normalize1.gamma']
    with self.assertRaisesRegex(ValueError, 'EMA.*res1_0/normalize1/gamma'):
      official_checkpoint.convert(self.config, self.states[:4] + [ema])

  def test_wrong_config(self):
    config = make_config('ncsnv2')
    config.model.sigma_begin = 2.0
    with self.assertRaisesRegex(ValueError, "'module.sigmas'.*wrong config"):
      official_checkpoint.convert(config, self.states)
    config = make_config('ncsnv2')
    config.model.ngf = 4
    with self.assertRaisesRegex(ValueError, r"'module.begin_conv.weight' has "
                                r'shape \(2, 3, 3, 3\).*begin_conv/kernel'):
      official_checkpoint.convert(config, self.states)
    with self.assertRaisesRegex(ValueError, 'matches no parameter'):
      official_checkpoint.convert(make_config('ncsn'), self.states)

  def test_bad_layouts(self):
    with self.assertRaisesRegex(ValueError, 'a list of 3'):
      official_checkpoint.convert(self.config, self.states[:3])
    with self.assertRaisesRegex(ValueError, r'item 3 \(step\)'):
      official_checkpoint.convert(self.config, self.states[:3] + ['x'])
    # A bare model state dict is accepted.
    state, info = official_checkpoint.convert(self.config, self.states[0])
    self.assertEqual(info['format'], 'state_dict')
    self.assertEqual(int(state.step), 0)


class ImportTest(ParityMixin, absltest.TestCase):

  def test_ncsnv2_import_then_load_params_gives_ema(self):
    config = make_config('ncsnv2')
    workdir = self.create_tempdir().full_path
    step = official_checkpoint.import_checkpoint(
        config, workdir, fixture('ncsnv2_legacy.pth'))
    self.assertEqual(step, int(REF['v2_step']))
    _, params, restored = checkpoints.load_params(config, workdir)
    self.assertEqual(restored, step)
    self.assert_matches_reference(forward(config, params, 'ncsnv2'),
                                  REF['v2_ema_out'])
    _, raw, _ = checkpoints.load_params(config, workdir, ema=False)
    self.assert_matches_reference(forward(config, raw, 'ncsnv2'),
                                  REF['v2_out'])
    with self.assertRaisesRegex(ValueError, 'already has a checkpoint'):
      official_checkpoint.import_checkpoint(config, workdir,
                                            fixture('ncsnv2_zip.pth'))

  def test_ncsn_import_takes_the_step_from_the_file_name(self):
    config = make_config('ncsn')
    tmp = self.create_tempdir().full_path
    named = os.path.join(tmp, 'checkpoint_7000.pth')
    shutil.copy(fixture('ncsn_zip.pth'), named)
    workdir = os.path.join(tmp, 'run')
    self.assertEqual(
        official_checkpoint.import_checkpoint(config, workdir, named), 7000)
    _, params, step = checkpoints.load_params(config, workdir)
    self.assertEqual(step, 7000)
    self.assert_matches_reference(forward(config, params, 'ncsn'),
                                  REF['v1_out'])


class RunImportTest(absltest.TestCase):

  def test_run_py_import_then_sample(self):
    workdir = self.create_tempdir().full_path
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', JAX_PLATFORMS='cpu')

    def run(mode, *flags):
      cmd = [sys.executable, os.path.join(ROOT, 'tests',
                                          'run_with_mock_data.py'),
             f'--config={os.path.join(ROOT, "configs", "tiny.py")}',
             f'--workdir={workdir}', f'--mode={mode}',
             f'--config.model.ngf={int(REF["ngf"])}', *flags]
      return subprocess.run(cmd, env=env, capture_output=True, text=True,
                            timeout=600, cwd=ROOT)

    result = run('import')
    self.assertEqual(result.returncode, 2)
    self.assertIn('error: --mode=import needs --checkpoint', result.stderr)
    result = run('import', f'--checkpoint={fixture("ncsnv2_legacy.pth")}')
    self.assertEqual(result.returncode, 0, result.stderr[-3000:])
    self.assertIn('as step 3', result.stdout)
    result = run('sample')
    self.assertEqual(result.returncode, 0, result.stderr[-3000:])
    images = np.load(os.path.join(workdir, 'samples', 'samples.npz'))['images']
    self.assertEqual(images.shape, (4, 8, 8, 3))


if __name__ == '__main__':
  absltest.main()
