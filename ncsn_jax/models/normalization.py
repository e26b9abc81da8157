"""InstanceNorm++ (NCSNv2) and its noise-conditional form (NCSN v1), NHWC.

Both normalise each example and channel over the spatial axes with the
biased variance and eps = 1e-5 inside the square root, as PyTorch's
`InstanceNorm2d`, then add back the channel means, normalised across
channels with the unbiased variance (PyTorch `torch.var` default), so that
colour shifts are not lost. Both take `(x, y)`: the conditional one reads
its parameters from a table indexed by the noise label `y` `[B]`, the other
ignores `y`. Statistics are computed in float32 whatever the input dtype.
"""

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

EPS = 1e-5


def normal_one_init(stddev: float = 0.02):
  """N(1, stddev^2) initialiser for scales (gamma, alpha)."""

  def init(key, shape, dtype=jnp.float32):
    return 1.0 + stddev * jax.random.normal(key, shape, dtype)

  return init


def instance_norm(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Plain instance norm of `x` `[B,H,W,C]`; returns (normed, means `[B,C]`)."""
  x = x.astype(jnp.float32)
  means = jnp.mean(x, axis=(1, 2))
  variances = jnp.var(x, axis=(1, 2))
  normed = (x - means[:, None, None, :]) * jax.lax.rsqrt(
      variances[:, None, None, :] + EPS)
  return normed, means


def normalised_means(means: jax.Array) -> jax.Array:
  """Channel means `[B,C]` standardised across channels (unbiased variance)."""
  m = jnp.mean(means, axis=-1, keepdims=True)
  v = jnp.var(means, axis=-1, keepdims=True, ddof=1)
  return (means - m) * jax.lax.rsqrt(v + EPS)


class InstanceNormPlusPlus(nn.Module):
  """InstanceNorm++ (NCSNv2): gamma (IN(x) + alpha mu~) + beta, per channel."""

  use_bias: bool = True

  @nn.compact
  def __call__(self, x: jax.Array, y: Optional[jax.Array] = None) -> jax.Array:
    del y
    c = x.shape[-1]
    alpha = self.param('alpha', normal_one_init(), (c,))
    gamma = self.param('gamma', normal_one_init(), (c,))
    normed, means = instance_norm(x)
    h = normed + alpha * normalised_means(means)[:, None, None, :]
    out = gamma * h
    if self.use_bias:
      out = out + self.param('beta', nn.initializers.zeros, (c,))
    return out.astype(x.dtype)


class CondInstanceNormPlusPlus(nn.Module):
  """Conditional InstanceNorm++ (NCSN v1), parameters looked up per label.

  The table `embed` `[L, 3C]` holds, per noise label, gamma | alpha | beta in
  that column order (the PyTorch layout); gamma and alpha start at N(1, 0.02),
  beta at zero. With `use_bias=False` the table is `[L, 2C]`.
  """

  num_classes: int
  use_bias: bool = True

  @nn.compact
  def __call__(self, x: jax.Array, y: jax.Array) -> jax.Array:
    c = x.shape[-1]
    n_chunks = 3 if self.use_bias else 2

    def init(key, shape, dtype=jnp.float32):
      table = normal_one_init()(key, shape, dtype)
      return table.at[:, 2 * c:].set(0.0)

    embed = self.param('embed', init, (self.num_classes, n_chunks * c))
    params = embed[y]
    gamma, alpha = params[:, :c], params[:, c:2 * c]
    normed, means = instance_norm(x)
    h = normed + (alpha * normalised_means(means))[:, None, None, :]
    out = gamma[:, None, None, :] * h
    if self.use_bias:
      out = out + params[:, None, None, 2 * c:]
    return out.astype(x.dtype)
