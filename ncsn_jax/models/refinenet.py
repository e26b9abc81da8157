"""Score networks: NCSN (CondRefineNetDilated) and the NCSNv2 family.

All networks share one RefineNet trunk: a stack of residual stages (two
pre-activation residual blocks each; 'down' stages without dilation halve the
resolution, dilated ones keep it) followed by RefineNet blocks that fuse the
stage outputs from the coarsest to the finest. The variants differ in
topology and in four switches:

- NCSN (v1): CondInstanceNorm++ everywhere, also inside the refine blocks;
  average pooling in chained residual pooling; output f(x, y).
- NCSNv2 (and Deeper/Deepest): InstanceNorm++, none inside the refine
  blocks; max pooling; output f(x) / sigma_y.

Call contract of every model: `model.apply(variables, x, y)` with `x` float32
`[B,H,W,C]` in the model's input space and `y` int32 `[B]` noise labels
(0 = largest sigma), returning the score `[B,H,W,C]`.
"""

import functools
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ncsn_jax.models import layers
from ncsn_jax.models import normalization
from ncsn_jax.models import score

# Residual stages: (name, width multiplier of F, resample of the first block,
# dilation). Refine blocks: (name, width multiplier), coarsest first.
FOUR_STAGES = (('res1', 1, None, None), ('res2', 2, 'down', None),
               ('res3', 2, 'down', 2), ('res4', 2, 'down', 4))
FOUR_REFINES = (('refine1', 2), ('refine2', 2), ('refine3', 1), ('refine4', 1))
DEEPER_STAGES = (('res1', 1, None, None), ('res2', 2, 'down', None),
                 ('res3', 2, 'down', None), ('res4', 4, 'down', 2),
                 ('res5', 4, 'down', 4))
DEEPER_REFINES = (('refine1', 4), ('refine2', 2), ('refine3', 2),
                  ('refine4', 1), ('refine5', 1))
DEEPEST_STAGES = (('res1', 1, None, None), ('res2', 2, 'down', None),
                  ('res3', 2, 'down', None), ('res31', 2, 'down', None),
                  ('res4', 4, 'down', 2), ('res5', 4, 'down', 4))
DEEPEST_REFINES = (('refine1', 4), ('refine2', 2), ('refine31', 2),
                   ('refine3', 2), ('refine4', 1), ('refine5', 1))


def downsampling_factor(stages: Sequence[tuple[Any, ...]]) -> int:
  """Total spatial reduction of a stage list (2 per non-dilated 'down')."""
  return 2**sum(1 for _, _, resample, dilation in stages
                if resample == 'down' and dilation is None)


class RefineNet(nn.Module):
  """RefineNet score network of the NCSN family (see module docstring).

  Attributes:
    ngf: base number of filters F.
    num_classes: number of noise levels L.
    sigmas: the L noise levels, descending (used when scale_by_sigma).
    stages: residual-stage topology, see FOUR_STAGES.
    refines: refine-block topology, see FOUR_REFINES.
    conditional: CondInstanceNorm++ on y everywhere (v1) or InstanceNorm++.
    refine_norms: normalise inside RCU / CRP / MSF blocks (v1).
    pool: CRP pooling, 'avg' (v1) or 'max' (v2).
    scale_by_sigma: divide the output by sigma_y (v2).
    rescale_input: map inputs from [0, 1] to [-1, 1] first.
    dtype: compute dtype of the convolutions.
    remat: rematerialise each residual / refine block on the backward pass.
  """

  ngf: int
  num_classes: int
  sigmas: Optional[tuple[float, ...]] = None
  stages: tuple[Any, ...] = FOUR_STAGES
  refines: tuple[Any, ...] = FOUR_REFINES
  conditional: bool = False
  refine_norms: bool = False
  pool: str = 'max'
  scale_by_sigma: bool = True
  rescale_input: bool = True
  dtype: Any = jnp.float32
  remat: bool = False

  def _norm(self):
    if self.conditional:
      return functools.partial(normalization.CondInstanceNormPlusPlus,
                               self.num_classes)
    return normalization.InstanceNormPlusPlus

  @nn.compact
  def __call__(self, x: jax.Array, y: jax.Array) -> jax.Array:
    channels = x.shape[-1]
    norm = self._norm()
    block_kw = dict(norm=norm, dtype=self.dtype)
    residual_block, refine_block = layers.ResidualBlock, layers.RefineBlock
    if self.remat:
      residual_block, refine_block = nn.remat(residual_block), nn.remat(
          refine_block)
    h = 2.0 * x - 1.0 if self.rescale_input else x
    h = layers.Conv2d(self.ngf, 3, dtype=self.dtype, name='begin_conv')(h)
    skips = []
    for name, mult, resample, dilation in self.stages:
      features = mult * self.ngf
      h = residual_block(features, resample=resample, dilation=dilation,
                         name=f'{name}_0', **block_kw)(h, y)
      h = residual_block(features, dilation=dilation, name=f'{name}_1',
                         **block_kw)(h, y)
      skips.append(h)
    refine_kw = dict(pool=self.pool, dtype=self.dtype,
                     norm=norm if self.refine_norms else None)
    n = len(self.refines)
    for k, (name, mult) in enumerate(self.refines):
      inputs = [skips[-1 - k]] + ([h] if k else [])
      h = refine_block(mult * self.ngf, start=k == 0, end=k == n - 1,
                       name=name, **refine_kw)(inputs, y)
    h = nn.elu(norm(name='normalizer')(h, y))
    h = layers.Conv2d(channels, 3, dtype=self.dtype, name='end_conv')(h)
    h = h.astype(jnp.float32)
    if self.scale_by_sigma:
      sigmas = jnp.asarray(self.sigmas, jnp.float32)
      h = h / sigmas[y][:, None, None, None]
    return h


NCSN = functools.partial(RefineNet, conditional=True, refine_norms=True,
                         pool='avg', scale_by_sigma=False)
NCSNv2 = functools.partial(RefineNet)
NCSNv2Deeper = functools.partial(RefineNet, stages=DEEPER_STAGES,
                                 refines=DEEPER_REFINES)
NCSNv2Deepest = functools.partial(RefineNet, stages=DEEPEST_STAGES,
                                  refines=DEEPEST_REFINES)

MODELS = {
    'ncsn': (NCSN, FOUR_STAGES),
    'ncsnv2': (NCSNv2, FOUR_STAGES),
    'ncsnv2_deeper': (NCSNv2Deeper, DEEPER_STAGES),
    'ncsnv2_deepest': (NCSNv2Deepest, DEEPEST_STAGES),
}


def create_model(config, dtype: Optional[str] = None) -> nn.Module:
  """Builds the score network named by `config.model.name`.

  Args:
    config: a full experiment config (model, data sections), checked by
      `config_checks`.
    dtype: compute dtype of the convolutions, overriding `config.model.dtype`
      (sampling in bfloat16 from float32-trained parameters); parameters
      stay float32 either way.

  Returns:
    An unbound flax module with the call contract of the module docstring.
  """
  sigmas = score.get_sigmas(config)
  factory = MODELS[config.model.name][0]
  return factory(
      ngf=config.model.ngf,
      num_classes=config.model.num_classes,
      sigmas=tuple(float(s) for s in np.asarray(sigmas)),
      rescale_input=not (config.data.logit_transform or config.data.rescaled),
      dtype=jnp.dtype(dtype or config.model.dtype),
      remat=config.model.remat)


def count_params(params) -> int:
  """Total number of scalars in a parameter tree."""
  return int(sum(np.prod(p.shape) for p in jax.tree.leaves(params)))
