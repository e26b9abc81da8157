"""Export to the official PyTorch layout: writer, names, round trips, run.py.

No torch here: the files are read back with the project's restricted reader
(`torch_pickle`) and compared with the official fixtures of
testdata/torch_checkpoints/ (written by torch); tools/make_torch_fixture.py
checks with torch itself that the exported files load (export_check.json).
"""

import json
import os
import struct
import subprocess
import sys
import zipfile

from absl.testing import absltest
from absl.testing import parameterized
from configs import tiny
import flax
import jax
import numpy as np

from ncsn_jax import errors
from ncsn_jax import models
from ncsn_jax import train_state
from ncsn_jax.interop import export
from ncsn_jax.interop import official_checkpoint
from ncsn_jax.interop import torch_pickle
from ncsn_jax.models import score

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, 'tests', 'testdata', 'torch_checkpoints')
REF = dict(np.load(os.path.join(DATA, 'reference.npz')))

def _load(path):
  """Reads a .pth with the project's restricted reader (16 MiB bound)."""
  return torch_pickle.load_pth(path, 1 << 24)



def fixture_config(kind: str):
  """configs/tiny.py with the model of the reference fixture files."""
  config = tiny.get_config()
  config.model.ngf = int(REF['ngf'])
  config.model.num_classes = int(REF['num_classes'])
  config.model.sigma_begin = float(REF['sigma_begin'])
  config.model.sigma_end = float(REF['sigma_end'])
  config.data.image_size = int(
      REF['v1_image_size' if kind == 'ncsn' else 'v2_image_size'])
  if kind == 'ncsn':
    config.model.name, config.model.ema = 'ncsn', False
  return config


def trained_state(config, steps: int = 2):
  """A TrainState with Adam moments and an EMA that differs from params."""
  model = models.create_model(config)
  tx = train_state.create_optimizer(config)
  state = train_state.create_train_state(config, model, tx, jax.random.key(0))
  params, opt_state = state.params, state.opt_state
  leaves, tree = jax.tree.flatten(params)
  for i in range(steps):
    keys = jax.random.split(jax.random.key(i + 1), len(leaves))
    grads = tree.unflatten([jax.random.normal(k, x.shape)
                            for k, x in zip(keys, leaves)])
    updates, opt_state = tx.update(grads, opt_state, params)
    params = jax.tree.map(lambda p, u: p + u, params, updates)
  ema = jax.tree.map(lambda p: p * 0.5 + 0.25, params)
  return jax.device_get(train_state.TrainState(
      step=np.asarray(steps, np.int32), params=params, opt_state=opt_state,
      ema_params=ema))


def write(path: str, obj) -> str:
  with open(path, 'wb') as f:
    export.write_pth(f, obj)
  return path


def assert_trees_equal(test, got, want):
  got = flax.traverse_util.flatten_dict(flax.core.unfreeze(got))
  want = flax.traverse_util.flatten_dict(flax.core.unfreeze(want))
  test.assertEqual(sorted(got), sorted(want))
  for path, value in want.items():
    np.testing.assert_array_equal(got[path], value, err_msg=str(path))


class WriterTest(absltest.TestCase):

  def test_values_read_back(self):
    obj = [
        None, True, False, 0, 255, 256, 65536, -1, -2**31, 2**31, 2**70,
        -2**70, 1.5, -0.0, float('inf'), '', 'ünïcode', (), (1,), (1, 2, 3),
        (1, 2, 3, 4), [], {}, {'a': [1, {2: 3}]},
        np.float32(0.25), np.int64(7),
        np.arange(6, dtype=np.float32).reshape(2, 3),
        np.arange(6, dtype=np.float64).reshape(3, 2).T,  # Not contiguous.
        np.asarray(3.0, np.float32), np.zeros((0, 4), np.float32),
        np.array([1, -2], np.int64), np.array([True, False]),
        np.arange(4, dtype=np.uint8),
    ]
    path = write(os.path.join(self.create_tempdir().full_path, 'o.pth'), obj)
    back = _load(path)
    self.assertLen(back, len(obj))
    for got, want in zip(back, obj):
      if isinstance(want, np.ndarray):
        self.assertEqual(got.dtype, want.dtype)
        np.testing.assert_array_equal(got, want)
      else:
        self.assertEqual(got, want)
        self.assertEqual(type(got), type(want.item()) if isinstance(
            want, np.generic) else type(want))

  def test_layout_is_torchs(self):
    path = write(os.path.join(self.create_tempdir().full_path, 'o.pth'),
                 {'w': np.ones((3, 5), np.float32), 'b': np.zeros(2)})
    with zipfile.ZipFile(path) as archive, open(path, 'rb') as f:
      names = archive.namelist()
      self.assertEqual(names[0], 'archive/data.pkl')
      self.assertEqual(archive.read('archive/version'), b'3\n')
      self.assertEqual(archive.read('archive/byteorder'), b'little')
      self.assertEqual(archive.read('archive/data/0'),
                       np.ones(15, '<f4').tobytes())
      for info in archive.infolist():
        self.assertEqual(info.compress_type, zipfile.ZIP_STORED)
        f.seek(info.header_offset + 26)
        name_len, extra_len = struct.unpack('<HH', f.read(4))
        start = info.header_offset + 30 + name_len + extra_len
        self.assertEqual(start % export.ALIGNMENT, 0, info.filename)
      self.assertEqual(archive.read('archive/data.pkl')[:2], b'\x80\x02')

  def test_unsupported(self):
    path = os.path.join(self.create_tempdir().full_path, 'o.pth')
    with self.assertRaisesRegex(ValueError, 'set'):
      write(path, {1, 2})
    with self.assertRaisesRegex(ValueError, 'complex'):
      write(path, np.zeros(2, np.complex64))


class NamesTest(parameterized.TestCase):

  def test_examples(self):
    cases = {
        ('res1_0', 'conv1', 'kernel'): 'res1.0.conv1.weight',
        ('res31_1', 'normalize2', 'alpha'): 'res31.1.normalize2.alpha',
        ('refine2', 'adapt_convs_1', '2_1_conv', 'kernel'):
            'refine2.adapt_convs.1.2_1_conv.weight',
        ('refine1', 'crp', 'norms_1', 'embed'): 'refine1.crp.norms.1.embed.'
                                                'weight',
        ('res2_0', 'conv2', 'conv', 'bias'): 'res2.0.conv2.conv.bias',
        ('normalizer', 'embed'): 'normalizer.embed.weight',
    }
    for path, key in cases.items():
      self.assertEqual(export.flax_path_to_torch_key(path), key)
    with self.assertRaisesRegex(ValueError, 'no official name'):
      export.flax_path_to_torch_key(('conv', 'weight'))
    with self.assertRaisesRegex(ValueError, 'no official position'):
      export.official_order('begin_conv.scale')

  @parameterized.parameters('ncsn', 'ncsnv2')
  def test_official_key_order(self, kind):
    states = _load(os.path.join(DATA, f'{kind}_legacy.pth'))
    config = fixture_config(kind)
    state, _ = official_checkpoint.convert(config, states)
    out = export.official_states(config, state)
    self.assertEqual(list(out[0]), list(states[0]))
    self.assertEqual(out[1]['param_groups'][0]['params'],
                     states[1]['param_groups'][0]['params'])
    if kind == 'ncsnv2':
      self.assertEqual(list(out[4]), list(states[4]))

  def test_deeper_models_have_a_name_and_place_for_every_parameter(self):
    for name in ('ncsnv2_deeper', 'ncsnv2_deepest'):
      config = tiny.get_config()
      config.model.name, config.model.ngf = name, 2
      config.data.image_size = 32
      params = jax.eval_shape(lambda c=config: train_state.init_params(
          c, models.create_model(c), jax.random.key(0)))
      flat = flax.traverse_util.flatten_dict(params)
      keys = [export.flax_path_to_torch_key(p) for p in flat]
      order = sorted(keys, key=export.official_order)
      self.assertLess(order.index('res3.0.conv1.weight'),
                      order.index('res4.0.conv1.weight'))
      if name == 'ncsnv2_deepest':
        self.assertLess(order.index('refine3.crp.convs.0.weight'),
                        order.index('refine31.adapt_convs.0.1_1_conv.weight'))
        self.assertLess(order.index('res3.1.normalize1.beta'),
                        order.index('res31.0.conv1.weight'))


class RoundTripTest(parameterized.TestCase):

  @parameterized.parameters('ncsn', 'ncsnv2')
  def test_export_then_import_is_identity(self, kind):
    config = fixture_config(kind)
    config.model.ema = kind == 'ncsnv2'
    state = trained_state(config)
    out = export.official_states(config, state)
    path = write(os.path.join(self.create_tempdir().full_path, 'x.pth'), out)
    loaded = _load(path)
    self.assertLen(loaded, 2 if kind == 'ncsn' else 5)
    back, info = official_checkpoint.convert(config, loaded)
    self.assertEqual(info['format'], kind)
    self.assertEqual(info['adam'], 'imported')
    assert_trees_equal(self, back.params, state.params)
    adam, want = back.opt_state[0], state.opt_state[0]
    self.assertEqual(int(adam.count), 2)
    assert_trees_equal(self, adam.mu, want.mu)
    assert_trees_equal(self, adam.nu, want.nu)
    if kind == 'ncsnv2':
      self.assertEqual(int(back.step), 2)
      assert_trees_equal(self, back.ema_params, state.ema_params)
      np.testing.assert_array_equal(loaded[0]['module.sigmas'],
                                    score.get_sigmas(config))
    else:
      self.assertNotIn('module.sigmas', loaded[0])

  def test_official_layout(self):
    config = fixture_config('ncsnv2')
    config.optim.weight_decay = 1e-4
    out = export.official_states(config, trained_state(config, steps=3))
    path = write(os.path.join(self.create_tempdir().full_path, 'x.pth'), out)
    model, optimizer, epoch, step, ema = _load(path)
    self.assertEqual((epoch, step), (0, 3))
    self.assertTrue(all(k.startswith('module.') for k in model))
    self.assertEqual(model['module.res2.0.conv2.conv.weight'].shape,
                     (4, 2, 3, 3))  # OIHW
    self.assertEqual(list(ema), [k[len('module.'):] for k in model][1:])
    group, = optimizer['param_groups']
    self.assertEqual(
        {k: group[k] for k in ('lr', 'betas', 'eps', 'weight_decay',
                               'amsgrad')},
        dict(lr=config.optim.lr, betas=(0.9, 0.999), eps=config.optim.eps,
             weight_decay=1e-4, amsgrad=False))
    self.assertEqual(group['params'], list(range(len(ema))))
    entry = optimizer['state'][7]
    self.assertEqual(entry['step'].shape, ())
    self.assertEqual(float(entry['step']), 3.0)
    self.assertEqual(entry['exp_avg'].shape, list(ema.values())[7].shape)

  def test_fresh_and_amsgrad_states_export_no_moments(self):
    config = fixture_config('ncsnv2')
    model = models.create_model(config)
    tx = train_state.create_optimizer(config)
    fresh = jax.device_get(train_state.create_train_state(config, model, tx,
                                                    jax.random.key(0)))
    self.assertEqual(export.official_states(config, fresh)[1]['state'], {})
    config.optim.amsgrad = True
    state = trained_state(config)
    optimizer = export.official_states(config, state)[1]
    self.assertEqual(optimizer['state'], {})
    self.assertTrue(optimizer['param_groups'][0]['amsgrad'])


class ExportCheckpointTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.config = fixture_config('ncsnv2')
    self.workdir = self.create_tempdir().full_path
    official_checkpoint.import_checkpoint(
        self.config, self.workdir, os.path.join(DATA, 'ncsnv2_legacy.pth'))
    self.out = os.path.join(self.create_tempdir().full_path, 'out.pth')

  def test_reproduces_the_official_file(self):
    self.assertEqual(export.export_checkpoint(self.config, self.workdir,
                                              self.out), 3)
    got = _load(self.out)
    want = _load(os.path.join(DATA, 'ncsnv2_legacy.pth'))
    for i in (0, 4):
      self.assertEqual(list(got[i]), list(want[i]))
      for key, value in want[i].items():
        np.testing.assert_array_equal(got[i][key], value, err_msg=key)
    self.assertEqual(got[3], want[3])
    for i, entry in want[1]['state'].items():
      self.assertEqual(float(got[1]['state'][i]['step']), entry['step'])
      for name in ('exp_avg', 'exp_avg_sq'):
        np.testing.assert_array_equal(got[1]['state'][i][name], entry[name])

  def test_refuses_to_overwrite_and_writes_atomically(self):
    with open(self.out, 'w') as f:
      f.write('keep me')
    with self.assertRaisesRegex(errors.InputError,
                                f'{self.out} already exists.*--overwrite'):
      export.export_checkpoint(self.config, self.workdir, self.out)
    with open(self.out) as f:
      self.assertEqual(f.read(), 'keep me')

    def broken(f, obj):
      del obj
      f.write(b'PK half a file')
      raise OSError('disk full')

    real = export.write_pth
    export.write_pth = broken
    try:
      with self.assertRaisesRegex(OSError, 'disk full'):
        export.export_checkpoint(self.config, self.workdir, self.out,
                                 overwrite=True)
    finally:
      export.write_pth = real
    with open(self.out) as f:
      self.assertEqual(f.read(), 'keep me')
    self.assertEqual(os.listdir(os.path.dirname(self.out)), ['out.pth'])
    export.export_checkpoint(self.config, self.workdir, self.out,
                             overwrite=True)
    self.assertLen(_load(self.out), 5)

  def test_missing_checkpoint(self):
    empty = self.create_tempdir().full_path
    with self.assertRaisesRegex(errors.CheckpointError, 'no checkpoint'):
      export.export_checkpoint(self.config, empty, self.out)
    self.config.sampling.ckpt_id = 99
    with self.assertRaisesRegex(errors.CheckpointError, 'step 99 not found'):
      export.export_checkpoint(self.config, self.workdir, self.out)
    self.assertFalse(os.path.exists(self.out))


class RunExportTest(absltest.TestCase):

  def test_run_py_export(self):
    tmp = self.create_tempdir().full_path
    workdir = os.path.join(tmp, 'run')
    config = fixture_config('ncsn')
    official_checkpoint.import_checkpoint(
        config, workdir, os.path.join(DATA, 'ncsn_zip.pth'), step=5)
    out = os.path.join(tmp, 'exported.pth')
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', JAX_PLATFORMS='cpu')

    def run(*flags):
      cmd = [sys.executable, os.path.join(ROOT, 'run.py'),
             f'--config={os.path.join(ROOT, "configs", "tiny.py")}',
             f'--workdir={workdir}', '--mode=export',
             '--config.model.name=ncsn', '--config.model.ema=False',
             f'--config.model.ngf={int(REF["ngf"])}',
             f'--config.data.image_size={int(REF["v1_image_size"])}',
             *flags]
      return subprocess.run(cmd, env=env, capture_output=True, text=True,
                            timeout=600, cwd=ROOT)

    result = run()
    self.assertEqual(result.returncode, 2)
    self.assertIn('error: --mode=export needs --checkpoint', result.stderr)
    result = run(f'--checkpoint={out}')
    self.assertEqual(result.returncode, 0, result.stderr[-3000:])
    self.assertIn(f'Exported step 5 of {workdir} as {out}', result.stdout)
    got = _load(out)
    want = _load(os.path.join(DATA, 'ncsn_zip.pth'))
    self.assertLen(got, 2)
    self.assertEqual(list(got[0]), list(want[0]))
    for key, value in want[0].items():
      np.testing.assert_array_equal(got[0][key], value, err_msg=key)
    result = run(f'--checkpoint={out}', '--config.sampling.ckpt_id=5')
    self.assertEqual(result.returncode, 2)
    self.assertIn(f'error: {out} already exists; pass --overwrite',
                  result.stderr)


class TorchCheckTest(absltest.TestCase):

  def test_the_fixture_tool_loaded_exports_with_torch(self):
    with open(os.path.join(DATA, 'export_check.json')) as f:
      report = json.load(f)
    for kind in ('ncsn', 'ncsnv2', 'ncsnv2_deeper', 'ncsnv2_deepest'):
      check = report[kind]
      for item in ('torch_load_weights_only',
                   'official_load_state_dict_strict', 'official_key_order',
                   'official_adam_load_and_step'):
        self.assertIs(check[item], True, f'{kind}: {item}')
      self.assertEqual(check['layout_length'], 2 if kind == 'ncsn' else 5)
      # float32 round-off of outputs of this scale (measured ~1e-6).
      self.assertLess(check['max_abs_diff'], 1e-5 * check['output_scale'])
      if kind != 'ncsn':
        self.assertIs(check['ema_key_order'], True)
        self.assertLess(check['ema_max_abs_diff'],
                        1e-5 * check['ema_output_scale'])


if __name__ == '__main__':
  absltest.main()
