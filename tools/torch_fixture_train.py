"""Train-step fixtures: three steps of the official training loops, recorded.

For each kind a tiny model (ngf 2, 32x32x3) is given random weights, two
warm-up steps of the official loss and optimizer (so Adam has moments) and,
for NCSNv2, an EMA shadow offset from the weights by 0.02 N(0, 1) noise (as
after a long run; at mu = 0.999 the updates of a shadow equal to the
weights would drown in float32 round-off). That state is saved in the
official layout (`<kind>_train_init.pth`, in the legacy serialisation of
the torch 1.x the authors used, the smaller one). Then the official runner's
own `train()` (NCSNRunner / AnnealRunner) resumes from it for three steps on
three fixed batches, with the data set, data loader and tensorboard writer
replaced by stand-ins, `snapshot_freq = 1` (the runner saves its checkpoint
after every step) and every random draw of the official modules recorded.

Outputs: <kind>_train_init.pth, <kind>_train_draws.npz,
<kind>_train_states.npz (kind: ncsn, ncsnv2).
"""

import collections
import copy
import os
import shutil
import sys
import tempfile
import types

import numpy as np
import torch
import torch_fixture_common as common

NGF, BATCH, SIZE, STEPS, WARMUP = 2, 4, 32, 3, 2
EMA_OFFSET = 0.02


class _Data:
  """Stand-in for a torchvision data set (the loader ignores it)."""

  def __init__(self, *args, **kwargs):
    del args, kwargs

  def __len__(self):
    return BATCH * STEPS


class _Loader:
  """Stand-in for torch's DataLoader: yields the fixed batches."""

  def __init__(self, batches):
    self.batches = batches

  def __iter__(self):
    return iter(self.batches)

  def __len__(self):
    return len(self.batches)


def _batches(rng):
  """STEPS (X, y) batches as ToTensor gives them: k / 255, NCHW."""
  return [(torch.from_numpy(rng.integers(0, 256, (BATCH, 3, SIZE, SIZE),
                                         dtype=np.uint8)).float() / 255.,
           torch.zeros(BATCH, dtype=torch.long)) for _ in range(STEPS)]


def v2_config(repo: str, **model):
  c = common.load_yml(repo, 'cifar10.yml')
  c['model'].update(ngf=NGF, **model)
  c['training'].update(batch_size=BATCH, n_epochs=1, n_iters=10**9,
                       snapshot_freq=1, snapshot_sampling=False)
  c['data']['num_workers'] = 0
  config = common.namespace(c)
  config.device = torch.device('cpu')
  config.tb_logger = common.ScalarLog()
  return config


def v1_config(repo: str, **model):
  c = common.load_yml(repo, 'anneal.yml')
  # anneal.yml's commented CIFAR-10 block.
  c['data'] = dict(dataset='CIFAR10', image_size=SIZE, channels=3,
                   logit_transform=False, random_flip=True)
  c['model'].update(ngf=NGF, **model)
  c['training'].update(batch_size=BATCH, n_epochs=1, n_iters=10**9,
                       snapshot_freq=1)
  config = common.namespace(c)
  config.device = torch.device('cpu')
  return config


def official_v2(repo: str):
  runner = common.import_official(repo, 'runners.ncsn_runner')
  return types.SimpleNamespace(
      runner=runner, dsm=sys.modules['losses.dsm'],
      losses=sys.modules['losses'], datasets=sys.modules['datasets'],
      models=sys.modules['models'], ncsnv2=sys.modules['models.ncsnv2'],
      ema=sys.modules['models.ema'])


def official_v1(repo: str):
  runner = common.import_official(repo, 'ncsn_anneal_runner',
                                  'runners/anneal_runner.py')
  return types.SimpleNamespace(
      runner=runner, dsm=sys.modules['losses.dsm'],
      refinenet=sys.modules['models.cond_refinenet_dilated'])


def _warm_up(model, opt, loss_fn, gen, ema=None):
  for _ in range(WARMUP):
    x = torch.rand((BATCH, 3, SIZE, SIZE), generator=gen)
    loss = loss_fn(model, x)
    opt.zero_grad()
    loss.backward()
    opt.step()
    if ema is not None:
      ema.update(model)


def init_v2(mods, config, gen, path):
  """Random official NCSNv2 + warm-up; saved as the official runner does."""
  model = torch.nn.DataParallel(mods.ncsnv2.NCSNv2(config))
  common.perturb_norms(model.module, gen)
  opt = mods.losses.get_optimizer(config, model.parameters())
  ema = mods.ema.EMAHelper(mu=config.model.ema_rate)
  ema.register(model)
  sigmas = mods.models.get_sigmas(config)
  _warm_up(model, opt, lambda m, x: mods.dsm.anneal_dsm_score_estimation(
      m, x, sigmas, None, config.training.anneal_power), gen, ema)
  with torch.no_grad():
    for value in ema.shadow.values():
      value.add_(EMA_OFFSET * torch.randn(value.shape, generator=gen))
  torch.save([model.state_dict(), opt.state_dict(), 0, WARMUP,
              ema.state_dict()], path, _use_new_zipfile_serialization=False)
  return model


def init_v1(mods, config, gen, path):
  model = torch.nn.DataParallel(mods.refinenet.CondRefineNetDilated(config))
  common.perturb_norms(model.module, gen)
  opt = mods.runner.AnnealRunner(None, config).get_optimizer(
      model.parameters())
  sigmas = torch.tensor(np.exp(np.linspace(
      np.log(config.model.sigma_begin), np.log(config.model.sigma_end),
      config.model.num_classes))).float()

  def loss_fn(m, x):
    labels = torch.randint(0, len(sigmas), (x.shape[0],), generator=gen)
    return mods.dsm.anneal_dsm_score_estimation(
        m, x, labels, sigmas, config.training.anneal_power)

  _warm_up(model, opt, loss_fn, gen)
  torch.save([model.state_dict(), opt.state_dict()], path,
             _use_new_zipfile_serialization=False)
  return model


def _record_loss_inputs(module, log):
  """Wraps module.anneal_dsm_score_estimation to keep its samples."""
  real = module.anneal_dsm_score_estimation

  def wrapped(scorenet, samples, *args, **kwargs):
    log.append(samples.detach().clone())
    return real(scorenet, samples, *args, **kwargs)

  module.anneal_dsm_score_estimation = wrapped


def run_v2(mods, config, init_path, batches, workdir):
  """NCSNRunner.train() resumed from init_path; returns (draws, losses)."""
  shutil.copy(init_path, os.path.join(workdir, 'checkpoint.pth'))
  args = types.SimpleNamespace(log_path=workdir, resume_training=True,
                               exp=workdir)
  mods.runner.get_dataset = lambda *a: (_Data(), _Data())
  mods.runner.DataLoader = lambda *a, **k: _Loader(batches)
  draws, inputs = [], []
  _record_loss_inputs(mods.runner, inputs)
  undo = [common.patch_torch(mods.dsm, 'losses.dsm', draws),
          common.patch_torch(mods.datasets, 'datasets', draws)]
  try:
    mods.runner.NCSNRunner(args, config).train()
  finally:
    for u in undo:
      u()
  losses = [v for tag, v, _ in config.tb_logger.scalars if tag == 'loss']
  return draws, inputs, losses


def run_v1(mods, config, init_path, batches, workdir):
  """AnnealRunner.train() resumed from init_path."""
  shutil.copy(init_path, os.path.join(workdir, 'checkpoint.pth'))
  args = types.SimpleNamespace(log=workdir, run=workdir, doc='fixture',
                               resume_training=True)
  logger = common.ScalarLog()
  mods.runner.CIFAR10 = _Data
  mods.runner.DataLoader = lambda *a, **k: _Loader(batches)
  mods.runner.tensorboardX = types.SimpleNamespace(
      SummaryWriter=lambda **k: logger)
  draws, inputs = [], []
  _record_loss_inputs(mods.runner, inputs)
  undo = [common.patch_torch(mods.dsm, 'losses.dsm', draws),
          common.patch_torch(mods.runner, 'runner', draws)]
  try:
    mods.runner.AnnealRunner(args, config).train()
  finally:
    for u in undo:
      u()
  losses = [v for tag, v, _ in logger.scalars if tag == 'loss']
  return draws, inputs, losses


def _split_draws(draws, pattern):
  """Per-step lists of the draws, checked against the expected pattern."""
  got = [(where, name) for where, name, _ in draws]
  assert got == pattern * STEPS, got
  n = len(pattern)
  return [[d[2] for d in draws[i * n:(i + 1) * n]] for i in range(STEPS)]


def _flat(state_dict):
  return np.concatenate([v.detach().cpu().numpy().astype(np.float32).ravel()
                         for v in state_dict.values()])


def _states(workdir, first_step, ema: bool):
  """Arrays of the snapshots the runner wrote after each step.

  Each state is flat: the parameters in the official order (`keys`),
  concatenated; `shapes` [K, 4] (zero-padded, `ndims` long) cut them back.
  """
  out = collections.defaultdict(list)
  for k in range(STEPS):
    states = torch.load(os.path.join(
        workdir, f'checkpoint_{first_step + k}.pth'), weights_only=True)
    model = collections.OrderedDict(
        (n[len('module.'):], v) for n, v in states[0].items()
        if n != 'module.sigmas')
    opt = states[1]['state']
    assert sorted(opt) == list(range(len(model)))
    out['params'].append(_flat(model))
    for moment in ('exp_avg', 'exp_avg_sq'):
      out[moment].append(_flat({i: opt[i][moment] for i in opt}))
    out['adam_step'].append(float(opt[0]['step']))
    if ema:
      assert list(states[4]) == list(model)
      out['ema'].append(_flat(states[4]))
  out = {k: np.asarray(v, np.float32) for k, v in out.items()}
  out['keys'] = np.array(list(model))
  out['ndims'] = np.array([v.dim() for v in model.values()], np.int32)
  out['shapes'] = np.array([list(v.shape) + [0] * (4 - v.dim())
                            for v in model.values()], np.int32)
  out['global_step'] = np.arange(first_step, first_step + STEPS,
                                 dtype=np.int32)
  return out


def _settings(config, optim: dict) -> dict:
  m = config.model
  return dict(ngf=m.ngf, num_classes=m.num_classes,
              sigma_begin=float(m.sigma_begin),
              sigma_end=float(m.sigma_end), image_size=SIZE, batch_size=BATCH,
              anneal_power=float(config.training.anneal_power),
              torch_version=torch.__version__, **optim)


def _optim(opt_state) -> dict:
  g = opt_state['param_groups'][0]
  return dict(lr=g['lr'], beta1=g['betas'][0], beta2=g['betas'][1],
              eps=g['eps'], weight_decay=g['weight_decay'],
              amsgrad=g['amsgrad'])


def record(kind: str, repo: str, out_dir: str, seed: int) -> None:
  """Writes the three fixture files of `kind` ('ncsn' or 'ncsnv2')."""
  torch.manual_seed(seed)
  gen = torch.Generator().manual_seed(seed)
  rng = np.random.default_rng(seed)
  init_path = os.path.join(out_dir, f'{kind}_train_init.pth')
  v2 = kind == 'ncsnv2'
  mods = official_v2(repo) if v2 else official_v1(repo)
  config = v2_config(repo) if v2 else v1_config(repo)
  (init_v2 if v2 else init_v1)(mods, copy.deepcopy(config), gen, init_path)
  batches = _batches(rng)
  with tempfile.TemporaryDirectory() as workdir:
    draws, inputs, losses = (run_v2 if v2 else run_v1)(
        mods, config, init_path, batches, workdir)
    states = _states(workdir, WARMUP + 1 if v2 else 1, ema=v2)
  init = torch.load(init_path, weights_only=True)
  out = dict(batch=np.stack([common.nhwc(x) for x, _ in batches]),
             losses=np.asarray(losses, np.float32),
             **_settings(config, _optim(init[1])))
  if v2:
    steps = _split_draws(draws, [('losses.dsm', 'randint'),
                                 ('losses.dsm', 'randn_like')])
    for x, inp in zip(batches, inputs):  # data_transform is the identity.
      assert torch.equal(x[0], inp)
    out.update(ema_rate=config.model.ema_rate,
               sigmas=init[0]['module.sigmas'].numpy(), init_step=WARMUP)
  else:
    steps = _split_draws(draws, [('runner', 'rand_like'),
                                 ('runner', 'randint'),
                                 ('losses.dsm', 'randn_like')])
    out.update(dequant_u=np.stack([common.nhwc(s[0]) for s in steps]),
               dequantized=np.stack([common.nhwc(x) for x in inputs]),
               sigmas=np.exp(np.linspace(
                   np.log(config.model.sigma_begin),
                   np.log(config.model.sigma_end),
                   config.model.num_classes)).astype(np.float32),
               init_step=0)
    steps = [s[1:] for s in steps]
  out.update(labels=np.stack([s[0].numpy() for s in steps]).astype(np.int32),
             noise=np.stack([common.nhwc(s[1]) for s in steps]))
  assert len(losses) == STEPS, losses
  common.save_npz(os.path.join(out_dir, f'{kind}_train_draws.npz'), out)
  common.save_npz(os.path.join(out_dir, f'{kind}_train_states.npz'), states)
