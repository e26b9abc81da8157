"""Every config check, per mode, before a run does any work.

`check_config(config, mode)` raises `errors.ConfigError` with one line that
names the field and the fix, so a bad value fails in seconds instead of
after data loading, compilation or hours of training (or never, giving
silently wrong numbers). This is the one place the config is validated: the
modules that use a field trust it. Batch sizes are checked against the
devices of this process group, so call it after `jax.distributed` is
initialised. The data sources call `check_split_size` once they know how
many examples a split has.

The names a field may take (data sets, losses, masks, ...) are listed here;
the modules that implement them read these lists.
"""

import math

import jax

from ncsn_jax import errors
from ncsn_jax.models import refinenet

MODES = ('train', 'sample', 'eval', 'import', 'export', 'toy', 'tune',
         'fid_stats')
DTYPES = ('float32', 'bfloat16')
SIGMA_DISTS = ('geometric', 'uniform')  # Noise-level spacings.
SSM_LOSSES = ('ssm', 'ssm_vr')  # Sliced score matching (plain, variance-red.).
LOSSES = ('dsm',) + SSM_LOSSES
PROJECTIONS = ('gaussian', 'rademacher')  # SSM projection vectors.
# Inpainting regions to fill in (sampling.inpainting_mask).
MASKS = ('right_half', 'left_half', 'top_half', 'bottom_half', 'center',
         'random')
INCEPTION_PREPROCESSING = ('tf', 'pytorch')  # TTUR / pytorch-fid inputs.
# Channels each data set provides; image_folder converts to either 1 or 3.
NATIVE_CHANNELS = {'digits': 1, 'mnist': 1, 'cifar10': 3, 'celeba': 3,
                   'lsun': 3, 'image_folder': None}
DATASETS = tuple(NATIVE_CHANNELS)
# (height, width) of every image of a data set; LSUN and folders vary.
IMAGE_SHAPES = {'digits': (8, 8), 'mnist': (28, 28), 'cifar10': (32, 32),
                'celeba': (218, 178)}
# LSUN scene categories: the ones with both a train and a validation split.
LSUN_SCENES = ('bedroom', 'bridge', 'church_outdoor', 'classroom',
               'conference_room', 'dining_room', 'kitchen', 'living_room',
               'restaurant', 'tower')


def _value(config, field: str):
  section, name = field.split('.')
  return config[section][name]


def _fail(field: str, value, rule: str):
  raise errors.ConfigError(f'config.{field}={value!r} {rule}.')


def _choice(config, field: str, choices) -> None:
  value = _value(config, field)
  if value not in choices:
    _fail(field, value,
          'is unknown; use one of ' + ', '.join(str(c) for c in choices))


def _at_least(config, field: str, minimum: int) -> None:
  value = _value(config, field)
  if not isinstance(value, int) or value < minimum:
    _fail(field, value, f'must be an integer >= {minimum}')


def _in_range(config,
              field: str,
              low: float,
              high: float = math.inf,
              low_open: bool = True,
              high_open: bool = True) -> None:
  """`field` must be a finite number in the interval (or [) low, high )."""
  value = _value(config, field)
  ok = isinstance(value, (int, float)) and math.isfinite(value) and (
      value > low if low_open else value
      >= low) and (high == math.inf or
                   (value < high if high_open else value <= high))
  if not ok:
    left, right = '(' if low_open else '[', ')' if high_open else ']'
    interval = (f'> {low}' if low_open else f'>= {low}') if high == math.inf \
        else f'in {left}{low}, {high}{right}'
    _fail(field, value, f'must be a finite number {interval}')


def check_batch(config, field: str, devices: int, what: str) -> None:
  """`field` must be a positive multiple of `devices` (named `what`)."""
  value = _value(config, field)
  if not isinstance(value, int) or value < 1:
    _fail(
        field, value, f'must be a positive multiple of the {devices} '
        f'{what}; use e.g. {devices}')
  if value % devices:
    lower = value // devices * devices
    options = ' or '.join(str(v) for v in (lower, lower + devices) if v)
    _fail(field, value, f'is not divisible by the {devices} {what}; use '
          f'{options}')


def _devices():
  return jax.device_count(), 'devices'


def _local_devices():
  return jax.local_device_count(), 'local devices'


def check_model(config) -> None:
  """The network, its image size, its noise levels and its EMA."""
  _choice(config, 'model.name', tuple(refinenet.MODELS))
  check_image_size(config)
  _choice(config, 'model.dtype', DTYPES)
  _at_least(config, 'model.ngf', 1)
  check_noise(config)


def check_image_size(config) -> None:
  """config.data.image_size must fit the model's downsampling."""
  name, size = config.model.name, config.data.image_size
  factor = refinenet.downsampling_factor(refinenet.MODELS[name][1])
  if size < 2 * factor or size % factor:
    raise errors.ConfigError(
        f'config.data.image_size={size} does not fit model {name!r}: it '
        f'must be a multiple of {factor} and at least {2 * factor}; '
        f'set config.data.image_size accordingly.')


def check_noise(config) -> None:
  """Noise levels sigma_1 > ... > sigma_L > 0 (L >= 2) and the EMA rate."""
  _choice(config, 'model.sigma_dist', SIGMA_DISTS)
  _at_least(config, 'model.num_classes', 2)
  _in_range(config, 'model.sigma_end', 0.0)
  m = config.model
  _in_range(config, 'model.sigma_begin', 0.0)
  if m.sigma_begin <= m.sigma_end:
    _fail(
        'model.sigma_begin', m.sigma_begin, 'must be larger than '
        f'config.model.sigma_end={m.sigma_end}; swap them or raise '
        'config.model.sigma_begin')
  _in_range(config, 'model.ema_rate', 0.0, 1.0, low_open=False)


def check_training(config) -> None:
  """Training fields, the loss and the optimiser."""
  check_batch(config, 'training.batch_size', *_devices())
  for field in ('n_iters', 'snapshot_freq', 'log_freq', 'eval_freq',
                'n_jitted_steps', 'n_loss_groups', 'grad_accum_steps'):
    _at_least(config, f'training.{field}', 1)
  for field in ('keep_checkpoints', 'profile_at_step'):
    _at_least(config, f'training.{field}', 0)
  t = config.training
  per_device = t.batch_size // jax.device_count()
  if per_device % t.grad_accum_steps:
    _fail(
        'training.grad_accum_steps', t.grad_accum_steps,
        f'must divide the per-device batch of {per_device} '
        '(config.training.batch_size / devices)')
  _in_range(config, 'training.anneal_power', -math.inf)
  _choice(config, 'training.loss', LOSSES)
  if t.loss in SSM_LOSSES:
    _choice(config, 'training.projection', PROJECTIONS)
    _at_least(config, 'training.n_particles', 1)
  check_optimizer(config)


def check_optimizer(config) -> None:
  _choice(config, 'optim.optimizer', ('Adam',))
  _in_range(config, 'optim.lr', 0.0)
  _in_range(config, 'optim.beta1', 0.0, 1.0, low_open=False)
  _in_range(config, 'optim.eps', 0.0)
  _in_range(config, 'optim.weight_decay', 0.0, low_open=False)
  _at_least(config, 'optim.warmup', 0)


def check_chains(config, batch: bool = True) -> None:
  """The Langevin sampler: batch (when `batch`), steps and step size."""
  if batch:
    check_batch(config, 'sampling.batch_size', *_local_devices())
  _at_least(config, 'sampling.n_steps_each', 1)
  _in_range(config, 'sampling.step_lr', 0.0)
  _at_least(config, 'sampling.record_every', 0)
  if 'chains_per_call' in config.sampling:
    _at_least(config, 'sampling.chains_per_call', 0)
  if config.sampling.get('dtype'):
    _choice(config, 'sampling.dtype', DTYPES)


def check_sampling(config) -> None:
  """Sample mode: the chains, the checkpoint and the figures asked for."""
  check_chains(config)
  s = config.sampling
  _at_least(config, 'sampling.ckpt_id', 0)
  if not s.tag or '/' in s.tag:
    _fail('sampling.tag', s.tag, 'must be a non-empty file name stem')
  _at_least(config, 'sampling.nearest_neighbors', 0)
  if s.inpainting:
    _choice(config, 'sampling.inpainting_mask', MASKS)
  for flag, field in (('inpainting', 'completions'), ('interpolation',
                                                      'n_interpolations')):
    value = s[field]
    if s[flag] and (not isinstance(value, int) or value < 1 or
                    s.batch_size % value):
      _fail(
          f'sampling.{field}', value, 'must be >= 1 and divide '
          f'config.sampling.batch_size={s.batch_size}')
  d = jax.local_device_count()
  if s.interpolation and (s.batch_size // s.n_interpolations) % d:
    _fail('sampling.n_interpolations', s.n_interpolations,
          f'gives {s.batch_size // s.n_interpolations} grid rows '
          f'(config.sampling.batch_size / n_interpolations), which the {d} '
          'local devices do not divide; make the rows a multiple of '
          f'{d}')


def check_eval(config, mode: str) -> None:
  """Evaluation: test-loss batch, sample count, checkpoints, Inception."""
  check_batch(config, 'eval.batch_size', *_devices())
  if mode == 'train':
    return
  for field in ('num_samples', 'ckpt_id', 'begin_ckpt', 'end_ckpt', 'every'):
    _at_least(config, f'eval.{field}', 0)
  e = config.eval
  if e.end_ckpt and e.begin_ckpt > e.end_ckpt:
    _fail(
        'eval.begin_ckpt', e.begin_ckpt, 'must be at most '
        f'config.eval.end_ckpt={e.end_ckpt} (0 = the last checkpoint)')
  if e.num_samples:
    check_chains(config)
  check_inception(config)


def check_inception(config) -> None:
  _at_least(config, 'eval.inception_batch_size', 1)
  _choice(config, 'eval.inception_preprocessing',
          INCEPTION_PREPROCESSING)
  _choice(config, 'eval.stats_split', ('train', 'test'))


def check_tune(config) -> None:
  """Tune mode: NCSNv2's technique 1-4 inputs."""
  _in_range(config, 'tune.sigma_begin', 0.0, low_open=False)
  _in_range(config, 'model.sigma_end', 0.0)
  _at_least(config, 'sampling.n_steps_each', 1)
  _at_least(config, 'tune.block_size', 1)
  if config.tune.sigma_begin <= 0:
    _at_least(config, 'tune.subset_size', 2)
    _at_least(config, 'tune.max_images', config.tune.subset_size)


def check_toy(config) -> None:
  """Toy mode: the 2-D experiment's own section plus training and sampler."""
  if 'toy' not in config:
    raise errors.ConfigError(
        '--mode=toy needs a toy config (config.toy is missing); '
        'use --config=configs/toy_gmm.py.')
  check_noise(config)
  _at_least(config, 'training.batch_size', 1)
  _at_least(config, 'training.n_iters', 1)
  _choice(config, 'training.loss', LOSSES)
  _choice(config, 'toy.plain_loss', SSM_LOSSES)
  _choice(config, 'training.projection', PROJECTIONS)
  _at_least(config, 'training.n_particles', 1)
  check_optimizer(config)
  _at_least(config, 'sampling.batch_size', 1)
  _at_least(config, 'sampling.n_steps_each', 1)
  _in_range(config, 'sampling.step_lr', 0.0)
  for field in ('hidden', 'langevin_steps'):
    _at_least(config, f'toy.{field}', 1)
  for field in ('langevin_step', 'init_range'):
    _in_range(config, f'toy.{field}', 0.0)


def check_data(config) -> None:
  """`config.data`: the data set, its geometry, channels and input space."""
  data = config.data
  if data.dataset not in NATIVE_CHANNELS:
    raise errors.ConfigError(
        f'config.data.dataset={data.dataset!r} is unknown; use one of '
        f'{", ".join(NATIVE_CHANNELS)}.')
  _check_geometry(data)
  _check_channels(data)
  if data.dataset == 'lsun' and data.category not in LSUN_SCENES:
    raise errors.ConfigError(
        f'config.data.category={data.category!r} is not an LSUN scene '
        f'category with a validation split; use one of '
        f'{", ".join(LSUN_SCENES)}.')
  if data.shuffle_buffer <= 0:
    raise errors.ConfigError(
        f'config.data.shuffle_buffer={data.shuffle_buffer} must be positive.')
  if data.dataset in ('digits', 'image_folder') and not (
      0.0 < data.test_fraction < 1.0):
    raise errors.ConfigError(
        f'config.data.test_fraction={data.test_fraction} must lie in (0, 1).')
  if data.rescaled and data.logit_transform:
    raise errors.ConfigError(
        'config.data.rescaled and config.data.logit_transform are both set; '
        'choose one input space (set the other to False).')


def check_config(config, mode: str) -> None:
  """Raises `errors.ConfigError` (one line) for anything `mode` cannot use.

  Args:
    config: the full experiment config.
    mode: one of `MODES` (run.py's --mode).
  """
  if mode not in MODES:
    raise errors.ConfigError(
        f'--mode={mode} is unknown; use one of {", ".join(MODES)}.')
  if mode == 'toy':
    check_toy(config)
    return
  if mode == 'tune' and config.tune.sigma_begin > 0:
    _at_least(config, 'data.image_size', 1)  # Only D = size^2 channels.
    _choice(config, 'data.channels', (1, 3))
  else:
    check_data(config)
  if mode in ('train', 'sample', 'eval', 'import', 'export'):
    check_model(config)
  if mode == 'train':
    check_training(config)
    check_eval(config, mode)
    if config.training.snapshot_sampling:  # Grids of snapshot_n_samples.
      check_chains(config, batch=False)
      check_batch(config, 'training.snapshot_n_samples', *_local_devices())
  elif mode == 'sample':
    check_sampling(config)
  elif mode == 'eval':
    check_eval(config, mode)
  elif mode == 'fid_stats':
    check_inception(config)
  elif mode == 'tune':
    check_tune(config)


# ------------------------------------------------------------------ data


def _check_geometry(data) -> None:
  """image_size and crop_size are positive / non-negative and fit the data."""
  if data.image_size <= 0:
    raise errors.ConfigError(
        f'config.data.image_size={data.image_size} must be positive.')
  if data.crop_size < 0:
    raise errors.ConfigError(
        f'config.data.crop_size={data.crop_size} must be >= 0 (0 = none).')
  if data.crop_size and data.dataset == 'digits':
    raise errors.ConfigError(
        f'config.data.crop_size={data.crop_size}: the 8x8 digits are not '
        'cropped; set config.data.crop_size=0.')
  shape = IMAGE_SHAPES.get(data.dataset)
  if shape and data.crop_size > min(shape):
    raise errors.ConfigError(
        f'config.data.crop_size={data.crop_size} is larger than the '
        f'{shape[0]}x{shape[1]} (height x width) images of {data.dataset}; '
        f'use at most {min(shape)}, or 0 for no crop.')


def _check_channels(data) -> None:
  if data.channels not in (1, 3):
    raise errors.ConfigError(
        f'config.data.channels={data.channels} must be 1 or 3.')
  if NATIVE_CHANNELS[data.dataset] == 3 and data.channels != 3:
    raise errors.ConfigError(
        f'config.data.channels={data.channels}, but {data.dataset} images '
        'have 3 channels; set config.data.channels=3.')


def batch_field(config, split: str, batch_size: int) -> str:
  """The config field a per-process batch size comes from, with its value.

  Training batches come from `config.training.batch_size`, test batches from
  `config.eval.batch_size`, both split over `jax.process_count()` processes;
  any other size is named by its value.
  """
  group = 'training' if split == 'train' else 'eval'
  total = config[group].batch_size
  if total // jax.process_count() == batch_size:
    return f'config.{group}.batch_size={total}'
  return f'batch_size={batch_size}'


def check_split_size(config, split: str, n, batch_size: int, source: str,
                     fix: str) -> None:
  """Fails unless a shard of `n` examples fills one batch of `batch_size`.

  Args:
    config: the run config.
    split: 'train' or 'test'.
    n: examples in this process's shard (None when unknown: no check).
    batch_size: per-process batch size; 0 only asks for a non-empty split.
    source: what the split was taken from, for the message.
    fix: how to get more examples, for the message (may be empty).
  """
  if n is None or (n > 0 and n >= batch_size):
    return
  where = ''
  if jax.process_count() > 1:
    where = f' on process {jax.process_index()} of {jax.process_count()}'
  field = batch_field(config, split, batch_size) if batch_size else ''
  need = f', fewer than one batch of {field}' if field else ''
  lower = f'lower {field.split("=")[0]}' if field else ''
  fixes = ' or '.join(f for f in (fix, lower) if f)
  raise errors.ConfigError(
      f'split {split!r} of {source} has {n} examples{where}{need}; '
      f'{fixes or "use a larger data set"}.')
