"""Inception Score, FID and KID: the one report builder, and its inputs.

Glue between the JAX Inception (`inception.extractor`), its weights
(`inception.weight_files`) and the float64 host math (`metrics`):

* `scores(samples, reference)` turns two sets of statistics (features, or
  mean and covariance) into FID, KID and IS, each with a note saying why it
  is missing when it is; `describe` says how the numbers were made. Eval
  mode (`sample_metrics`) and `python -m ncsn_jax.fid` both report through
  these two.
* `reference_stats` / `--mode=fid_stats`: pool_3 features of a whole split
  (uint8 images, no dequantisation, no dropped last batch), saved with their
  mean and covariance and metadata (data set, split, N, preprocessing,
  weights hash) as an `.npz`. Where: `config.eval.stats_path`, or by default
  `<inception cache>/stats/<dataset>_<size>px_<split>_<preprocessing>.npz`.
  Without them eval computes the test split's features on the fly (and the
  report says so).

Statistics are dicts {'mu', 'sigma', 'pool_3' (or None), 'logits' (or None),
'meta'}. Reference files from elsewhere are read too: score_sde's (`pool_3`
only) and TTUR / pytorch-fid's (`mu`, `sigma` only: FID but no KID).
"""

import functools
import json
import os
import shutil
from typing import Callable, Optional

from absl import logging
import jax
import numpy as np

from ncsn_jax import console
from ncsn_jax import errors
from ncsn_jax import outputs
from ncsn_jax.evaluation import metrics
from ncsn_jax.evaluation.inception import extractor as inception
from ncsn_jax.evaluation.inception import weight_files

PREPROCESSING = {
    'tf': 'TF1 legacy bilinear resize to 299 (half_pixel_centers=False) on '
          '0..255, then (x - 128) / 128: TTUR FID, improved-gan IS',
    'pytorch': 'bilinear resize to 299 with half-pixel centres on 0..255, '
               'then x / 127.5 - 1: pytorch-fid (NCSNv2 fast_fid)',
}
IS_SCHEME = ('improved-gan: softmax(pool_3 . W) over 1008 classes (no fc '
             'bias), 10 contiguous splits, mean and population std')
KID_SCHEME = ('tf-gan blocks: cubic kernel, unbiased MMD^2, contiguous '
              'blocks of <= 1024, float64; std = sqrt(var_ddof1 / blocks)')
FID_METHOD = ('float64; tr sqrt(S1 S2) from symmetric eigendecompositions '
              '(= scipy sqrtm to ~1e-12 for PSD covariances)')
QUANTISATION = ('uint8 = floor(clip(x, 0, 1) * 255 + 0.5), '
                'outputs.to_uint8 (torchvision save_image rounding, as the '
                'NCSN and NCSNv2 code saves samples)')
PAPER_NUM_SAMPLES = 50_000  # The papers' IS/FID sample count.


# ------------------------------------------------------------- the extractor


def load_extractor(weights: str, preprocessing: str, batch_size: int,
                   folder: str = '') -> inception.Extractor:
  """The Inception `Extractor` of a weights spec.

  Args:
    weights: `config.eval.inception_weights` ('' = the cached conversion,
      'download', or a path; see `weight_files.resolve_weights`).
    preprocessing: 'tf' or 'pytorch'.
    batch_size: images per forward pass.
    folder: the Inception cache folder ('' = `outputs.inception_dir()`).
  """
  path = weight_files.resolve_weights(weights, outputs.inception_dir(folder))
  return inception.load(path, preprocessing, batch_size)


def create_extractor(config) -> inception.Extractor:
  """`load_extractor` with a config's `eval` fields."""
  e = config.eval
  return load_extractor(e.inception_weights, e.inception_preprocessing,
                        e.inception_batch_size, cache_dir(config))


def cache_dir(config) -> str:
  """The Inception folder of a run: `config.eval.cache_dir`, else the user
  cache's (`outputs.inception_dir`)."""
  return outputs.inception_dir(config.eval.get('cache_dir', ''))


# ---------------------------------------------------------------- statistics


def statistics(pool_3: np.ndarray, logits: Optional[np.ndarray] = None,
               meta: Optional[dict] = None) -> dict:
  """The statistics of features `pool_3` [N,2048] (N >= 2)."""
  mu, sigma = metrics.mean_and_covariance(pool_3)
  return {'mu': mu, 'sigma': sigma, 'pool_3': pool_3, 'logits': logits,
          'meta': dict(meta or {}, num_examples=int(pool_3.shape[0]))}


def save_reference(path: str, pool_3: np.ndarray, meta: dict) -> dict:
  """Writes pool_3 [N,2048] float32, mu [D], sigma [D,D] float64 and meta."""
  stats = statistics(pool_3, meta=meta)
  with outputs.atomic_open(path) as f:
    np.savez(f, pool_3=np.asarray(pool_3, np.float32), mu=stats['mu'],
             sigma=stats['sigma'], meta=np.array(json.dumps(stats['meta'])))
  return stats['meta']


def load_reference(path: str, name: str = '') -> dict:
  """Statistics of a file: ours, score_sde's (`pool_3`), TTUR's (`mu`,
  `sigma`). Non-finite values are an `errors.InputError` naming the file
  (as `name`, e.g. 'B=path', when given)."""
  name = name or path
  with np.load(path, allow_pickle=False) as f:
    names = set(f.files)
    pool_3 = f['pool_3'].astype(np.float32) if 'pool_3' in names else None
    meta = json.loads(str(f['meta'])) if 'meta' in names else {}
    if {'mu', 'sigma'} <= names:
      mu, sigma = f['mu'].astype(np.float64), f['sigma'].astype(np.float64)
    elif pool_3 is not None:
      mu, sigma = metrics.mean_and_covariance(pool_3)
    else:
      raise errors.InputError(
          f'{name}: reference stats need pool_3 or mu and sigma '
          f'(found {sorted(names)}).')
  for key, value in (('mu', mu), ('sigma', sigma), ('pool_3', pool_3)):
    if value is not None and not np.all(np.isfinite(value)):
      raise errors.InputError(
          f'{name}: its {key} holds NaN or Inf values; recompute the '
          'statistics (--mode=fid_stats) or use another file.')
  meta.setdefault('num_examples',
                  int(pool_3.shape[0]) if pool_3 is not None else None)
  return {'mu': mu, 'sigma': sigma, 'pool_3': pool_3, 'logits': None,
          'meta': meta}


def check_preprocessing(stats: dict, preprocessing: str, where: str,
                        fix: str) -> None:
  """Statistics made with another preprocessing are an error naming both.

  `fix` says how to match them; '{mode}' in it stands for their mode.
  """
  mode = stats['meta'].get('preprocessing')
  if mode and mode != preprocessing:
    raise errors.InputError(f'{where} holds {mode!r}-preprocessed '
                            f'statistics; {fix.format(mode=mode)}.')


def weights_notes(trunks: dict[str, Optional[str]]) -> list[str]:
  """A note when statistics were made with different Inception weights.

  Args:
    trunks: {what: trunk sha256 or None (unknown)}, e.g. of a reference file
      and of the weights in use.
  """
  known = {k: h for k, h in trunks.items() if h}
  if len(set(known.values())) <= 1:
    return []
  return ['the Inception weights differ: ' +
          ', '.join(f'{k} {h[:12]}...' for k, h in known.items()) +
          '; the numbers are not comparable (recompute the statistics with '
          'the same weights, --mode=fid_stats).']


# ----------------------------------------------------------------- the report


def scores(samples: dict, reference: dict, *, kid: bool = True,
           inception_score: bool = True, names=('samples', 'reference'),
           head_hint: str = '') -> dict:
  """FID, KID and IS of `samples` against `reference`, or notes why not.

  Args:
    samples: statistics of the samples (`statistics` / `load_reference`).
    reference: statistics of the reference set.
    kid: compute the KID (when both sides have pool_3 features).
    inception_score: compute the IS of the samples (needs their logits).
    names: what the two sides are called in the notes.
    head_hint: how to get weights with the fc head, for the IS note.

  Returns:
    {'fid', 'kid', 'kid_std', 'inception_score', 'inception_score_std'}: each
    a number, or a '<name>_note' string saying why it is missing.
  """
  out: dict = {}
  n = samples['meta'].get('num_examples')
  try:
    out['fid'] = metrics.frechet_distance(samples['mu'], samples['sigma'],
                                          reference['mu'],
                                          reference['sigma'], method='eigh')
  except ValueError as e:
    raise errors.InputError(
        f'{names[0]} and {names[1]} cannot be compared: {e}') from e
  if kid:
    missing = [w for w, s in zip(names, (samples, reference))
               if s['pool_3'] is None]
    if missing:
      out['kid_note'] = (f'KID not computed: {missing[0]} holds mu and '
                         'sigma only, not pool_3 features.')
    else:
      try:
        value, std = metrics.kernel_inception_distance(reference['pool_3'],
                                                       samples['pool_3'])
        out['kid'], out['kid_std'] = value, metrics.finite_or_none(std)
      except ValueError as e:
        out['kid_note'] = f'KID not computed: {e}'
  if inception_score:
    if samples['logits'] is None:
      out['inception_score_note'] = (
          'Inception Score not computed: the Inception weights in use have '
          'no 1008-way fc head; ' + (head_hint or 'supply pytorch-fid\'s '
                                     f'{weight_files.PYTORCH_FID_NAME}') + '.')
    elif n < 10:
      out['inception_score_note'] = (f'IS needs >= 10 samples (10 splits), '
                                     f'got {n}.')
    else:
      value, std = metrics.inception_score(samples['logits'],
                                           from_logits=True)
      out['inception_score'], out['inception_score_std'] = value, std
  return out


def describe(preprocessing: str,
             extractor: Optional[inception.Extractor]) -> dict:
  """How the numbers were made: preprocessing, weights, methods."""
  return {
      'preprocessing': f'{preprocessing}: {PREPROCESSING[preprocessing]}',
      'weights_source': extractor and extractor.source,
      'weights_source_sha256': extractor and extractor.source_sha256,
      'weights_trunk_sha256': extractor and extractor.trunk_sha256,
      'fid_method': FID_METHOD, 'kid_scheme': KID_SCHEME,
      'is_scheme': IS_SCHEME,
  }


# --------------------------------------------------------- eval mode's scores


def default_stats_path(config, split: str) -> str:
  """Where `--mode=fid_stats` writes by default.

  `<inception cache>/stats/<dataset>[_<category>]_<size>px_<split>_<mode>.npz`.
  """
  data = config.data
  name = data.dataset + (f'_{data.category}' if data.category else '')
  return os.path.join(
      cache_dir(config), 'stats',
      f'{name}_{data.image_size}px_{split}_'
      f'{config.eval.inception_preprocessing}.npz')


def stats_path(config) -> str:
  """The reference stats file: `config.eval.stats_path`, else the default."""
  return config.eval.stats_path or default_stats_path(config,
                                                      config.eval.stats_split)


def split_features(config, split: str, extract: Callable,
                   max_examples: Optional[int] = None,
                   folder: Optional[str] = None, meta: Optional[dict] = None,
                   stop: Optional[Callable[[], bool]] = None,
                   part_batches: int = 8) -> np.ndarray:
  """pool_3 [N,2048] (and nothing else) of a whole split, in order.

  With `folder`, the features are kept there in parts of `part_batches`
  batches as they are computed (with `meta`), and a rerun starts after the
  last complete part; `stop` is polled after each batch and raises
  `errors.Interrupted` when it returns True.
  """
  # pylint: disable-next=g-import-not-at-top
  from ncsn_jax.data import input_pipeline
  batch = config.eval.inception_batch_size * 8
  parts, done = [], 0
  while folder and os.path.exists(_part(folder, len(parts))):
    record = dict(meta or {}, part=len(parts), batch=batch,
                  part_batches=part_batches)
    parts.append(outputs.load_shard(_part(folder, len(parts)),
                                    record)['pool_3'])
    done += parts[-1].shape[0]
  feats = []
  with console.Progress(max_examples, f'Inception features of {split}',
                        unit='images', initial=done) as bar:
    images_iter = input_pipeline.iterate_split(
        config, split, batch, skip_batches=len(parts) * part_batches)
    for images in images_iter:
      if max_examples is not None:
        images = images[:max_examples - done]
      if not images.shape[0]:
        break
      feats.append(extract(outputs.to_uint8(images))['pool_3'])
      done += images.shape[0]
      bar.update(images.shape[0])
      if folder and len(feats) == part_batches:
        record = dict(meta or {}, part=len(parts), batch=batch,
                      part_batches=part_batches)
        outputs.save_shard(_part(folder, len(parts)),
                           {'pool_3': np.concatenate(feats)}, record)
        parts.append(np.concatenate(feats))
        feats = []
      if stop is not None and stop():
        raise errors.Interrupted(
            f'stopped on request after {done} images of split {split!r} '
            f'(kept in {folder}); rerun the same command to continue.')
  out = parts + ([np.concatenate(feats)] if feats else [])
  if not out:
    raise errors.InputError(
        f'split {split!r} of {config.data.dataset} is empty.')
  return np.concatenate(out)


def _part(folder: str, i: int) -> str:
  return os.path.join(folder, f'features_{i}.npz')


def _stats_meta(config, split: str, extractor: inception.Extractor) -> dict:
  return {
      'dataset': config.data.dataset, 'category': config.data.category,
      'image_size': config.data.image_size, 'split': split,
      'preprocessing': config.eval.inception_preprocessing,
      'quantisation': 'uint8 data-set images (exact; no dequantisation)',
      'weights_trunk_sha256': extractor.trunk_sha256,
      'weights_source': extractor.source,
  }


def reference_stats(config,
                    extractor: Optional[inception.Extractor] = None) -> str:
  """`--mode=fid_stats`: stats of `config.eval.stats_split`, written once.

  Args:
    config: the run config.
    extractor: the Inception extractor to use instead of the config's.

  The features are kept in `<path>.parts/` as they are computed, so a
  stopped (SIGTERM) or killed run continues where it stopped.

  Returns:
    The path written (process 0 writes; others only compute).
  """
  extractor = extractor or create_extractor(config)
  split = config.eval.stats_split
  path = stats_path(config)
  meta = _stats_meta(config, split, extractor)
  parts = path + '.parts' if jax.process_index() == 0 else None
  with console.StopRequest() as stop:
    pool_3 = split_features(config, split, extractor, folder=parts,
                            meta=meta, stop=stop)
  if jax.process_index() == 0:
    meta = save_reference(path, pool_3, meta)
    shutil.rmtree(parts, ignore_errors=True)
  logging.info('Reference stats of %s/%s (N=%d): %s', config.data.dataset,
               split, pool_3.shape[0], path)
  return path


def _reference(config, extractor) -> tuple[dict, str, list[str]]:
  """Cached reference stats, else the test split's computed now.

  Returns:
    (statistics, a description of where they came from, notes).
  """
  path = stats_path(config)
  if os.path.isfile(path):
    ref = load_reference(path)
    check_preprocessing(
        ref, config.eval.inception_preprocessing, path,
        'config.eval.inception_preprocessing='
        f'{config.eval.inception_preprocessing!r}: set it to {{mode!r}} or '
        'recompute them with --mode=fid_stats')
    notes = weights_notes({
        f'reference stats {path}': ref['meta'].get('weights_trunk_sha256'),
        'the weights in use': extractor.trunk_sha256})
    split = ref['meta'].get('split', '?')
    return ref, f'{path} (split {split})', notes
  pool_3 = split_features(config, 'test', extractor)
  notes = [f'no reference stats at {path}: the test split\'s '
           f'{pool_3.shape[0]} images were used, computed on the fly '
           '(run --mode=fid_stats for the papers\' full-train-split '
           'statistics).']
  ref = statistics(pool_3, meta=_stats_meta(config, 'test', extractor))
  return ref, 'test split, computed on the fly', notes


def create_scorer(config) -> Callable[[np.ndarray], dict]:
  """`sample_metrics` with the network and reference stats made once.

  They are made on the first call and reused by every later one, so a sweep
  over checkpoints loads and compiles the Inception network, and computes
  on-the-fly reference features, only once.
  """

  @functools.cache
  def prepared():
    extractor = create_extractor(config)
    return extractor, _reference(config, extractor)

  return lambda images: sample_metrics(config, images, *prepared())


def sample_metrics(config, images: np.ndarray,
                   extractor: Optional[inception.Extractor] = None,
                   reference: Optional[tuple[dict, str, list[str]]] = None
                   ) -> dict:
  """IS, FID and KID of samples, with how each was computed.

  Args:
    config: the run config (`config.eval` inception fields, `config.data`).
    images: uint8 [N,H,W,C] samples (C = 1 or 3).
    extractor: the Inception extractor to use instead of the config's.
    reference: `_reference`'s (stats, description, notes) for this
      extractor, to reuse instead of loading or computing them.

  Returns:
    `scores`' numbers and notes, and 'inception': {N, reference,
    `describe`'s fields, comparable_to_papers, notes}.
  """
  extractor = extractor or create_extractor(config)
  feats = extractor(images)
  ref, ref_desc, ref_notes = reference or _reference(config, extractor)
  n = images.shape[0]
  if n >= 2:
    samples = statistics(feats['pool_3'], feats.get('logits'))
    out = scores(samples, ref, head_hint=(
        f'supply pytorch-fid\'s {weight_files.PYTORCH_FID_NAME} '
        '(config.eval.inception_weights=PATH, or =download when online)'))
  else:
    out = {'fid_note': f'FID needs >= 2 samples, got {n}.'}
  notes = list(ref_notes)  # This report's own list: the cache stays clean.
  if n < PAPER_NUM_SAMPLES:
    notes.append(f'{n} samples: FID and IS are biased (FID upward) at this '
                 f'N; use them to rank checkpoints, not to compare with the '
                 f'papers\' {PAPER_NUM_SAMPLES}-sample numbers.')
  out['inception'] = {
      'num_samples': int(n),
      'comparable_to_papers': bool(n >= PAPER_NUM_SAMPLES),
      'num_reference': ref['meta'].get('num_examples'),
      'reference': ref_desc,
      **describe(config.eval.inception_preprocessing, extractor),
      'quantisation': QUANTISATION,
      'notes': notes,
  }
  return out
