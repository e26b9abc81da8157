"""Sampler fixtures: the official annealed Langevin dynamics, recorded.

Tiny models (ngf 2, L = 3 levels 1 .. 0.01, 32x32x3, random weights) run
T = 2 steps per level of
  * NCSN v1: `AnnealRunner.anneal_Langevin_dynamics` (ermongroup/ncsn),
    sigmas as its test() passes them (float64 NumPy), step_lr 2e-5;
  * NCSNv2: `models.anneal_Langevin_dynamics` (ermongroup/ncsnv2) with
    final_only=True and denoise=True, sigmas as float32 NumPy (as
    NCSNRunner.sample passes them), step_lr 6.2e-6 (cifar10.yml);
  * NCSNv2: `models.anneal_Langevin_dynamics_inpainting` (right half
    missing), 2 reference images x 1 completion.
The official functions run unchanged; their `torch` is a Recorder (every
randn_like, and v1's clamp input, i.e. the chain state) and the score
network is wrapped to record its inputs.

Outputs: ncsn_sampler.pth, ncsnv2_sampler.pth (the models, official
layout), sampler_ncsn.npz, sampler_ncsnv2.npz, inpainting_ncsnv2.npz.
"""

import contextlib
import io
import os

import numpy as np
import torch
import torch_fixture_common as common
import torch_fixture_train as train_fixture

LEVELS, STEPS_EACH, CHAINS = 3, 2, 2
SIGMA_BEGIN, SIGMA_END = 1.0, 0.01
V1_STEP_LR, V2_STEP_LR = 2e-5, 6.2e-6


class _Recorded(torch.nn.Module):
  """The score network, keeping (input, labels) of every call."""

  def __init__(self, model):
    super().__init__()
    self.model, self.calls = model, []

  def forward(self, x, y):
    self.calls.append((x.detach().clone(), y.detach().clone()))
    return self.model(x, y)


def _model(kind, mods, config, gen, out_dir):
  """A random official model (eval mode), saved in the official layout."""
  if kind == 'ncsnv2':
    model = torch.nn.DataParallel(mods.ncsnv2.NCSNv2(config))
  else:
    model = torch.nn.DataParallel(mods.refinenet.CondRefineNetDilated(config))
  common.perturb_norms(model.module, gen)
  model.eval()
  opt = torch.optim.Adam(model.parameters())  # Fresh: empty state.
  states = [model.state_dict(), opt.state_dict()]
  if kind == 'ncsnv2':
    shadow = {k: v.detach().clone()
              for k, v in model.module.named_parameters()}
    states += [0, 0, shadow]
  torch.save(states, os.path.join(out_dir, f'{kind}_sampler.pth'))
  return model


def _draws(draws, names):
  got = [d[1] for d in draws]
  assert got == names * LEVELS * STEPS_EACH, got
  n = len(names)
  return [np.stack([common.nhwc(d[2]) for d in draws[i::n]])
          for i in range(n)]


def _meta(sigmas, step_lr, step_sizes) -> dict:
  return dict(sigmas=np.asarray(sigmas), step_lr=step_lr,
              step_sizes=np.asarray(step_sizes, np.float64),
              n_steps_each=STEPS_EACH, torch_version=torch.__version__)


def sample_v1(repo, out_dir, gen):
  mods = train_fixture.official_v1(repo)
  config = train_fixture.v1_config(repo, num_classes=LEVELS,
                                   sigma_begin=SIGMA_BEGIN,
                                   sigma_end=SIGMA_END)
  model = _model('ncsn', mods, config, gen, out_dir)
  sigmas = np.exp(np.linspace(np.log(SIGMA_BEGIN), np.log(SIGMA_END),
                              LEVELS))  # As AnnealRunner.test: float64.
  x0 = torch.rand((CHAINS, 3, 32, 32), generator=gen)
  draws = []
  undo = common.patch_torch(mods.runner, 'runner', draws, extra=('clamp',))
  try:
    images = mods.runner.AnnealRunner(None, config).anneal_Langevin_dynamics(
        x0.clone(), model, sigmas, STEPS_EACH, V1_STEP_LR)
  finally:
    undo()
  states, noise = _draws(draws, ['clamp', 'randn_like'])
  step_sizes = [V1_STEP_LR * (s / sigmas[-1])**2 for s in sigmas]
  out = dict(x0=common.nhwc(x0), noise=noise, states=states,
             returned=np.stack([common.nhwc(x) for x in images]),
             **_meta(sigmas, V1_STEP_LR, step_sizes))
  common.save_npz(os.path.join(out_dir, 'sampler_ncsn.npz'), out)


def _v2_setup(repo, out_dir, gen):
  mods = train_fixture.official_v2(repo)
  config = train_fixture.v2_config(repo, num_classes=LEVELS,
                                   sigma_begin=SIGMA_BEGIN,
                                   sigma_end=SIGMA_END)
  model = _model('ncsnv2', mods, config, gen, out_dir)
  sigmas = mods.models.get_sigmas(config).cpu().numpy()  # As sample().
  step_sizes = [V2_STEP_LR * (s / sigmas[-1])**2 for s in sigmas]
  return mods, config, _Recorded(model), sigmas, step_sizes


def sample_v2(mods, config, scorenet, sigmas, step_sizes, out_dir, gen):
  x0 = mods.datasets.data_transform(
      config, torch.rand((CHAINS, 3, 32, 32), generator=gen))
  draws = []
  undo = common.patch_torch(mods.models, 'models', draws)
  try:
    images = mods.models.anneal_Langevin_dynamics(
        x0.clone(), scorenet, sigmas, STEPS_EACH, V2_STEP_LR,
        final_only=True, verbose=False, denoise=True)
  finally:
    undo()
  (noise,) = _draws(draws, ['randn_like'])
  assert len(images) == 1 and len(scorenet.calls) == LEVELS * STEPS_EACH + 1
  out = dict(x0=common.nhwc(x0), noise=noise,
             score_inputs=np.stack([common.nhwc(x) for x, _ in
                                    scorenet.calls]),
             score_labels=np.stack([y.numpy() for _, y in scorenet.calls]
                                   ).astype(np.int32),
             returned=common.nhwc(images[0])[None],
             **_meta(sigmas, V2_STEP_LR, step_sizes))
  common.save_npz(os.path.join(out_dir, 'sampler_ncsnv2.npz'), out)


def inpaint_v2(mods, config, scorenet, sigmas, step_sizes, out_dir, gen):
  rng = np.random.default_rng(7)
  refer = torch.from_numpy(rng.integers(0, 256, (CHAINS, 3, 32, 32),
                                        dtype=np.uint8)).float() / 255.
  x0 = mods.datasets.data_transform(
      config, torch.rand((CHAINS, 1, 3, 32, 32), generator=gen))
  start = x0.clone()  # The official function writes into its argument.
  scorenet.calls.clear()
  draws = []
  undo = common.patch_torch(mods.models, 'models', draws)
  try:
    with contextlib.redirect_stdout(io.StringIO()):  # It prints each step.
      images = mods.models.anneal_Langevin_dynamics_inpainting(
          x0, refer, scorenet, sigmas, 32, STEPS_EACH, V2_STEP_LR)
  finally:
    undo()
  known, noise = _draws(draws, ['randn_like', 'randn_like'])
  returned = np.stack([common.nhwc(x) for x in images])
  inputs = np.stack([common.nhwc(x) for x, _ in scorenet.calls])
  # On CPU `.to('cpu')` is no copy: each returned state is the tensor the
  # next known-pixel write changed, i.e. the score network's input.
  assert np.array_equal(returned, inputs)
  out = dict(refer=common.nhwc(refer), x0=common.nhwc(start.view(
      -1, 3, 32, 32)), known_noise=known, noise=noise, returned=returned,
             **_meta(sigmas, V2_STEP_LR, step_sizes))
  common.save_npz(os.path.join(out_dir, 'inpainting_ncsnv2.npz'), out)


def record(ncsn_repo: str, ncsnv2_repo: str, out_dir: str, seed: int):
  torch.manual_seed(seed)
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    sample_v1(ncsn_repo, out_dir, gen)
    setup = _v2_setup(ncsnv2_repo, out_dir, gen)
    sample_v2(*setup, out_dir, gen)
    inpaint_v2(*setup, out_dir, gen)
