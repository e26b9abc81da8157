"""Export check: ncsn_jax checkpoints written by `run.py --mode=export`
load in torch and in the official code, and compute what ncsn_jax computes.

For each model (NCSN v1, NCSNv2, NCSNv2Deeper, NCSNv2Deepest; ngf 2, L 4,
32x32x3) an ncsn_jax TrainState with Adam moments and an EMA that differs
from the weights is saved as an orbax checkpoint and exported with
`ncsn_jax.interop.export.export_checkpoint`. The file is then loaded with
`torch.load(weights_only=True)`, into the official model with
`load_state_dict(strict=True)`, into the official Adam (one step is taken)
and, for NCSNv2, into the official EMAHelper; the official forward pass is
compared with ncsn_jax's on fixed inputs.

Output: export_check.json.
"""

import json
import os
import tempfile
import types

from configs import tiny  # pylint: disable=g-bad-import-order
import jax
import numpy as np
import torch
import torch_fixture_common as common
import torch_fixture_train as train_fixture

from ncsn_jax import checkpoints
from ncsn_jax import models
from ncsn_jax import train_state
from ncsn_jax.interop import export

NGF, LEVELS, SIZE, BATCH = 2, 4, 32, 4
OFFICIAL_CLASS = {'ncsnv2': 'NCSNv2', 'ncsnv2_deeper': 'NCSNv2Deeper',
                  'ncsnv2_deepest': 'NCSNv2Deepest'}


def jax_config(name: str):
  config = tiny.get_config()
  config.model.name, config.model.ngf = name, NGF
  config.model.num_classes, config.data.image_size = LEVELS, SIZE
  config.model.ema = name != 'ncsn'
  return config


def official_config(config):
  ns = types.SimpleNamespace
  m, o = config.model, config.optim
  return ns(
      data=ns(logit_transform=False, rescaled=False, channels=3,
              image_size=SIZE),
      model=ns(ngf=m.ngf, num_classes=m.num_classes,
               sigma_begin=m.sigma_begin, sigma_end=m.sigma_end,
               sigma_dist=m.sigma_dist, normalization='InstanceNorm++',
               nonlinearity='elu', spec_norm=False, ema=m.ema,
               ema_rate=m.ema_rate),
      optim=ns(optimizer='Adam', lr=o.lr, beta1=o.beta1, eps=o.eps,
               weight_decay=o.weight_decay, amsgrad=o.amsgrad),
      device=torch.device('cpu'))


def jax_state(config):
  """A TrainState after 3 Adam updates with random grads, EMA offset."""
  model = models.create_model(config)
  tx = train_state.create_optimizer(config)
  state = train_state.create_train_state(config, model, tx, jax.random.key(1))
  params, opt_state = state.params, state.opt_state
  leaves, tree = jax.tree.flatten(params)
  for i in range(3):
    keys = jax.random.split(jax.random.key(10 + i), len(leaves))
    grads = tree.unflatten([jax.random.normal(k, x.shape)
                            for k, x in zip(keys, leaves)])
    updates, opt_state = tx.update(grads, opt_state, params)
    params = jax.tree.map(lambda p, u: p + u, params, updates)
  ema = jax.tree.map(lambda p: 0.9 * p + 0.05, params)
  return model, train_state.TrainState(step=np.asarray(3, np.int32),
                                       params=params,
                                       opt_state=opt_state,
                                       ema_params=ema)


def _max_diff(official_model, jax_model, params, x, y):
  with torch.no_grad():
    want = official_model(torch.from_numpy(x.transpose(0, 3, 1, 2)),
                          torch.from_numpy(y).long())
  want = common.nhwc(want)
  got = np.asarray(jax_model.apply({'params': params}, x, y))
  return float(np.abs(got - want).max()), float(np.abs(want).max())


def _check_optimizer(opt, model, states, adam_mu) -> bool:
  """Loads the exported Adam state; each moment must sit on its parameter."""
  opt.load_state_dict(states[1])
  mu = export.flax_to_torch_params(adam_mu)
  ok = True
  for name, p in model.module.named_parameters():
    moment = opt.state[p]['exp_avg'].numpy()
    ok &= moment.shape == tuple(p.shape) and np.array_equal(mu[name], moment)
    p.grad = torch.ones_like(p)
  opt.step()  # Runs only if every moment fits its parameter.
  return bool(ok)


def check(name: str, mods) -> dict:
  config = jax_config(name)
  jax_model, state = jax_state(config)
  oconfig = official_config(config)
  with tempfile.TemporaryDirectory() as workdir:
    checkpoints.save(checkpoints.create_manager(workdir), 3, state)
    path = os.path.join(workdir, 'exported.pth')
    export.export_checkpoint(config, workdir, path)
    size = os.path.getsize(path)
    states = torch.load(path, weights_only=True)
  if name == 'ncsn':
    model = mods['v1'].refinenet.CondRefineNetDilated(oconfig)
    opt = mods['v1'].runner.AnnealRunner(None, oconfig).get_optimizer
  else:
    model = getattr(mods['v2'].ncsnv2, OFFICIAL_CLASS[name])(oconfig)
    opt = lambda p: mods['v2'].losses.get_optimizer(oconfig, p)
  model = torch.nn.DataParallel(model).eval()
  model.load_state_dict(states[0], strict=True)
  rng = np.random.default_rng(3)
  x = rng.random((BATCH, SIZE, SIZE, 3), dtype=np.float32)
  y = np.array([3, 0, 2, 1], np.int32)
  diff, scale = _max_diff(model.module, jax_model, state.params, x, y)
  report = dict(
      file_bytes=size, torch_load_weights_only=True,
      official_load_state_dict_strict=True,
      official_key_order=list(states[0]) == list(model.state_dict()),
      max_abs_diff=diff, output_scale=scale, layout_length=len(states))
  if name != 'ncsn':
    ema = mods['v2'].ema.EMAHelper(mu=oconfig.model.ema_rate)
    ema.register(model)
    ema.load_state_dict(states[4])
    report['ema_key_order'] = list(states[4]) == [
        n for n, _ in model.module.named_parameters()]
    ema_model = ema.ema_copy(model).eval()
    report['ema_max_abs_diff'], report['ema_output_scale'] = _max_diff(
        ema_model.module, jax_model, state.ema_params, x, y)
  report['official_adam_load_and_step'] = _check_optimizer(
      opt(model.parameters()), model, states, state.opt_state[0].mu)
  return report


def record(ncsn_repo: str, ncsnv2_repo: str, out_dir: str) -> None:
  mods = dict(v1=train_fixture.official_v1(ncsn_repo),
              v2=train_fixture.official_v2(ncsnv2_repo))
  report = {name: check(name, mods) for name in
            ('ncsn', 'ncsnv2', 'ncsnv2_deeper', 'ncsnv2_deepest')}
  report['torch_version'] = torch.__version__
  report['jax_version'] = jax.__version__
  path = os.path.join(out_dir, 'export_check.json')
  with open(path, 'w') as f:
    json.dump(report, f, indent=1, sort_keys=True)
    f.write('\n')
  print(json.dumps(report, indent=1, sort_keys=True))
