"""Tests of inpainting, interpolation and the sample-mode figures."""

import json

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from configs import tiny
from ncsn_jax import image_io
from ncsn_jax import models
from ncsn_jax import noise
from ncsn_jax import parallel
from ncsn_jax.data import input_pipeline
from ncsn_jax.evaluation import evaluate
from ncsn_jax.sampling import figures
from ncsn_jax.sampling import langevin
from ncsn_jax.training import checkpointing
from ncsn_jax.training import train
from tests import score_models

zero_score = lambda x, y: jnp.zeros_like(x)


def small_model(config, batch):
  model = score_models.PixelModel(config.model.num_classes)
  x0 = langevin.init_samples(jax.random.key(0), config, batch)
  params = model.init(jax.random.key(1), x0, jnp.zeros(batch, jnp.int32))[
      'params']
  return model, params, x0


class MaskTest(parameterized.TestCase):

  @parameterized.parameters(('right_half', 32), ('left_half', 32),
                            ('top_half', 32), ('bottom_half', 32),
                            ('center', 48))
  def test_masks(self, kind, known):
    mask = figures.make_mask(kind, (8, 8, 3))
    self.assertEqual(mask.shape, (8, 8, 3))
    self.assertEqual(int(mask[..., 0].sum()), known)
    np.testing.assert_array_equal(mask[..., 0], mask[..., 2])
    if kind == 'right_half':  # NCSNv2: the left half columns are known.
      self.assertTrue((mask[:, :4] == 1).all() and (mask[:, 4:] == 0).all())

  def test_random_mask_and_errors(self):
    mask = figures.make_mask('random', (32, 32, 1), jax.random.key(0))
    self.assertAlmostEqual(float(mask.mean()), 0.5, delta=0.05)
    with self.assertRaisesRegex(ValueError, 'config.sampling.inpainting_mask'):
      figures.make_mask('square', (8, 8, 1))


class InpaintingTest(absltest.TestCase):

  def test_known_pixels_get_fresh_noise_and_end_exact(self):
    # With a zero score, the known pixels after update t are
    # ref + sigma_c z'_t + sqrt(2 alpha_c) z_t with fresh z'_t every step.
    sigmas = jnp.array([2.0, 1.0])
    b, shape = 2000, (1, 4, 1)
    ref = jnp.full((b,) + shape, 0.3)
    mask = figures.make_mask('right_half', (1, 4, 1))
    x0 = jnp.full((b,) + shape, 5.0)
    x, traj = figures.annealed_langevin_inpainting(
        zero_score, x0, jax.random.key(0), sigmas, 3, 0.01, ref, mask,
        record_every=1)
    self.assertEqual(traj.shape, (6, b) + shape)
    residual = np.asarray(traj[:, :, 0, :2, 0] - 0.3).reshape(6, -1)
    for t in range(6):
      sigma = float(sigmas[t // 3])
      alpha = 0.01 * sigma**2
      self.assertAlmostEqual(residual[t].var() / (sigma**2 + 2 * alpha), 1.0,
                             delta=0.06)
    for t in range(5):
      self.assertLess(abs(np.corrcoef(residual[t], residual[t + 1])[0, 1]),
                      0.05)
    np.testing.assert_array_equal(x[:, :, :2], ref[:, :, :2])
    # The unknown pixels only saw Langevin noise (zero score).
    unknown = np.asarray(x[:, 0, 2:, 0]).ravel() - 5.0
    self.assertAlmostEqual(unknown.var() / (2 * 0.01 * (12 + 3)), 1.0,
                           delta=0.06)

  def test_fills_in_the_gaussian_conditional(self):
    # Two correlated pixels, rho = 0.8; the known one is a = 1.5, so the
    # unknown one must follow N(rho a, 1 - rho^2) (+ sigma_L^2).
    rho, a = 0.8, 1.5
    cov = jnp.array([[1.0, rho], [rho, 1.0]])
    sigmas = jnp.asarray(noise.make_sigmas(3.0, 0.05, 10))

    def score(x, y):
      flat = x.reshape(x.shape[0], 2)
      precision = jnp.linalg.inv(cov[None] + sigmas[y][:, None, None]**2 *
                                 jnp.eye(2))
      return -jnp.einsum('bij,bj->bi', precision, flat).reshape(x.shape)

    b = 4000
    ref = jnp.full((b, 1, 2, 1), a)
    mask = figures.make_mask('right_half', (1, 2, 1))
    x0 = jax.random.uniform(jax.random.key(0), (b, 1, 2, 1))
    x, _ = jax.jit(lambda x0: figures.annealed_langevin_inpainting(
        score, x0, jax.random.key(1), sigmas, 100, 2e-3, ref, mask))(x0)
    filled = np.asarray(x[:, 0, 1, 0])
    np.testing.assert_array_equal(x[:, 0, 0, 0], a)
    self.assertAlmostEqual(filled.mean(), rho * a, delta=0.04)
    self.assertAlmostEqual(filled.var(), 1 - rho**2 + 0.05**2, delta=0.04)

  def test_devices_complete_their_own_references(self):
    config = tiny.get_config()
    model, params, x0 = small_model(config, 8)
    ref = jax.random.uniform(jax.random.key(5), x0.shape)
    # A different mask per chain: devices must slice masks and references.
    mask = jax.random.bernoulli(jax.random.key(6), 0.5, x0.shape).astype(
        jnp.float32)
    sample_fn = figures.get_inpainting_sampler(config, model, ref,
                                                      mask)
    single, _ = jax.jit(sample_fn)(params, x0, jax.random.key(3))
    multi, _ = parallel.p_sample(sample_fn, params, x0, jax.random.key(3))
    np.testing.assert_allclose(multi, single, rtol=1e-5, atol=1e-5)
    m = np.asarray(mask) == 1
    np.testing.assert_array_equal(multi[m], np.asarray(ref)[m])
    self.assertGreater(np.abs(multi[~m] - np.asarray(ref)[~m]).min(), 0)


class InterpolationTest(absltest.TestCase):

  def test_noise_interpolates_between_the_end_chains(self):
    sigmas = jnp.array([2.0, 1.0, 0.5])
    rows, n = 3, 5
    x0 = jax.random.normal(jax.random.key(0), (rows, 2, 2, 1))
    x, traj = figures.annealed_langevin_interpolation(
        zero_score, x0, jax.random.key(1), sigmas, 4, 0.01, n,
        record_every=4)
    self.assertEqual(x.shape, (rows * n, 2, 2, 1))
    self.assertEqual(traj.shape, (3, rows * n, 2, 2, 1))
    drift = np.asarray(x).reshape(rows, n, -1) - np.asarray(x0).reshape(
        rows, 1, -1)
    theta = np.linspace(0, np.pi / 2, n)
    for k in range(n):
      np.testing.assert_allclose(
          drift[:, k], np.cos(theta[k]) * drift[:, 0] +
          np.sin(theta[k]) * drift[:, -1], atol=1e-5)
    self.assertGreater(np.abs(drift[0, 0] - drift[1, 0]).min(), 0)
    # theta = 0 is chain p alone: the same as a single-chain row.
    alone, _ = figures.annealed_langevin_interpolation(
        zero_score, x0, jax.random.key(1), sigmas, 4, 0.01, 1)
    np.testing.assert_array_equal(np.asarray(x).reshape(rows, n, 2, 2, 1)[
        :, 0], alone)

  def test_every_chain_has_unit_variance_noise(self):
    x0 = jnp.zeros((4000, 1))
    x, _ = figures.annealed_langevin_interpolation(
        zero_score, x0, jax.random.key(0), jnp.array([1.0]), 1, 0.5, 4)
    per_chain = np.asarray(x).reshape(4000, 4)
    np.testing.assert_allclose(per_chain.var(axis=0), 1.0, atol=0.07)

  def test_pmap_matches_one_device(self):
    config = tiny.get_config()
    config.sampling.n_interpolations = 3
    config.sampling.record_every = 4
    model, params, x0 = small_model(config, 4)
    sample_fn = figures.get_interpolation_sampler(config, model)
    single, traj_single = jax.jit(sample_fn)(params, x0, jax.random.key(3))
    multi, traj_multi = parallel.p_sample(sample_fn, params, x0,
                                          jax.random.key(3))
    self.assertEqual(multi.shape, (12, 8, 8, 3))
    np.testing.assert_allclose(multi, single, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(traj_multi, traj_single, rtol=1e-5, atol=1e-5)


class SampleModeFiguresTest(absltest.TestCase):

  def test_sample_mode_writes_every_figure(self):
    config = tiny.get_config()
    config.data.dataset = 'digits'
    config.data.channels = 1
    s = config.sampling
    s.batch_size = 8
    s.record_every = 2  # 4 levels x 2 steps: 4 states + the denoised one.
    s.inpainting = True
    s.completions = 2
    s.interpolation = True
    s.n_interpolations = 2
    s.nearest_neighbors = 3
    workdir = self.create_tempdir().full_path
    model = models.create_model(config)
    tx = train.create_optimizer(config)
    state = train.create_train_state(config, model, tx, jax.random.key(0))
    checkpointing.save(checkpointing.create_manager(workdir), 1, state)

    paths = evaluate.sample(config, workdir)
    size = lambda name: Image.open(paths[name]).size  # (width, height)
    cell = 8 + 2  # Image plus padding; grids are upscaled 8x.
    self.assertEqual(size('grid'), ((3 * cell + 2) * 8, (3 * cell + 2) * 8))
    # Process figure: one row per sample (8), one column per kept state.
    self.assertEqual(size('process'), ((5 * cell + 2) * 8, (8 * cell + 2) * 8))
    with Image.open(paths['gif']) as gif:
      self.assertEqual(gif.n_frames, 5)
    # Inpainting rows: masked image, 2 completions, original (4 references).
    self.assertEqual(size('inpainting'), ((4 * cell + 2) * 8,
                                          (4 * cell + 2) * 8))
    grid = np.asarray(Image.open(paths['inpainting']))[::8, ::8]
    refs = input_pipeline.load_split_arrays(config, 'test', 4)
    original = grid[2:10, 3 * cell + 2:3 * cell + 10]
    np.testing.assert_array_equal(original,
                                  image_io.to_uint8(refs[0, ..., 0]))
    completion = grid[2:10, cell + 2:cell + 10]
    np.testing.assert_array_equal(completion[:, :4], original[:, :4])
    self.assertEqual(size('interpolation'), ((2 * cell + 2) * 8,
                                             (4 * cell + 2) * 8))
    self.assertEqual(size('nearest'), ((4 * cell + 2) * 8,
                                       (8 * cell + 2) * 8))
    # Nearest neighbours are the closest training images.
    with open(paths['nearest_json']) as f:
      report = json.load(f)
    samples = image_io.load_npz_images(paths['npz']) / 255.0
    train_images = input_pipeline.load_split_arrays(config, 'train')
    d = np.sqrt(((samples[:, None] - train_images[None])**2).sum((2, 3, 4)))
    for i, (idx, dist) in enumerate(zip(report['indices'],
                                        report['distances'])):
      self.assertLen(idx, 3)
      self.assertLessEqual(dist[0], d[i].min() + 0.02)  # uint8 rounding.
      np.testing.assert_allclose(d[i, idx], dist, atol=0.02)


if __name__ == '__main__':
  absltest.main()
