"""The NCSN paper's toy experiments on a 2-D Gaussian mixture (--mode=toy).

  python run.py --config=configs/toy_gmm.py --mode=toy --workdir=runs/toy

Data: 1/5 N((-5,-5), I) + 4/5 N((5,5), I). The plain score model is trained
with sliced score matching (`toy.plain_loss`), the noise-conditional one with
`training.loss` over the `model` noise levels. The paper's toy levels
10 -> 0.1 make annealed Langevin diverge (as a published reproduction found),
so this uses 20 -> 0.7, 10 geometric levels. Step sizes follow our convention
x + alpha s + sqrt(2 alpha) z: the paper's eps = 0.1 is step_lr = 0.05.
"""

from configs import default
import ml_collections


def get_config():
  config = default.get_default_config()
  config.model.name = 'toy_mlp'  # Built by experiments/toy.py.
  config.model.sigma_begin = 20.0
  config.model.sigma_end = 0.7
  config.model.num_classes = 10
  # EMA of the weights (NCSNv2): without it the annealed weight varies by
  # about +-0.04 between training seeds, with it by under 0.01.
  config.model.ema = True
  config.model.ema_rate = 0.999
  config.training.batch_size = 128
  config.training.n_iters = 10_000
  config.training.loss = 'dsm'  # Noise-conditional model: dsm | ssm | ssm_vr.
  config.training.n_particles = 1
  config.training.projection = 'gaussian'
  config.optim.lr = 1e-3
  config.sampling.batch_size = 1280  # Samples of each sampler.
  config.sampling.n_steps_each = 100  # Annealed Langevin steps per level.
  config.sampling.step_lr = 0.05  # Annealed: alpha_i = 0.05 (s_i / s_L)^2.
  config.sampling.denoise = False

  config.toy = toy = ml_collections.ConfigDict()
  toy.hidden = 128  # Width of the MLPs' two hidden layers.
  toy.plain_loss = 'ssm_vr'  # Plain model: ssm | ssm_vr (on clean data).
  toy.langevin_step = 0.1  # Plain Langevin eps: x + eps/2 s + sqrt(eps) z.
  toy.langevin_steps = 1000  # Plain Langevin steps.
  toy.init_range = 8.0  # Chains start uniform on [-r, r]^2.
  return config
