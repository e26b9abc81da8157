"""Inception Score, FID and KID of samples against data-set reference stats.

Glue between the JAX Inception (`extractor`), its weights (`weight_files`)
and the float64 host math (`evaluation.metrics`):

* `reference_stats` / `--mode=fid_stats`: pool_3 features of a whole split
  (uint8 images, no dequantisation, no dropped last batch), saved with their
  mean and covariance and metadata (data set, split, N, preprocessing,
  weights hash) as an `.npz`. Where: `config.eval.stats_path`, or by
  default `<inception cache>/stats/<dataset>_<size>px_<split>_
  <preprocessing>.npz` (`default_stats_path`).
* `sample_metrics`: IS (improved-gan: 10 splits, no fc bias), FID and KID
  (tf-gan blocks) of uint8 samples, with a JSON-ready description of how
  each number was made. Without cached stats the test split's features are
  computed on the fly (and the report says so).

Reference files from elsewhere are read too: score_sde's (`pool_3` only)
and TTUR / pytorch-fid's (`mu`, `sigma` only: FID but no KID).
"""

import functools
import json
import os
from typing import Callable, Optional
from absl import logging
import jax
import numpy as np
from ncsn_jax import errors
from ncsn_jax import outputs
from ncsn_jax import console
from ncsn_jax.data import input_pipeline
from ncsn_jax.evaluation import metrics
from ncsn_jax.evaluation.inception import extractor as inception_extractor
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

NO_HEAD_NOTE = (
    'Inception Score not computed: the Inception weights in use ({source}) '
    'have no 1008-way fc head. Supply pytorch-fid\'s '
    f'{weight_files.PYTORCH_FID_NAME} (config.eval.inception_weights='
    'PATH, or =download when online).')


def load_extractor(weights: str, preprocessing: str, batch_size: int,
                   folder: str = '') -> tuple[Callable, dict]:
  """Extractor (uint8 [N,H,W,C] -> features) and its weights' meta.

  Args:
    weights: `config.eval.inception_weights` (see
      `weight_files.resolve_weights`).
    preprocessing: 'tf' or 'pytorch'.
    batch_size: images per forward pass.
    folder: the Inception cache folder ('' = `outputs.inception_dir()`).
  """
  path = weight_files.resolve_weights(weights,
                                      outputs.inception_dir(folder))
  params, meta = inception_extractor.load_params(path)
  extract = inception_extractor.create_extractor(params, preprocessing,
                                                 batch_size)
  return extract, dict(meta, path=path)


def create_extractor(config) -> tuple[Callable, dict]:
  """`load_extractor` with a config's `eval` fields."""
  e = config.eval
  return load_extractor(e.inception_weights, e.inception_preprocessing,
                        e.inception_batch_size, cache_dir(config))


def cache_dir(config) -> str:
  """The Inception folder of a run: `config.eval.cache_dir`, else the user
  cache's (`outputs.inception_dir`)."""
  return outputs.inception_dir(config.eval.get('cache_dir', ''))


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
                   max_examples: Optional[int] = None) -> np.ndarray:
  """pool_3 [N,2048] (and nothing else) of a whole split, in order."""
  feats = []
  batch = config.eval.inception_batch_size * 8
  with console.Progress(max_examples, f'Inception features of {split}',
                         unit='images') as bar:
    for images in input_pipeline.iterate_split(config, split, batch):
      if max_examples is not None:
        images = images[:max_examples - sum(f.shape[0] for f in feats)]
      if images.shape[0]:
        feats.append(extract(outputs.to_uint8(images))['pool_3'])
        bar.update(images.shape[0])
  if not feats:
    raise errors.ConfigError(
        f'split {split!r} of {config.data.dataset} is empty.')
  return np.concatenate(feats)


def save_reference(path: str, pool_3: np.ndarray, meta: dict) -> dict:
  """Writes pool_3 [N,2048] float32, mu [D], sigma [D,D] float64 and meta."""
  mu, sigma = metrics.mean_and_covariance(pool_3)
  meta = dict(meta, num_examples=int(pool_3.shape[0]))
  with outputs.atomic_open(path) as f:
    np.savez(f, pool_3=np.asarray(pool_3, np.float32), mu=mu, sigma=sigma,
             meta=np.array(json.dumps(meta)))
  return meta


def load_reference(path: str) -> dict:
  """Reference stats: {'mu', 'sigma', 'pool_3' (or None), 'meta'}.

  Accepts this project's files, score_sde's (`pool_3` only) and TTUR /
  pytorch-fid's (`mu`, `sigma` only).
  """
  with np.load(path, allow_pickle=False) as f:
    names = set(f.files)
    pool_3 = f['pool_3'].astype(np.float32) if 'pool_3' in names else None
    meta = json.loads(str(f['meta'])) if 'meta' in names else {}
    if {'mu', 'sigma'} <= names:
      mu, sigma = f['mu'].astype(np.float64), f['sigma'].astype(np.float64)
    elif pool_3 is not None:
      mu, sigma = metrics.mean_and_covariance(pool_3)
    else:
      raise errors.ConfigError(
          f'{path}: reference stats need pool_3 or mu and sigma '
          f'(found {sorted(names)}).')
  meta.setdefault('num_examples',
                  int(pool_3.shape[0]) if pool_3 is not None else None)
  return {'mu': mu, 'sigma': sigma, 'pool_3': pool_3, 'meta': meta}


def _stats_meta(config, split: str, weights: dict) -> dict:
  return {
      'dataset': config.data.dataset, 'category': config.data.category,
      'image_size': config.data.image_size, 'split': split,
      'preprocessing': config.eval.inception_preprocessing,
      'quantisation': 'uint8 data-set images (exact; no dequantisation)',
      'weights_trunk_sha256': weights['trunk_sha256'],
      'weights_source': weights['source'],
  }


def reference_stats(config,
                    extractor: Optional[tuple[Callable, dict]] = None) -> str:
  """`--mode=fid_stats`: stats of `config.eval.stats_split`, written once.

  Args:
    config: the run config.
    extractor: (extract, weights meta) to use instead of the config's.

  Returns:
    The path written (process 0 writes; others only compute).
  """
  extract, weights = extractor or create_extractor(config)
  split = config.eval.stats_split
  path = stats_path(config)
  pool_3 = split_features(config, split, extract)
  meta = _stats_meta(config, split, weights)
  if jax.process_index() == 0:
    meta = save_reference(path, pool_3, meta)
  logging.info('Reference stats of %s/%s (N=%d): %s', config.data.dataset,
               split, pool_3.shape[0], path)
  return path


def _reference(config, extract, weights) -> tuple[dict, str, list[str]]:
  """Cached reference stats, else the test split's computed now.

  Returns:
    (stats {'mu', 'sigma', 'pool_3' (or None), 'meta'}, a description of
    where they came from, notes for the report).
  """
  notes = []
  path = stats_path(config)
  if os.path.isfile(path):
    ref = load_reference(path)
    have = ref['meta'].get('weights_trunk_sha256')
    if have and have != weights['trunk_sha256']:
      notes.append(f'reference stats {path} were made with other Inception '
                   f'weights (trunk sha256 {have[:12]}...); recompute them '
                   'with --mode=fid_stats.')
    mode = ref['meta'].get('preprocessing')
    if mode and mode != config.eval.inception_preprocessing:
      raise errors.ConfigError(f'{path} holds {mode!r}-preprocessed stats, but '
                       'config.eval.inception_preprocessing='
                       f'{config.eval.inception_preprocessing!r}.')
    split = ref['meta'].get('split', '?')
    return ref, f'{path} (split {split})', notes
  pool_3 = split_features(config, 'test', extract)
  mu, sigma = metrics.mean_and_covariance(pool_3)
  notes.append(f'no reference stats at {path}: the test split\'s '
               f'{pool_3.shape[0]} images were used, computed on the fly '
               '(run --mode=fid_stats for the papers\' full-train-split '
               'statistics).')
  meta = dict(_stats_meta(config, 'test', weights),
              num_examples=int(pool_3.shape[0]))
  return ({'mu': mu, 'sigma': sigma, 'pool_3': pool_3, 'meta': meta},
          'test split, computed on the fly', notes)


def create_scorer(config) -> Callable[[np.ndarray], dict]:
  """`sample_metrics` with the network and reference stats made once.

  They are made on the first call and reused by every later one, so a sweep
  over checkpoints loads and compiles the Inception network, and computes
  on-the-fly reference features, only once.
  """

  @functools.cache
  def prepared():
    extractor = create_extractor(config)
    return extractor, _reference(config, *extractor)

  return lambda images: sample_metrics(config, images, *prepared())


def _scores(feats: dict, ref: dict, ref_desc: str, source: str) -> dict:
  """FID, KID and IS of features against reference stats, or notes why not."""
  out: dict = {}
  n = feats['pool_3'].shape[0]
  if n >= 2:
    mu, sigma = metrics.mean_and_covariance(feats['pool_3'])
    out['fid'] = metrics.frechet_distance(mu, sigma, ref['mu'], ref['sigma'],
                                          method='eigh')
  else:
    out['fid_note'] = f'FID needs >= 2 samples, got {n}.'
  if ref['pool_3'] is None:
    out['kid_note'] = (f'KID not computed: the reference stats ({ref_desc}) '
                       'hold mu and sigma only, not pool_3 features.')
  else:
    try:
      kid, kid_std = metrics.kernel_inception_distance(ref['pool_3'],
                                                       feats['pool_3'])
      out['kid'], out['kid_std'] = kid, metrics.finite_or_none(kid_std)
    except ValueError as e:
      out['kid_note'] = f'KID not computed: {e}'
  if 'logits' not in feats:
    out['inception_score_note'] = NO_HEAD_NOTE.format(source=source)
  elif n < 10:
    out['inception_score_note'] = (f'IS needs >= 10 samples (10 splits), '
                                   f'got {n}.')
  else:
    score, std = metrics.inception_score(feats['logits'], from_logits=True)
    out['inception_score'], out['inception_score_std'] = score, std
  return out


def sample_metrics(config, images: np.ndarray,
                   extractor: Optional[tuple[Callable, dict]] = None,
                   reference: Optional[tuple[dict, str, list[str]]] = None
                   ) -> dict:
  """IS, FID and KID of samples, with how each was computed.

  Args:
    config: the run config (`config.eval` inception fields, `config.data`).
    images: uint8 [N,H,W,C] samples (C = 1 or 3), or floats in [0, 1]
      (rounded by `outputs.to_uint8`).
    extractor: (extract, weights meta) to use instead of the config's.
    reference: `_reference`'s (stats, description, notes) for this
      extractor, to reuse instead of loading or computing them.

  Returns:
    {'fid', 'kid', 'kid_std', 'inception_score', 'inception_score_std'
    (numbers, or '*_note' strings saying why one is missing), 'inception':
    {N, reference, preprocessing, quantisation, weights hashes, schemes,
    notes}}.
  """
  images = outputs.to_uint8(images)
  extract, weights = extractor or create_extractor(config)
  feats = extract(images)
  ref, ref_desc, ref_notes = reference or _reference(config, extract, weights)
  out = _scores(feats, ref, ref_desc, weights['source'])
  n = images.shape[0]
  notes = list(ref_notes)  # This report's own list: the cache stays clean.
  if n < PAPER_NUM_SAMPLES:
    notes.append(f'{n} samples: FID and IS are biased (FID upward) at this '
                 f'N; use them to rank checkpoints, not to compare with the '
                 f'papers\' {PAPER_NUM_SAMPLES}-sample numbers.')
  mode = config.eval.inception_preprocessing
  out['inception'] = {
      'num_samples': int(n),
      'comparable_to_papers': bool(n >= PAPER_NUM_SAMPLES),
      'num_reference': ref['meta'].get('num_examples'),
      'reference': ref_desc,
      'preprocessing': f'{mode}: {PREPROCESSING[mode]}',
      'quantisation': QUANTISATION,
      'weights_source': weights['source'],
      'weights_source_sha256': weights['source_sha256'],
      'weights_trunk_sha256': weights['trunk_sha256'],
      'fid_method': FID_METHOD, 'kid_scheme': KID_SCHEME,
      'is_scheme': IS_SCHEME, 'notes': notes,
  }
  return out
