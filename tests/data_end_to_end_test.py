"""Real data end to end, offline: tfds's CIFAR-10 builder and an image folder.

tfds's own cifar10 builder (no mock) downloads a tiny archive in CIFAR-10's
binary format from a loopback HTTP server (only the URL it fetches is changed)
and prepares it into a temporary data_dir through `config.data.download=True`;
run.py then trains 4 steps and sweeps IS/FID/KID over its two checkpoints
on it. A folder of real PNG and JPEG files of mixed sizes and modes trains 2
steps and is evaluated. A data set that is not in
`config.data.data_dir` fails every mode that reads data in one line.
"""

import functools
import http.server
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
from unittest import mock

from absl.testing import absltest
from absl.testing import parameterized
from configs import tiny
import jax
import numpy as np
from PIL import Image
from tensorflow_datasets.image_classification import cifar

from ncsn_jax import checkpoints
from ncsn_jax import errors
from ncsn_jax import models
from ncsn_jax import train_state
from ncsn_jax.data import input_pipeline
from ncsn_jax.evaluation import evaluate
from ncsn_jax.evaluation import sample_quality
from ncsn_jax.experiments import tune

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_TRAIN_FILES = [f'data_batch_{i}.bin' for i in range(1, 6)]
_PER_FILE = 4  # Records per batch file: 20 training and 4 test images.


def write_cifar10_archive(path: str, seed: int = 0) -> dict[str, np.ndarray]:
  """A tiny `cifar-10-binary.tar.gz`: the real names, layout and records.

  Each record is 1 label byte and 3072 pixel bytes (1024 red, then green,
  then blue, row-major). Returns the images per split as uint8 `[N,32,32,3]`.
  """
  rng = np.random.RandomState(seed)
  images = {'train': [], 'test': []}
  with tarfile.open(path, 'w:gz') as tar:

    def add(name, data):
      info = tarfile.TarInfo('cifar-10-batches-bin/' + name)
      info.size = len(data)
      tar.addfile(info, io.BytesIO(data))

    names = ['airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog',
             'horse', 'ship', 'truck']
    add('batches.meta.txt', ('\n'.join(names) + '\n').encode())
    for name in _TRAIN_FILES + ['test_batch.bin']:
      hwc = rng.randint(0, 256, (_PER_FILE, 32, 32, 3)).astype(np.uint8)
      labels = rng.randint(0, 10, (_PER_FILE, 1)).astype(np.uint8)
      chw = hwc.transpose(0, 3, 1, 2).reshape(_PER_FILE, -1)
      add(name, np.concatenate([labels, chw], axis=1).tobytes())
      images['test' if name == 'test_batch.bin' else 'train'].append(hwc)
  return {k: np.concatenate(v) for k, v in images.items()}


class _QuietHandler(http.server.SimpleHTTPRequestHandler):

  def log_message(self, *args):
    del args


def serve_folder(folder: str):
  """A loopback-only HTTP server of `folder`; returns (server, thread)."""
  handler = functools.partial(_QuietHandler, directory=folder)
  server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
  server.timeout = 10
  thread = threading.Thread(target=server.serve_forever, daemon=True)
  thread.start()
  return server, thread


def stop_server(server, thread):
  server.shutdown()
  server.server_close()
  thread.join(timeout=10)


def cifar10_url_patch(url: str):
  """Points tfds's cifar10 builder at `url` (nothing else is changed)."""
  original = cifar.Cifar10._cifar_info  # pylint: disable=protected-access
  return mock.patch.object(
      cifar.Cifar10, '_cifar_info',
      property(lambda self: original.fget(self)._replace(url=url)))


def sorted_rows(images: np.ndarray) -> np.ndarray:
  flat = images.reshape(len(images), -1)
  return flat[np.lexsort(flat.T[::-1])]


def run(workdir, mode, *flags, config='configs/tiny.py:cifar10', n_iters=2):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', JAX_PLATFORMS='cpu')
  cmd = [sys.executable, os.path.join(ROOT, 'run.py'),
         f'--config={os.path.join(ROOT, config)}', f'--workdir={workdir}',
         f'--mode={mode}', f'--config.training.n_iters={n_iters}', *flags]
  return subprocess.run(cmd, env=env, capture_output=True, text=True,
                        timeout=600, cwd=ROOT)


def error_lines(result) -> list[str]:
  return [l for l in result.stderr.splitlines() if l.startswith('error: ')]


class TfdsCifar10Test(parameterized.TestCase):
  """tfds's real cifar10 builder, prepared once from a loopback server."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    root = cls.root = tempfile.mkdtemp()
    cls.data_dir = os.path.join(root, 'tfds')
    served = os.path.join(root, 'served')
    os.makedirs(served, exist_ok=True)
    cls.images = write_cifar10_archive(
        os.path.join(served, 'cifar-10-binary.tar.gz'))
    server, thread = serve_folder(served)
    url = f'http://127.0.0.1:{server.server_port}/cifar-10-binary.tar.gz'
    config = tiny.get_config('cifar10')
    config.data.data_dir, config.data.download = cls.data_dir, True
    config.data.image_size = 32
    try:
      with cifar10_url_patch(url), mock.patch.dict(
          os.environ, {'NO_PROXY': '127.0.0.1', 'no_proxy': '127.0.0.1'}):
        cls.train = input_pipeline.load_split_arrays(config, 'train')
    finally:
      stop_server(server, thread)
    cls.config = config

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.root)
    super().tearDownClass()

  def test_prepared_splits_are_the_archive(self):
    self.assertTrue(os.path.isdir(os.path.join(self.data_dir, 'cifar10')))
    self.config.data.download = False  # Read back what tfds prepared.
    test = input_pipeline.load_split_arrays(self.config, 'test')
    for split, images in (('train', self.train), ('test', test)):
      self.assertEqual(images.shape, self.images[split].shape)
      np.testing.assert_array_equal(sorted_rows(np.round(images * 255)),
                                    sorted_rows(self.images[split]))

  def test_run_py_trains_and_evaluates(self):
    workdir = self.create_tempdir().full_path
    data = f'--config.data.data_dir={self.data_dir}'
    result = run(workdir, 'train', data, n_iters=4)
    self.assertEqual(result.returncode, 0, result.stderr[-3000:])
    self.assertEqual(sorted(os.listdir(os.path.join(workdir, 'checkpoints'))),
                     ['2', '4'])
    # A fast-FID sweep over both checkpoints names the best one, labelled
    # as not comparable with the papers' 50k-sample FID.
    result = run(workdir, 'eval', data, '--config.eval.begin_ckpt=1',
                 n_iters=4)
    self.assertEqual(result.returncode, 0, result.stderr[-3000:])
    with open(os.path.join(workdir, 'eval', 'sweep.json')) as f:
      sweep = json.load(f)
    self.assertEqual(sweep['criterion'], 'fid')
    fids = {r['step']: r['fid'] for r in sweep['rows']}
    self.assertEqual(sorted(fids), [2, 4])
    self.assertEqual(sweep['best_step'], min(fids, key=fids.get))
    self.assertIn('not comparable', sweep['note'])
    self.assertIn(f'best checkpoint by fid: {sweep["best_step"]}',
                  result.stdout)
    with open(os.path.join(workdir, 'eval', 'report_4.json')) as f:
      report = json.load(f)
    self.assertEqual(report['step'], 4)
    self.assertTrue(np.isfinite(report['test_dsm_loss']))
    self.assertGreater(report['test_dsm_loss'], 0)
    # IS/FID/KID with the real FID trunk (make test fetches it); no cached
    # reference stats: the 4-image test split, read on the fly.
    self.assertGreater(report['fid'], 0)
    self.assertTrue(np.isfinite(report['kid']))
    self.assertIn('fc head', report['inception_score_note'])
    self.assertEqual(report['inception']['num_samples'], 8)
    self.assertEqual(report['inception']['num_reference'], 4)
    self.assertIn('on the fly', report['inception']['reference'])
    self.assertEqual(len(report['inception']['weights_trunk_sha256']), 64)
    self.assertFalse(report['inception']['comparable_to_papers'])

  @parameterized.parameters('train', 'eval', 'fid_stats', 'tune')
  def test_missing_data_set_is_one_line(self, mode):
    """Every mode that reads data fails with one line on it.

    Train runs run.py, which prints an input error as one `error:` line and
    exits 2 in every mode (tests/run_test.py); the other modes call what
    run.py calls for them, in this process.
    """
    workdir = self.create_tempdir().full_path
    empty = self.create_tempdir().full_path
    config = tiny.get_config('cifar10')
    config.data.data_dir = empty
    if mode == 'eval':  # With a checkpoint: it fails before sampling it.
      model = models.create_model(config)
      state = train_state.create_train_state(
          config, model, train_state.create_optimizer(config),
          jax.random.key(0))
      checkpoints.save(checkpoints.create_manager(workdir), 1, state)
    if mode == 'train':
      result = run(workdir, mode, f'--config.data.data_dir={empty}')
      self.assertEqual(result.returncode, 2, result.stderr[-3000:])
      self.assertNotIn('Traceback', result.stderr)
      lines = error_lines(result)
      self.assertLen(lines, 1, result.stderr[-3000:])
      line = lines[0]
    else:
      work = {'eval': lambda: evaluate.evaluate(config, workdir),
              'fid_stats': lambda: sample_quality.reference_stats(config),
              'tune': lambda: tune.tune(config, workdir)}[mode]
      with self.assertRaises(errors.InputError) as e:
        work()
      line = str(e.exception)
      self.assertNotIn('\n', line)
    if mode == 'eval':
      self.assertFalse(os.path.exists(os.path.join(workdir, 'eval', 'step_1')))
    for part in ('cifar10/3.0.2', f'config.data.data_dir={empty}',
                 os.path.join(empty, 'cifar10', '3.0.2'),
                 '--config.data.download=True', 'tfds build cifar10',
                 '--config.data.dataset=image_folder'):
      self.assertIn(part, line)

  def test_download_that_fails_is_one_line(self):
    server, thread = serve_folder(self.create_tempdir().full_path)
    url = f'http://127.0.0.1:{server.server_port}/cifar-10-binary.tar.gz'
    config = tiny.get_config('cifar10')
    config.data.data_dir = self.create_tempdir().full_path
    config.data.download = True
    try:
      with cifar10_url_patch(url), mock.patch.dict(
          os.environ, {'NO_PROXY': '127.0.0.1', 'no_proxy': '127.0.0.1'}):
        with self.assertRaisesRegex(
            errors.ConfigError,
            r'could not download and prepare cifar10/3\.0\.2 into .*'
            r'HTTP code: 404.*tfds build cifar10'):
          input_pipeline.load_split_arrays(config, 'test')
    finally:
      stop_server(server, thread)


def write_mixed_folder(folder: str, n: int = 30) -> None:
  """n real PNG/JPEG files: RGB, L and RGBA, sizes 9..40, some nested."""
  rng = np.random.RandomState(1)
  for i in range(n):
    mode = ('RGB', 'L', 'RGBA')[i % 3]
    height, width = rng.randint(9, 41, 2)
    shape = (height, width) + ({'RGB': (3,), 'L': (), 'RGBA': (4,)}[mode])
    image = Image.fromarray(rng.randint(0, 256, shape).astype(np.uint8), mode)
    ext = 'png' if mode == 'RGBA' or i % 2 else 'jpg'
    path = os.path.join(folder, 'sub' if i % 4 == 0 else '', f'{i:02d}.{ext}')
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image.save(path)


class ImageFolderRunTest(absltest.TestCase):

  def test_run_py_trains_and_evaluates_on_a_folder(self):
    folder = self.create_tempdir().full_path
    write_mixed_folder(folder)
    open(os.path.join(folder, 'empty.png'), 'wb').close()
    with open(os.path.join(folder, 'notes.png'), 'w') as f:
      f.write('not an image')
    workdir = self.create_tempdir().full_path
    flags = [f'--config.data.data_dir={folder}',
             '--config.eval.num_samples=0', '--config.data.test_fraction=0.3']
    config = 'configs/tiny.py:image_folder'
    result = run(workdir, 'train', *flags, config=config)
    self.assertEqual(result.returncode, 0, result.stderr[-3000:])
    self.assertIn('skipping 2 of 32 image files: empty.png (empty file); '
                  'notes.png (not a PNG/JPEG image)', result.stderr)
    result = run(workdir, 'eval', *flags, config=config)
    self.assertEqual(result.returncode, 0, result.stderr[-3000:])
    with open(os.path.join(workdir, 'eval', 'report_2.json')) as f:
      self.assertTrue(np.isfinite(json.load(f)['test_dsm_loss']))


  def test_fewer_images_than_one_batch_is_one_line(self):
    folder = self.create_tempdir().full_path
    write_mixed_folder(folder, n=3)
    result = run(self.create_tempdir().full_path, 'train',
                 f'--config.data.data_dir={folder}',
                 '--config.training.batch_size=64',
                 '--config.eval.batch_size=64',
                 config='configs/tiny.py:image_folder')
    self.assertEqual(result.returncode, 2, result.stderr[-3000:])
    self.assertNotIn('Traceback', result.stderr)
    lines = error_lines(result)
    self.assertLen(lines, 1)
    self.assertRegex(lines[0], r"split 'train' of the image folder .* has 3 "
                     r'examples, fewer than one batch of '
                     r'config.training.batch_size=64')


if __name__ == '__main__':
  absltest.main()
