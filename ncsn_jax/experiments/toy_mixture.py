"""The 2-D Gaussian mixture of the NCSN toy experiments, with exact scores.

p = 1/5 N((-5,-5), I) + 4/5 N((5,5), I) (Song & Ermon 2019, section 3), and
its convolution with N(0, sigma^2 I), whose log density and score are known
in closed form.
"""

import jax
import jax.numpy as jnp
import numpy as np

WEIGHTS = (0.2, 0.8)
MEANS = ((-5.0, -5.0), (5.0, 5.0))
# Score-error regions: within HIGH of a mode, farther than LOW from both.
HIGH_DENSITY_RADIUS = 2.0
LOW_DENSITY_RADIUS = 4.0


def sample_data(key: jax.Array, n: int) -> jax.Array:
  """`n` i.i.d. draws `[n, 2]` from the mixture."""
  comp_key, noise_key = jax.random.split(key)
  comp = jax.random.choice(comp_key, 2, (n,), p=jnp.asarray(WEIGHTS))
  return jnp.asarray(MEANS)[comp] + jax.random.normal(noise_key, (n, 2))


def log_density(x: jax.Array, sigma=0.0) -> jax.Array:
  """log of the mixture convolved with N(0, sigma^2 I), `[N, 2]` -> `[N]`."""
  var = 1.0 + jnp.asarray(sigma)**2
  sq = jnp.sum((x[:, None, :] - jnp.asarray(MEANS)[None])**2, axis=-1)
  log_comp = jnp.log(jnp.asarray(WEIGHTS)) - 0.5 * sq / var - jnp.log(
      2 * jnp.pi * var)
  return jax.nn.logsumexp(log_comp, axis=-1)


def true_score(x: jax.Array, sigma=0.0) -> jax.Array:
  """grad_x log of the (perturbed) mixture density, `[N, 2]`."""
  return jax.grad(lambda x: jnp.sum(log_density(x, sigma)))(x)


def upper_mode_fraction(x) -> float:
  """Share of points closer to (5, 5) than to (-5, -5)."""
  return float(np.mean(np.asarray(x).sum(axis=-1) > 0))
