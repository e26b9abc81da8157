"""Sample and eval modes: everything that needs only a checkpoint.

`sample` writes an image grid and a uint8 `.npz` of samples drawn with the
EMA parameters (plus the generation process, inpainting, interpolation and
nearest-neighbour figures when `config.sampling` asks for them); `evaluate`
writes a JSON report with the test-split DSM loss and the sample-quality
numbers available for the data set.
"""

import functools
import json
import os
from typing import Callable, Optional

from absl import logging
import jax
import numpy as np

from ncsn_jax import errors
from ncsn_jax import files
from ncsn_jax import image_io
from ncsn_jax import models
from ncsn_jax import parallel
from ncsn_jax import transforms
from ncsn_jax.data import input_pipeline
from ncsn_jax.evaluation import digits_metrics
from ncsn_jax.evaluation import metrics
from ncsn_jax.evaluation.inception import sample_quality
from ncsn_jax.sampling import figures
from ncsn_jax.sampling import langevin
from ncsn_jax.training import checkpointing
from ncsn_jax.training import losses
from ncsn_jax.training import train


def load_params(config, workdir: str, step: int = 0, ema: bool = True):
  """Parameters of checkpoint `step` (0 = latest) in `workdir`.

  Returns:
    (model, params: the EMA parameters when `ema` and config.model.ema, the
    step restored).
  """
  model = models.create_model(config)
  tx = train.create_optimizer(config)
  target = jax.eval_shape(
      lambda: train.create_train_state(config, model, tx, jax.random.key(0)))
  directory = os.path.join(workdir, checkpointing.CHECKPOINT_DIR)
  if not os.path.isdir(directory):
    raise errors.CheckpointError(
        f'no checkpoint folder {directory}; train first (--mode=train) or '
        'point --workdir at a run that has checkpoints.')
  manager = checkpointing.create_manager(workdir, create=False)
  state, step = checkpointing.restore(manager, target, step)
  params = state.ema_params if ema and config.model.ema else state.params
  return model, params, step


def generate(config, model, params, key, n: int):
  """`n` samples in data space, float `[n,H,W,C]`, in sampler-sized batches.

  Every batch has `config.sampling.batch_size` chains (the last one padded),
  so the sampler compiles once.
  """
  batch = config.sampling.batch_size
  parallel.check_divisible_local(batch, 'config.sampling.batch_size')
  sample_fn = langevin.get_sampler(config, model)
  out = []
  for i in range(-(-n // batch)):
    batch_key = jax.random.fold_in(key, i)
    x0 = langevin.init_samples(batch_key, config, batch)
    x, _ = parallel.p_sample(sample_fn, params, x0, batch_key)
    out.append(np.asarray(transforms.inverse_data_transform(x, config)))
  return np.concatenate(out)[:n]


def sample(config, workdir: str) -> dict[str, str]:
  """Sample mode: grid PNG and uint8 npz under `WORKDIR/samples/`."""
  model, params, step = load_params(config, workdir, config.sampling.ckpt_id)
  s = config.sampling
  parallel.check_divisible_local(s.batch_size, 'config.sampling.batch_size')
  key = jax.random.fold_in(jax.random.key(config.seed), step)
  data = None
  if s.data_init:
    data = input_pipeline.load_split_arrays(config, 'test', s.batch_size)
  x0 = langevin.init_samples(key, config, s.batch_size, data=data)
  x, trajectory = parallel.p_sample(langevin.get_sampler(config, model),
                                    params, x0, key)
  images = np.asarray(transforms.inverse_data_transform(x, config))
  root = os.path.join(workdir, 'samples')
  scale = max(1, 64 // images.shape[1])
  paths = {'grid': os.path.join(root, f'{s.tag}.png'),
           'npz': os.path.join(root, f'{s.tag}.npz')}
  image_io.save_image_grid(paths['grid'], images, scale=scale)
  image_io.save_npz_images(paths['npz'], images)
  if trajectory is not None:
    frames = np.asarray(transforms.inverse_data_transform(trajectory, config))
    n_show = min(8, frames.shape[1])
    process = frames[:, :n_show].swapaxes(0, 1).reshape((-1,) +
                                                         frames.shape[2:])
    paths['process'] = os.path.join(root, f'{s.tag}_process.png')
    image_io.save_image_grid(paths['process'], process,
                                ncol=frames.shape[0], scale=scale)
    paths['gif'] = os.path.join(root, f'{s.tag}_process.gif')
    grids = [image_io.make_grid(f) for f in frames]
    image_io.save_gif(paths['gif'], np.stack(grids), scale=scale)
  paths.update(figures.write_figures(config, model, params, key,
                                           images, root))
  logging.info('Sampled checkpoint %d: %s', step, paths)
  return paths


def test_loss(config, model, params, key) -> float:
  """Mean DSM loss over the whole test split (per-example random levels)."""
  loss_fn = losses.get_loss_fn(config, model)
  p_eval = parallel.pmap_eval_step(lambda p, x, k: train.eval_step(
      p, x, k, config=config, loss_fn=loss_fn))
  per_process = config.eval.batch_size // jax.process_count()
  ds = input_pipeline.create_dataset(
      config, 'test', batch_size=per_process, shuffle=False, repeat=False,
      augment=False, seed=config.seed + 1)
  total, count = 0.0, 0
  for i, batch in enumerate(input_pipeline.numpy_iterator(ds)):
    images = parallel.shard(batch['image'])
    total += float(p_eval(params, images, jax.random.fold_in(key, i)))
    count += 1
  if not count:
    raise errors.ConfigError('the test split has fewer examples than '
                     f'config.eval.batch_size={config.eval.batch_size}.')
  return total / count


def create_sample_scorer(config) -> Callable[[np.ndarray], dict]:
  """`scorer(images [N,H,W,C] in [0, 1]) -> metrics` for the config's data.

  Digits: the classifier-based scores; other data sets: IS, FID and KID.
  What the metrics need besides the samples (the digits classifier, or the
  Inception network and reference statistics) is made on the first call and
  reused, so a checkpoint sweep makes it once.
  """
  if config.data.dataset != 'digits':
    return sample_quality.create_scorer(config)

  @functools.cache
  def prepared():
    x_train, y_train, x_test, y_test = input_pipeline.digits_split(config)
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


def evaluate_checkpoint(config, workdir: str, step: int = 0,
                        scorer: Optional[Callable] = None) -> dict:
  """Test DSM loss and sample quality of checkpoint `step` (0 = latest).

  `scorer` is `create_sample_scorer(config)`'s, to share between checkpoints.
  Writes `WORKDIR/eval/report_<step>.json` and returns the report.
  """
  parallel.check_divisible(config.eval.batch_size, 'config.eval.batch_size')
  model, params, step = load_params(config, workdir, step)
  key = jax.random.fold_in(jax.random.key(config.seed + 2), step)
  eval_key, sample_key = jax.random.split(key)
  report = {
      'step': step,
      'test_dsm_loss': test_loss(config, model, params, eval_key),
      'params': 'ema' if config.model.ema else 'raw',
      'num_samples': config.eval.num_samples,
      'quantisation': 'uint8, round(clip(x, 0, 1) * 255)',
  }
  if config.eval.num_samples > 0:
    images = generate(config, model, params, sample_key,
                      config.eval.num_samples)
    images = image_io.to_uint8(images).astype(np.float32) / 255.0
    report.update((scorer or create_sample_scorer(config))(images))
  path = os.path.join(workdir, 'eval', f'report_{step}.json')
  files.save_text(path, json.dumps(report, indent=2))
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


def sweep(config, workdir: str) -> str:
  """Evaluates every checkpoint in [eval.begin_ckpt, eval.end_ckpt].

  Only steps that are multiples of `eval.every` are taken (0 = all). Writes
  `WORKDIR/eval/sweep.json` and `sweep.csv` and names the best checkpoint,
  as the papers selected theirs.
  """
  e = config.eval
  manager = checkpointing.create_manager(workdir, create=False)
  end = e.end_ckpt or float('inf')
  steps = [s for s in sorted(manager.all_steps())
           if e.begin_ckpt <= s <= end and (not e.every or s % e.every == 0)]
  if not steps:
    raise errors.CheckpointError(
        f'no checkpoint of {workdir} lies in config.eval.begin_ckpt='
        f'{e.begin_ckpt} .. config.eval.end_ckpt={e.end_ckpt} (have '
        f'{sorted(manager.all_steps())}).')
  scorer = create_sample_scorer(config)
  rows = [_flatten(evaluate_checkpoint(config, workdir, s, scorer))
          for s in steps]
  best, criterion = best_step(rows)
  columns = sorted({k for r in rows for k in r}, key=lambda k: (k != 'step',
                                                                k))
  csv = [','.join(columns)] + [
      ','.join(str(r.get(c, '')) for c in columns) for r in rows]
  root = os.path.join(workdir, 'eval')
  files.save_text(os.path.join(root, 'sweep.csv'),
                        '\n'.join(csv) + '\n')
  path = os.path.join(root, 'sweep.json')
  summary = {'best_step': best, 'criterion': criterion}
  fast = e.num_samples < sample_quality.PAPER_NUM_SAMPLES
  if criterion == 'fid' and fast:
    summary['note'] = (
        f'fast FID from {e.num_samples} samples per checkpoint: good for '
        'ranking, not comparable to the papers\' 50000-sample FID.')
  files.save_text(path, json.dumps(dict(summary, rows=rows), indent=2))
  logging.info('Best checkpoint by %s: %d', criterion, best)
  return path


def evaluate(config, workdir: str) -> str:
  """Eval mode: one checkpoint, or a sweep when `eval.begin_ckpt` is set.

  Returns:
    The path of the report (or of the sweep table).
  """
  if config.eval.begin_ckpt > 0:
    return sweep(config, workdir)
  step = evaluate_checkpoint(config, workdir, config.eval.ckpt_id)['step']
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
