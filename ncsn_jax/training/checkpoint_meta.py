"""What a checkpoint records about itself: its model config and checksums.

The `meta` item of each checkpoint (JSON) holds the config fields that fix
the parameter shapes or the meaning of the noise levels, the noise levels
themselves, a sha256 of every array of the train state, and the run's count
of resumes that lost the input pipeline's position. Sample, eval and resume
compare the first against the config before anything is restored, and the
checksums against the restored arrays.
"""

import hashlib
from typing import Any, Optional

import jax
import numpy as np

from ncsn_jax import errors
from ncsn_jax import noise

FORMAT = 2
MODEL_FIELDS = ('model.name', 'model.ngf', 'model.num_classes',
                'model.sigma_begin', 'model.sigma_end', 'model.sigma_dist',
                'data.channels', 'data.image_size', 'data.logit_transform',
                'data.rescaled')


def _get(config, field: str):
  section, name = field.split('.')
  value = config[section][name]
  return value.item() if isinstance(value, np.generic) else value


def leaf_digests(state) -> dict[str, str]:
  """sha256 of dtype, shape and bytes of every array of `state`."""
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
    array = np.ascontiguousarray(np.asarray(leaf))
    h = hashlib.sha256(f'{array.dtype.str}{array.shape}'.encode())
    h.update(array.tobytes())
    out[jax.tree_util.keystr(path)] = h.hexdigest()
  return out


def build(config, state, step: int, inexact_resumes: int = 0) -> dict:
  """The meta record of checkpoint `step` of host `state`."""
  meta = {
      'format': FORMAT,
      'step': int(step),
      'inexact_resumes': int(inexact_resumes),
      'digests': leaf_digests(state)
  }
  if config is not None:
    meta['config'] = {f: _get(config, f) for f in MODEL_FIELDS}
    meta['sigmas'] = [float(s) for s in noise.get_sigmas(config)]
  return meta


def _same(a, b) -> bool:
  if isinstance(a, float) or isinstance(b, float):
    try:
      return float(a) == float(b)
    except (TypeError, ValueError):
      return False
  return a == b


def check_config(meta: dict, config, path: str) -> None:
  """Raises CheckpointError naming every field where config and `meta` differ.
  """
  saved = meta.get('config')
  if not saved:
    return
  diffs = [
      f'config.{f}={_get(config, f)!r} vs {saved[f]!r}' for f in MODEL_FIELDS
      if f in saved and not _same(_get(config, f), saved[f])
  ]
  if not diffs and 'sigmas' in meta:
    ours = noise.get_sigmas(config)
    if len(ours) != len(meta['sigmas']) or not np.allclose(
        ours, meta['sigmas'], rtol=1e-6, atol=0):
      diffs.append('the noise levels (sigmas) differ')
  if diffs:
    raise errors.CheckpointError(
        f'the config does not match checkpoint {path} (config vs '
        f'checkpoint): {"; ".join(diffs)}; run with the config it was '
        'trained with.')


def check_shapes(restored, target, path: str) -> None:
  """Raises CheckpointError at the first array whose shape differs."""
  got = jax.tree_util.tree_flatten_with_path(restored)[0]
  want = jax.tree.leaves(target)
  for (key, a), b in zip(got, want):
    if np.shape(a) != tuple(b.shape):
      raise errors.CheckpointError(
          f'checkpoint {path} holds {jax.tree_util.keystr(key)} of shape '
          f'{np.shape(a)}, the config builds {tuple(b.shape)}; run with the '
          'config it was trained with.')


def verify(meta: Optional[dict], restored: Any, path: str) -> None:
  """Raises CheckpointError if an array differs from its checksum."""
  if not meta or 'digests' not in meta:
    return
  now = leaf_digests(restored)
  bad = [k for k, v in meta['digests'].items() if now.get(k) != v]
  if bad:
    raise errors.CheckpointError(
        f'checkpoint {path} is corrupt: {len(bad)} array(s) (first '
        f'{bad[0]}) do not match the checksums written with them; pick an '
        'older step with config.sampling.ckpt_id (sample/eval) or '
        'config.training.resume_step (train).')
