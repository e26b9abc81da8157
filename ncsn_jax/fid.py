"""FID of any two image sets: `python -m ncsn_jax.fid A B`.

  python -m ncsn_jax.fid A B [--kid] [--json=OUT] [--preprocessing=tf|pytorch]
      [--batch_size=N] [--weights=SPEC] [--cache_dir=DIR]

A and B are each a folder of PNG/JPEG images (searched recursively), an
`.npz` with uint8 [N,H,W,C] `images` (as `--mode=sample` writes) or a
reference-statistics `.npz` (`--mode=fid_stats`'s, TTUR / pytorch-fid's
`mu` and `sigma`, score_sde's `pool_3`); see `evaluation.image_sets`.
Images of any size are resized to 299 by the chosen preprocessing; every
folder file is converted to RGB, as pytorch-fid reads it. It prints N of
each side, the preprocessing, the Inception weights' hash and the FID; with
`--kid` the KID when both sides have features (images or `pool_3`); the
Inception Score of A when A is images and the weights have the fc head. The
numbers come from the report builder eval mode uses
(`sample_quality.scores`). Bad input ends with one `error:` line and exit
status 2.
"""

import os

# Before TensorFlow (file access only here) loads: no C++ start-up notices.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')

import argparse  # pylint: disable=g-import-not-at-top,g-bad-import-order
import json
import sys
from typing import Optional, TextIO

from ncsn_jax import config_checks
from ncsn_jax import console
from ncsn_jax import errors
from ncsn_jax import outputs
from ncsn_jax.evaluation import image_sets
from ncsn_jax.evaluation import sample_quality
from ncsn_jax.evaluation.inception import weight_files

PROGRESS_SECONDS = 5.0  # At most one progress line this often.
HEAD_HINT = ('pass --weights=download (online) or a path to pytorch-fid\'s '
             f'{weight_files.PYTORCH_FID_NAME}')


def parse_args(argv) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog='python -m ncsn_jax.fid',
                                   description=__doc__.split('\n')[0])
  parser.add_argument('a', metavar='A', help='folder, images .npz or stats '
                      '.npz (the samples: IS is of A)')
  parser.add_argument('b', metavar='B', help='folder, images .npz or stats '
                      '.npz (the reference)')
  parser.add_argument('--kid', action='store_true',
                      help='also the KID (needs features on both sides)')
  parser.add_argument('--json', default='', metavar='OUT',
                      help='write the full report as JSON here')
  parser.add_argument('--preprocessing', default='tf',
                      choices=config_checks.INCEPTION_PREPROCESSING,
                      help='tf: TTUR / improved-gan (default); pytorch: '
                      'pytorch-fid')
  parser.add_argument('--batch_size', type=int, default=50,
                      help='images per Inception forward pass')
  parser.add_argument('--weights', default='',
                      help="'' = the cached conversion, 'download', or a "
                      'path (as config.eval.inception_weights)')
  parser.add_argument('--cache_dir', default='',
                      help='Inception cache folder (default: the user cache)')
  args = parser.parse_args(argv)
  if args.batch_size < 1:
    parser.error(f'--batch_size must be >= 1, got {args.batch_size}')
  return args


def _side_info(side: image_sets.Side, stats: dict) -> dict:
  info = {'path': side.path, 'kind': side.kind,
          'num': stats['meta'].get('num_examples'),
          'features': stats['pool_3'] is not None}
  if side.converted:
    info['converted_to_rgb'] = dict(sorted(side.converted.items()))
  return info


def compute(a: str, b: str, *, kid: bool = False, preprocessing: str = 'tf',
            batch_size: int = 50, weights: str = '', cache_dir: str = '',
            extractor=None, stream: Optional[TextIO] = None) -> dict:
  """The report: FID (KID, IS), both sides' N, preprocessing, weights.

  Args:
    a: the samples (folder, images npz or statistics npz).
    b: the reference, the same kinds.
    kid: also the KID.
    preprocessing: 'tf' or 'pytorch'.
    batch_size: images per Inception forward pass.
    weights: the Inception weights spec (as config.eval.inception_weights).
    cache_dir: the Inception cache folder ('' = the user cache).
    extractor: an `inception.extractor.Extractor` to use instead of loading
      `weights` (loaded only if a side has images).
    stream: where progress lines go (default stderr).
  """
  sides = [image_sets.open_side(path, what, preprocessing, batch_size * 4)
           for path, what in ((a, 'A'), (b, 'B'))]
  if any(s.stats is None for s in sides) and extractor is None:
    extractor = sample_quality.load_extractor(weights, preprocessing,
                                              batch_size, cache_dir)
  stats = []
  for side in sides:
    # Not a `with`: a side that fails prints its error line only.
    bar = console.Progress(side.n, side.what, unit='images',
                           stream=stream or sys.stderr,
                           every_s=PROGRESS_SECONDS, enabled=True)
    stats.append(image_sets.side_statistics(side, extractor, bar.update))
    if side.stats is None:
      bar.close()
  used = extractor if any(s.stats is None for s in sides) else None
  out = sample_quality.scores(stats[0], stats[1], kid=kid,
                              inception_score=sides[0].kind != 'stats',
                              names=('A', 'B'), head_hint=HEAD_HINT)
  trunks = {s.what: st['meta'].get('weights_trunk_sha256')
            for s, st in zip(sides, stats) if s.kind == 'stats'}
  if used:
    trunks['the weights in use'] = used.trunk_sha256
  notes = sample_quality.weights_notes(trunks)
  notes += [f'{s.what}: converted {sum(s.converted.values())} file(s) to '
            'RGB (' + ', '.join(f'{n} {m}' for m, n in sorted(
                s.converted.items())) + ')' for s in sides if s.converted]
  return dict(out, a=_side_info(sides[0], stats[0]),
              b=_side_info(sides[1], stats[1]),
              **sample_quality.describe(preprocessing, used), notes=notes)


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


def main(argv, extractor=None) -> int:
  """The command: prints the summary (and writes --json); 2 on bad input.

  `extractor` as in `compute` (one network for many calls).
  """
  args = parse_args(argv)
  try:
    if args.json:  # Before the work, not after it.
      outputs.check_writable(os.path.dirname(os.path.abspath(args.json)),
                             '--json')
      if os.path.isdir(args.json):
        raise errors.InputError(f'--json={args.json} is a folder; give a '
                                'file path.')
    report = compute(args.a, args.b, kid=args.kid,
                     preprocessing=args.preprocessing,
                     batch_size=args.batch_size, weights=args.weights,
                     cache_dir=args.cache_dir, extractor=extractor)
    lines = summary(report)
    if args.json:
      try:
        outputs.save_text(args.json, json.dumps(report, indent=2,
                                                allow_nan=False))
      except OSError as e:
        raise errors.InputError(f'cannot write --json={args.json} '
                                f'({e.strerror or e}).') from e
      lines.append(f'report: {args.json}')
  except errors.InputError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  print('\n'.join(lines))
  return 0


def run() -> None:
  """Console-script entry point (`ncsn-jax-fid`)."""
  sys.exit(main(sys.argv[1:]))


if __name__ == '__main__':
  run()
