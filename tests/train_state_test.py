"""Tests of the optimiser, the learning-rate schedule and the initial state."""

from absl.testing import absltest
from configs import tiny
import jax
import jax.numpy as jnp
import numpy as np

from ncsn_jax import config_checks
from ncsn_jax import models
from ncsn_jax import train_state


class OptimizerTest(absltest.TestCase):

  def test_adam_matches_formula_and_warmup(self):
    config = tiny.get_config()
    config.optim.lr, config.optim.warmup = 0.1, 4
    tx = train_state.create_optimizer(config)
    params = {'w': jnp.array([1.0, -2.0])}
    grads = {'w': jnp.array([0.5, 0.25])}
    state = tx.init(params)
    updates, state = tx.update(grads, state, params)
    np.testing.assert_allclose(updates['w'], 0.0)  # lr(0) = 0 in warmup
    updates, state = tx.update(grads, state, params)
    # Second Adam step with constant grads: m/(sqrt(v)+eps) = sign(g).
    np.testing.assert_allclose(updates["w"], -0.025 * np.sign([0.5, 0.25]),
                               rtol=1e-4)
    fn = train_state.create_learning_rate_fn(config)
    self.assertAlmostEqual(float(fn(2)), 0.05)
    self.assertAlmostEqual(float(fn(100)), 0.1)

  def test_gradient_clipping(self):
    config = tiny.get_config()
    config.optim.grad_clip = 1.0
    config.optim.lr = 1.0
    tx = train_state.create_optimizer(config)
    self.assertLen(tx.init({'w': jnp.zeros(2)}), 3)
    config.optim.optimizer = 'SGD'
    with self.assertRaisesRegex(ValueError, r'config\.optim\.optimizer'):
      config_checks.check_config(config, 'train')

  def test_initial_state(self):
    config = tiny.get_config()
    model = models.create_model(config)
    tx = train_state.create_optimizer(config)
    state = train_state.create_train_state(config, model, tx,
                                           jax.random.key(0))
    self.assertEqual(int(state.step), 0)
    for p, e in zip(jax.tree.leaves(state.params),
                    jax.tree.leaves(state.ema_params)):
      np.testing.assert_array_equal(p, e)
    other = train_state.create_train_state(config, model, tx,
                                           jax.random.key(1))
    self.assertFalse(np.allclose(jax.tree.leaves(state.params)[0],
                                 jax.tree.leaves(other.params)[0]))


if __name__ == '__main__':
  absltest.main()
