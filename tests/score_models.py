"""Cheap score models with known behaviour, shared by loss, sampler, step,
loop and eval tests."""

from unittest import mock

import flax.linen as nn
import jax.numpy as jnp

from ncsn_jax import models


class PixelModel(nn.Module):
  """Per-pixel MLP score `(x [B,H,W,C], y [B]) -> [B,H,W,C]`."""
  num_classes: int = 4

  @nn.compact
  def __call__(self, x, y):
    scale = nn.Embed(self.num_classes, 1)(y)[:, :, None, None]
    return nn.Dense(x.shape[-1])(jnp.tanh(nn.Dense(8)(x))) * scale - x


def pixel_model(config) -> PixelModel:
  return PixelModel(config.model.num_classes)


def pixel_networks():
  """While active, the library builds `PixelModel`s for every config.

  For tests of what the training loop and eval mode do with any network:
  its programs compile in about a second, where each of the tiny
  RefineNet's takes about ten.
  """
  return mock.patch.object(models, 'create_model', pixel_model)


def gaussian_score(mu, s2, sigmas, c=1.0):
  """c times the exact score of N(mu, s2 I) perturbed by N(0, sigma_y^2 I)."""

  def score_fn(x, y):
    var = s2 + sigmas[y].reshape((-1,) + (1,) * (x.ndim - 1))**2
    return -c * (x - mu) / var

  return score_fn
