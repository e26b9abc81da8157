"""Eval mode: the test loss and sample quality of checkpoints.

`evaluate` writes a JSON report with the test-split DSM loss and the
sample-quality numbers available for the data set, for one checkpoint or a
sweep over many. The programs it runs (the pmapped test-loss step, the
pmapped sampler, the sample scorer) are built once per process
(`build_programs`) and reused for every checkpoint.

The samples are kept as they are drawn, one file per sample batch in
`WORKDIR/eval/step_<k>/`, with the checkpoint, seed and settings that made
them: an eval stopped by SIGTERM (or killed) continues where it stopped when
the same command runs again, and gives the report an uninterrupted run
gives. A report is written only once it is complete.
"""

import dataclasses
import functools
import hashlib
import json
import os
from typing import Any, Callable, Optional

from absl import logging
import jax
from jax.experimental import multihost_utils
import numpy as np

from ncsn_jax import checkpoints
from ncsn_jax import config_checks
from ncsn_jax import console
from ncsn_jax import errors
from ncsn_jax import models
from ncsn_jax import outputs
from ncsn_jax import parallel
from ncsn_jax.data import input_pipeline
from ncsn_jax.data import sources
from ncsn_jax.evaluation import digits_metrics
from ncsn_jax.evaluation import metrics
from ncsn_jax.evaluation import sample_quality
from ncsn_jax.sampling import langevin
from ncsn_jax.training import step as step_lib


def test_split(config):
  """This process's test split in `eval.batch_size` batches, one pass in a
  fixed order (a tf.data dataset: each iteration starts it again).

  Opening it is what fails when the data set is missing or too small, so
  eval mode opens it before it draws any sample.
  """
  return input_pipeline.create_dataset(
      config, 'test', batch_size=config.eval.batch_size // jax.process_count(),
      shuffle=False, repeat=False, augment=False, seed=config.seed + 1)


def test_loss(config, p_eval, params, key, ds) -> float:
  """Mean DSM loss over the whole test split (per-example random levels).

  `p_eval(params, images, keys)` is the pmapped `step.eval_step`; batch i
  draws example j's level and noise from fold_in(fold_in(key, i), j). `ds`
  is `test_split(config)`.
  """
  per_process = config.eval.batch_size // jax.process_count()
  total, count = 0.0, 0
  batches = console.track(input_pipeline.numpy_iterator(ds),
                          max(int(ds.cardinality()), 0), 'test loss',
                          unit='batches')
  for i, batch in enumerate(batches):
    keys = parallel.process_keys(jax.random.fold_in(key, i), per_process)
    total += float(p_eval(params, batch['image'], keys))
    count += 1
  if not count:
    raise errors.ConfigError(
        'the test split has fewer examples than '
        f'config.eval.batch_size={config.eval.batch_size}; lower it.')
  return total / count


def create_sample_scorer(config) -> Callable[[np.ndarray], dict]:
  """`scorer(uint8 images [N,H,W,C]) -> metrics` for the config's data.

  Digits: the classifier-based scores; other data sets: IS, FID and KID.
  What the metrics need besides the samples (the digits classifier, or the
  Inception network and reference statistics) is made on the first call and
  reused, so a checkpoint sweep makes it once.
  """
  if config.data.dataset != 'digits':
    return sample_quality.create_scorer(config)

  @functools.cache
  def prepared():
    x_train, y_train, x_test, y_test = sources.digits_split(config)
    clf = digits_metrics.train_digits_classifier(x_train[..., :1], y_train)
    return clf, x_test[..., :1], y_test

  def scorer(images):
    clf, x_test, y_test = prepared()
    scores = digits_metrics.digits_scores(clf, images[..., :1], x_test, y_test)
    # Strict JSON: a statistic that is undefined here (KID's std over one
    # block) is null, not NaN.
    return {'digits_classifier': {
        k: metrics.finite_or_none(v) for k, v in scores.items()}}

  return scorer


@dataclasses.dataclass(frozen=True)
class Programs:
  """What eval mode runs for every checkpoint, built once (`build_programs`).

  Attributes:
    p_eval: pmapped `step.eval_step`, `(params, images, keys) -> loss`.
    p_sample: pmapped sampler, `(params, x0, keys) -> (x, trajectory)`.
    scorer: `create_sample_scorer(config)`.
    test_data: `test_split(config)`, what `p_eval` runs on.
  """
  p_eval: Callable
  p_sample: Callable
  scorer: Callable[[np.ndarray], dict]
  test_data: Any


def build_programs(config, model: Any = None) -> Programs:
  """The eval-mode programs of `config` (its model unless `model`).

  Opens the test split first: a missing data set is one error line before
  any compilation or sampling.
  """
  test_data = test_split(config)
  if model is None:
    model = models.create_model(config)
  return Programs(
      p_eval=step_lib.make_eval_step(config, model),
      p_sample=parallel.pmap_sampler(langevin.get_sampler(config, model)),
      scorer=create_sample_scorer(config), test_data=test_data)


def sample_record(config, step: int, params) -> dict:
  """What makes an eval's samples: kept with them, checked on reuse."""
  digest = hashlib.sha256(json.dumps(checkpoints.leaf_digests(params),
                                     sort_keys=True).encode()).hexdigest()
  s = config.sampling
  return {'checkpoint_step': int(step), 'params_sha256': digest,
          'seed': int(config.seed),
          'sampling': {'n_steps_each': s.n_steps_each,
                       'step_lr': float(s.step_lr), 'denoise': s.denoise,
                       'dtype': s.get('dtype') or config.model.dtype},
          'noise_levels': [float(x) for x in models.get_sigmas(config)]}


def evaluate_checkpoint(config, workdir: str, step: int, programs: Programs,
                        stop: Optional[Callable[[], bool]] = None) -> dict:
  """Test DSM loss and sample quality of checkpoint `step` (0 = latest).

  The samples go to `WORKDIR/eval/step_<step>/` batch by batch (reused by
  a rerun); `stop` is polled between device calls and raises
  `errors.Interrupted` when it returns True. Writes
  `WORKDIR/eval/report_<step>.json` (the main process) and returns the
  report.
  """
  _, params, step = checkpoints.load_params(config, workdir, step)
  key = jax.random.fold_in(jax.random.key(config.seed + 2), step)
  eval_key, sample_key = jax.random.split(key)
  report = {
      'step': step,
      'params': 'ema' if config.model.ema else 'raw',
      'num_samples': config.eval.num_samples,
      'quantisation': sample_quality.QUANTISATION,
  }
  if config.eval.num_samples > 0:
    images = langevin.generate(
        config, programs.p_sample, params, sample_key,
        config.eval.num_samples,
        os.path.join(workdir, 'eval', f'step_{step}'),
        sample_record(config, step, params), stop)
    if jax.process_index() == 0:
      report.update(programs.scorer(images))
  report['test_dsm_loss'] = test_loss(config, programs.p_eval, params,
                                      eval_key, programs.test_data)
  path = os.path.join(workdir, 'eval', f'report_{step}.json')
  if jax.process_index() == 0:
    outputs.save_text(path, json.dumps(report, indent=2))
  logging.info('Eval report of checkpoint %d: %s', step, path)
  return report


def _flatten(report: dict, prefix: str = '') -> dict:
  out = {}
  for k, v in report.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f'{prefix}{k}.'))
    elif isinstance(v, (int, float)):
      out[prefix + k] = v
  return out


def best_step(rows: list[dict]) -> tuple[int, str]:
  """The best row's step and the criterion used (FID, score, then loss)."""
  for key, sign in (('fid', 1), ('digits_classifier.frechet_distance', 1),
                    ('test_dsm_loss', 1)):
    if all(key in r for r in rows):
      return min(rows, key=lambda r: sign * r[key])['step'], key
  raise ValueError('no common metric to rank the checkpoints by.')


def _swept_steps(config, workdir: str) -> list[int]:
  """Checkpoint steps in [eval.begin_ckpt, eval.end_ckpt], every `every`."""
  e = config.eval
  all_steps = checkpoints.steps(workdir)
  end = e.end_ckpt or float('inf')
  steps = [s for s in all_steps
           if e.begin_ckpt <= s <= end and (not e.every or s % e.every == 0)]
  if not steps:
    raise errors.CheckpointError(
        f'no checkpoint of {workdir} lies in config.eval.begin_ckpt='
        f'{e.begin_ckpt} .. config.eval.end_ckpt={e.end_ckpt} (have '
        f'{all_steps}).')
  return steps


def sweep(config, workdir: str, programs: Programs,
          stop: Optional[Callable[[], bool]] = None) -> str:
  """Evaluates every checkpoint in [eval.begin_ckpt, eval.end_ckpt].

  Only steps that are multiples of `eval.every` are taken (0 = all). Writes
  `WORKDIR/eval/sweep.json` and `sweep.csv` and names the best checkpoint,
  as the papers selected theirs; `sweep.png` and TensorBoard scalars of
  `WORKDIR/eval/` show the metrics against the step (`outputs`).
  """
  e = config.eval
  steps = _swept_steps(config, workdir)
  rows = [_flatten(evaluate_checkpoint(config, workdir, s, programs, stop))
          for s in console.track(steps, len(steps), 'eval sweep',
                                 unit='checkpoints')]
  best, criterion = best_step(rows)
  columns = sorted({k for r in rows for k in r}, key=lambda k: (k != 'step',
                                                                k))
  csv = [','.join(columns)] + [
      ','.join(str(r.get(c, '')) for c in columns) for r in rows]
  root = os.path.join(workdir, 'eval')
  outputs.save_text(os.path.join(root, 'sweep.csv'), '\n'.join(csv) + '\n')
  if jax.process_index() == 0:
    outputs.write_sweep(root, rows, criterion)
  path = os.path.join(root, 'sweep.json')
  summary = {'best_step': best, 'criterion': criterion}
  fast = e.num_samples < sample_quality.PAPER_NUM_SAMPLES
  if criterion == 'fid' and fast:
    summary['note'] = (
        f'fast FID from {e.num_samples} samples per checkpoint: good for '
        'ranking, not comparable to the papers\' 50000-sample FID.')
  outputs.save_text(path, json.dumps(dict(summary, rows=rows), indent=2))
  logging.info('Best checkpoint by %s: %d', criterion, best)
  return path


def evaluate(config, workdir: str) -> str:
  """Eval mode: one checkpoint, or a sweep when `eval.begin_ckpt` is set.

  Every checkpoint is evaluated with the same programs (`build_programs`).

  Returns:
    The path of the report (or of the sweep table).
  """
  config_checks.check_config(config, 'eval')
  outputs.check_writable(os.path.join(workdir, 'eval'), '--workdir')
  programs = build_programs(config)
  with console.StopRequest() as stop:
    if config.eval.begin_ckpt > 0:
      return sweep(config, workdir, programs, stop)
    step = evaluate_checkpoint(config, workdir, config.eval.ckpt_id,
                               programs, stop)['step']
  if jax.process_count() > 1:  # The main process has written the report.
    multihost_utils.sync_global_devices('ncsn_jax_eval_report')
  return os.path.join(workdir, 'eval', f'report_{step}.json')


def summary_line(path: str) -> str:
  """The headline numbers of a report or sweep JSON, on one line."""
  with open(path) as f:
    report = json.load(f)
  if 'best_step' in report:
    return f'best checkpoint by {report["criterion"]}: {report["best_step"]}'
  flat = _flatten(report)
  keys = ('step', 'test_dsm_loss', 'fid', 'kid', 'inception_score',
          'digits_classifier.score_ratio',
          'digits_classifier.frechet_distance')
  return ', '.join(f'{k.split(".")[-1]}={flat[k]:.4g}' for k in keys
                   if flat.get(k) is not None)
