"""FID of any two image sets: `python -m ncsn_jax.fid A B`.

  python -m ncsn_jax.fid A B [--kid] [--json=OUT] [--preprocessing=tf|pytorch]
      [--batch_size=N] [--weights=SPEC] [--cache_dir=DIR]

A and B are each a folder of PNG/JPEG images (searched recursively), an
`.npz` with uint8 [N,H,W,C] `images` (as `--mode=sample` writes) or a
reference-statistics `.npz` (`--mode=fid_stats`'s, TTUR / pytorch-fid's
`mu` and `sigma`, score_sde's `pool_3`); see `evaluation.image_sets`.
Images of any size are resized to 299 by the chosen preprocessing
(`inception.preprocessing`), grey ones repeated to RGB. It prints N of each
side, the preprocessing, the Inception weights' hash and the FID; with
`--kid` the KID when both sides have features (images or `pool_3`); the
Inception Score of A when A is images and the weights have the fc head.
The numbers are those of `sample_quality.sample_metrics` for the same
images. Bad input ends with one `error:` line and exit status 2.
"""

import os

# Before TensorFlow (file access only here) loads: no C++ start-up notices.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')

import argparse  # pylint: disable=g-import-not-at-top,g-bad-import-order
import json
import sys
from typing import Callable, Optional, TextIO

from ncsn_jax import errors
from ncsn_jax import outputs
from ncsn_jax import console
from ncsn_jax.evaluation import image_sets
from ncsn_jax.evaluation import metrics
from ncsn_jax.evaluation.inception import extractor as inception_prep
from ncsn_jax.evaluation import sample_quality
from ncsn_jax.evaluation.inception import weight_files

PROGRESS_SECONDS = 5.0  # At most one progress line this often.


def parse_args(argv) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog='python -m ncsn_jax.fid',
                                   description=__doc__.split('\n')[0])
  parser.add_argument('a',
                      metavar='A',
                      help='folder, images .npz or stats '
                      '.npz (the samples: IS is of A)')
  parser.add_argument('b',
                      metavar='B',
                      help='folder, images .npz or stats '
                      '.npz (the reference)')
  parser.add_argument('--kid',
                      action='store_true',
                      help='also the KID (needs features on both sides)')
  parser.add_argument('--json',
                      default='',
                      metavar='OUT',
                      help='write the full report as JSON here')
  parser.add_argument('--preprocessing',
                      default='tf',
                      choices=inception_prep.MODES,
                      help='tf: TTUR / improved-gan (default); pytorch: '
                      'pytorch-fid')
  parser.add_argument('--batch_size',
                      type=int,
                      default=50,
                      help='images per Inception forward pass')
  parser.add_argument('--weights',
                      default='',
                      help="'' = the cached conversion, 'download', or a "
                      'path (as config.eval.inception_weights)')
  parser.add_argument('--cache_dir',
                      default='',
                      help='Inception cache folder (default: the user cache)')
  args = parser.parse_args(argv)
  if args.batch_size < 1:
    parser.error(f'--batch_size must be >= 1, got {args.batch_size}')
  return args


def _open(path: str, what: str, args) -> dict:
  """Checks one side and reads what is cheap: statistics, file lists."""
  kind = image_sets.kind_of(path, what)
  side = {'what': what, 'info': {'path': path, 'kind': kind}}
  if kind == 'stats':
    side['stats'] = image_sets.statistics(path, what, args.preprocessing)
  else:
    side['n'], side['chunks'] = image_sets.image_chunks(path, kind, what,
                                                        args.batch_size * 4)
  return side


def _statistics(side: dict, extractor: Callable, stream) -> dict:
  """mu, sigma, pool_3, logits and meta of an opened side (images: now)."""
  if 'stats' in side:
    stats = side['stats']
  else:
    n, what = side['n'], side['what']
    # Not a `with`: a side that fails prints its error line only.
    bar = console.Progress(n, what, unit='images', stream=stream,
                            every_s=PROGRESS_SECONDS, enabled=True)
    feats = image_sets.features(side['chunks'], n,
                                lambda x: extractor()[0](x), bar.update)
    bar.close()
    stats = image_sets.from_features(feats, what, side['info']['path'])
  info = dict(side['info'],
              num=stats['meta'].get('num_examples'),
              features=stats['pool_3'] is not None)
  return dict(stats, info=info)


def _kid(a: dict, b: dict) -> dict:
  if a['pool_3'] is None or b['pool_3'] is None:
    which = 'A' if a['pool_3'] is None else 'B'
    return {
        'kid_note': f'KID not computed: {which} holds mu and sigma only, '
                    'not pool_3 features.'
    }
  try:
    kid, std = metrics.kernel_inception_distance(b['pool_3'], a['pool_3'])
  except ValueError as e:
    return {'kid_note': f'KID not computed: {e}'}
  return {'kid': kid, 'kid_std': metrics.finite_or_none(std)}


def _inception_score(a: dict, weights: Optional[dict]) -> dict:
  if a['info']['kind'] == 'stats':
    return {}
  if a['logits'] is None:
    return {
        'inception_score_note':
            (f'IS of A not computed: the weights ({weights["source"]}) have no '
             "1008-way fc head; pass --weights=download (online) or a path to "
             f'pytorch-fid\'s {weight_files.PYTORCH_FID_NAME}.')
    }
  if a['logits'].shape[0] < 10:
    return {'inception_score_note': 'IS of A needs >= 10 images (10 splits).'}
  score, std = metrics.inception_score(a['logits'], from_logits=True)
  return {'inception_score': score, 'inception_score_std': std}


def _weights_notes(sides: dict, weights: Optional[dict]) -> list[str]:
  """Notes where a stats side was made with other Inception weights."""
  hashes = {
      k: s['meta'].get('weights_trunk_sha256')
      for k, s in sides.items()
      if s['info']['kind'] == 'stats'
  }
  if weights:
    hashes['the weights in use'] = weights['trunk_sha256']
  known = {k: h for k, h in hashes.items() if h}
  if len(set(known.values())) <= 1:
    return []
  return [
      'the Inception weights differ: ' +
      ', '.join(f'{k} {h[:12]}...' for k, h in known.items()) +
      '; the numbers are not '
      'comparable (recompute the statistics with the same weights).'
  ]


def compute(args,
            extractor_and_meta: Optional[tuple] = None,
            stream: Optional[TextIO] = None) -> dict:
  """The report: FID (KID, IS), both sides' N, preprocessing, weights.

  Args:
    args: `parse_args`'s namespace.
    extractor_and_meta: (extract, weights meta) to use instead of loading
      `args.weights` (made only if a side has images).
    stream: where progress lines go (default stderr).
  """
  stream = stream or sys.stderr
  made = {'extractor': extractor_and_meta} if extractor_and_meta else {}

  def extractor():
    if 'extractor' not in made:
      made['extractor'] = sample_quality.load_extractor(args.weights,
                                                        args.preprocessing,
                                                        args.batch_size,
                                                        args.cache_dir)
    return made['extractor']

  opened = [_open(args.a, 'A', args), _open(args.b, 'B', args)]
  sides = {s['what']: _statistics(s, extractor, stream) for s in opened}
  a, b = sides['A'], sides['B']
  weights = made['extractor'][1] if made and any(
      'stats' not in s for s in opened) else None
  try:
    out = {
        'fid':
            metrics.frechet_distance(a['mu'],
                                     a['sigma'],
                                     b['mu'],
                                     b['sigma'],
                                     method='eigh')
    }
  except ValueError as e:
    raise errors.ConfigError(f'A and B cannot be compared: {e}') from e
  if args.kid:
    out.update(_kid(a, b))
  out.update(_inception_score(a, weights))
  mode = args.preprocessing
  out.update({
      'a': a['info'],
      'b': b['info'],
      'preprocessing': f'{mode}: {sample_quality.PREPROCESSING[mode]}',
      'weights_source': weights and weights['source'],
      'weights_trunk_sha256': weights and weights['trunk_sha256'],
      'weights_source_sha256': weights and weights['source_sha256'],
      'fid_method': sample_quality.FID_METHOD,
      'kid_scheme': sample_quality.KID_SCHEME,
      'is_scheme': sample_quality.IS_SCHEME,
      'notes': _weights_notes(sides, weights),
  })
  return out


def summary(report: dict) -> list[str]:
  """The lines printed: both sides, preprocessing, weights, the numbers."""
  lines = []
  for key in ('a', 'b'):
    info = report[key]
    num = 'N unknown' if info['num'] is None else f'N={info["num"]}'
    lines.append(f'{key.upper()}: {info["path"]} ({info["kind"]}, {num})')
  lines.append(f'preprocessing: {report["preprocessing"].split(":")[0]}')
  if report['weights_trunk_sha256']:
    lines.append(f'weights: {report["weights_source"]} (trunk sha256 '
                 f'{report["weights_trunk_sha256"][:16]})')
  lines.append(f'FID: {report["fid"]:.6f}')
  if 'kid' in report:
    std = report['kid_std']
    lines.append(f'KID: {report["kid"]:.6g}' +
                 ('' if std is None else f' +- {std:.2g}'))
  if 'inception_score' in report:
    lines.append(f'IS of A: {report["inception_score"]:.4f} +- '
                 f'{report["inception_score_std"]:.4f}')
  for key in ('kid_note', 'inception_score_note'):
    if key in report:
      lines.append(f'note: {report[key]}')
  lines.extend(f'note: {n}' for n in report['notes'])
  return lines


def main(argv, extractor_and_meta: Optional[tuple] = None) -> int:
  """The command: prints the summary (and writes --json); 2 on bad input.

  `extractor_and_meta` as in `compute` (one network for many calls).
  """
  args = parse_args(argv)
  try:
    report = compute(args, extractor_and_meta)
  except errors.ConfigError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  print('\n'.join(summary(report)))
  if args.json:
    with outputs.atomic_open(args.json) as f:
      f.write(json.dumps(report, indent=2, allow_nan=False).encode())
    print(f'report: {args.json}')
  return 0


def run() -> None:
  """Console-script entry point (`ncsn-jax-fid`)."""
  sys.exit(main(sys.argv[1:]))


if __name__ == '__main__':
  run()
