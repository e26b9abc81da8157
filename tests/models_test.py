"""Tests of the score networks: parameter counts, shapes, call contract."""

from absl.testing import absltest
from absl.testing import parameterized
from configs import default
import jax
import jax.numpy as jnp
import numpy as np

from ncsn_jax import config_checks
from ncsn_jax import models
from ncsn_jax.models import score


def make_config(name, ngf, num_classes, size, channels, sigma_begin=50.0):
  config = default.get_default_config()
  config.model.name = name
  config.model.ngf = ngf
  config.model.num_classes = num_classes
  config.model.sigma_begin = sigma_begin
  config.data.image_size = size
  config.data.channels = channels
  return config


def abstract_params(config):
  model = models.create_model(config)
  size, ch = config.data.image_size, config.data.channels
  shapes = jax.eval_shape(model.init, jax.random.key(0),
                          jnp.zeros((1, size, size, ch)),
                          jnp.zeros((1,), jnp.int32))
  return shapes['params']


class ModelsTest(parameterized.TestCase):

  @parameterized.named_parameters(
      ('ncsnv2_cifar10', 'ncsnv2', 128, 232, 32, 3, 29_694_083),
      ('ncsnv2_celeba64', 'ncsnv2', 128, 500, 64, 3, 29_694_083),
      ('ncsnv2_28px_ngf64', 'ncsnv2', 64, 10, 28, 1, 7_426_881),
      ('ncsn_cifar10', 'ncsn', 128, 10, 32, 3, 30_117_635),
      ('ncsn_mnist', 'ncsn', 64, 10, 28, 1, 7_638_657),
      ('ncsnv2_deeper', 'ncsnv2_deeper', 128, 788, 64, 3, 83_445_379),
      ('ncsnv2_deepest', 'ncsnv2_deepest', 128, 2311, 256, 3, 94_132_611))
  def test_parameter_count_equals_official(self, name, ngf, num_classes, size,
                                           channels, expected):
    config = make_config(name, ngf, num_classes, size, channels)
    self.assertEqual(models.count_params(abstract_params(config)), expected)

  def test_ncsn_embedding_share(self):
    params = abstract_params(make_config('ncsn', 128, 10, 32, 3))
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    n_embed = sum(int(np.prod(v.shape)) for p, v in flat
                  if 'embed' in jax.tree_util.keystr(p))
    self.assertEqual(n_embed, 433_920)

  def test_pytorch_module_names(self):
    params = abstract_params(make_config('ncsnv2', 8, 4, 8, 3))
    self.assertContainsSubset(
        ['begin_conv', 'normalizer', 'end_conv', 'res1_0', 'res2_0', 'res4_1',
         'refine1', 'refine4'], list(params))
    self.assertContainsSubset(['conv', ], list(params['res2_0']['conv2']))
    self.assertContainsSubset(['adapt_convs_0', 'adapt_convs_1', 'msf', 'crp',
                               'output_convs'], list(params['refine2']))
    self.assertNotIn('msf', params['refine1'])
    self.assertIn('3_2_conv', params['refine4']['output_convs'])
    self.assertEqual(params['refine3']['output_convs']['1_1_conv']
                     ['kernel'].shape, (3, 3, 8, 8))  # refine3 width is F

  @parameterized.parameters(('ncsnv2', 8), ('ncsnv2', 12), ('ncsn', 10),
                            ('ncsnv2_deeper', 16), ('ncsnv2_deepest', 16))
  def test_output_shape_any_valid_size(self, name, size):
    config = make_config(name, 4, 3, size, 1, sigma_begin=1.0)
    model = models.create_model(config)
    x = jnp.linspace(0, 1, 2 * size * size).reshape(2, size, size, 1)
    y = jnp.array([0, 2], jnp.int32)
    variables = model.init(jax.random.key(0), x, y)
    out = model.apply(variables, x, y)
    self.assertEqual(out.shape, x.shape)
    self.assertEqual(out.dtype, jnp.float32)
    self.assertTrue(np.isfinite(np.asarray(out)).all())

  def test_ncsnv2_divides_by_sigma(self):
    config = make_config('ncsnv2', 4, 3, 8, 3, sigma_begin=4.0)
    model = models.create_model(config)
    raw = model.clone(scale_by_sigma=False)
    x = jax.random.uniform(jax.random.key(1), (3, 8, 8, 3))
    y = jnp.array([0, 1, 2], jnp.int32)
    variables = model.init(jax.random.key(0), x, y)
    sigmas = score.get_sigmas(config)
    np.testing.assert_allclose(
        model.apply(variables, x, y) * sigmas[:, None, None, None],
        raw.apply(variables, x, y), rtol=1e-5, atol=1e-6)

  def test_ncsn_is_conditioned_on_every_label(self):
    config = make_config('ncsn', 4, 3, 8, 3, sigma_begin=1.0)
    model = models.create_model(config)
    x = jax.random.uniform(jax.random.key(1), (1, 8, 8, 3))
    variables = model.init(jax.random.key(0), x, jnp.zeros(1, jnp.int32))
    outs = [model.apply(variables, x, jnp.array([i])) for i in range(3)]
    self.assertGreater(float(jnp.abs(outs[0] - outs[1]).max()), 1e-4)
    self.assertGreater(float(jnp.abs(outs[1] - outs[2]).max()), 1e-4)

  def test_rescale_input(self):
    config = make_config('ncsnv2', 4, 3, 8, 3, sigma_begin=1.0)
    config.data.rescaled = True
    model = models.create_model(config)
    self.assertFalse(model.rescale_input)
    x = jax.random.uniform(jax.random.key(1), (1, 8, 8, 3))
    y = jnp.zeros(1, jnp.int32)
    variables = model.init(jax.random.key(0), x, y)
    np.testing.assert_allclose(
        model.apply(variables, 2 * x - 1, y),
        model.clone(rescale_input=True).apply(variables, x, y), atol=1e-5)

  def test_errors_name_the_field(self):
    # The model fields are checked with the config (config_checks), before
    # create_model is called.
    check = config_checks.check_model
    with self.assertRaisesRegex(ValueError, r'config\.model\.name'):
      check(make_config('resnet', 4, 3, 8, 3))
    with self.assertRaisesRegex(ValueError, r'config\.data\.image_size=7'):
      check(make_config('ncsnv2', 4, 3, 7, 3))
    with self.assertRaisesRegex(ValueError, r'config\.data\.image_size=12'):
      check(make_config('ncsnv2_deepest', 4, 3, 12, 3))
    config = make_config('ncsnv2', 4, 3, 8, 3)
    config.model.dtype = 'float16'
    with self.assertRaisesRegex(ValueError, r'config\.model\.dtype'):
      check(config)

  def test_remat_gives_same_gradients(self):
    config = make_config('ncsnv2', 4, 3, 8, 3, sigma_begin=1.0)
    model = models.create_model(config)
    x = jax.random.uniform(jax.random.key(1), (2, 8, 8, 3))
    y = jnp.array([0, 2], jnp.int32)
    params = model.init(jax.random.key(0), x, y)['params']
    grad = lambda m: jax.grad(
        lambda p: jnp.sum(m.apply({'params': p}, x, y)**2))(params)
    for a, b in zip(jax.tree.leaves(grad(model)),
                    jax.tree.leaves(grad(model.clone(remat=True)))):
      # Float32 recomputation: compare relative to the tensor's scale.
      np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * np.abs(a).max())


class NoiseTest(parameterized.TestCase):

  def test_cifar10_geometric_levels(self):
    sigmas = score.make_sigmas(50.0, 0.01, 232)
    self.assertEqual(sigmas.dtype, np.float32)
    np.testing.assert_array_equal(
        sigmas[:3], np.float32([50.0, 48.190025, 46.445568]))
    np.testing.assert_array_equal(sigmas[-2:],
                                  np.float32([0.010375591, 0.0099999998]))

  def test_v1_geometric_levels(self):
    sigmas = score.make_sigmas(1.0, 0.01, 10)
    np.testing.assert_array_equal(
        sigmas[:3], np.float32([1.0, 0.59948426, 0.35938138]))
    np.testing.assert_array_equal(sigmas[-2:],
                                  np.float32([0.016681006, 0.0099999998]))
    ratio = sigmas[1:].astype(np.float64) / sigmas[:-1]
    np.testing.assert_allclose(ratio, 0.599484, rtol=1e-6)

  def test_uniform_levels_and_errors(self):
    np.testing.assert_allclose(score.make_sigmas(1.0, 0.1, 4, 'uniform'),
                               [1.0, 0.7, 0.4, 0.1], rtol=1e-6)
    config = make_config('ncsnv2', 4, 3, 8, 3)
    config.model.sigma_dist = 'cosine'
    with self.assertRaisesRegex(ValueError, 'sigma_dist'):
      config_checks.check_model(config)
    config = make_config('ncsnv2', 4, 3, 8, 3, sigma_begin=0.001)
    with self.assertRaisesRegex(ValueError, 'sigma_begin'):
      config_checks.check_model(config)


if __name__ == '__main__':
  absltest.main()
