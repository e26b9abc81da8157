"""Shared NCSN (2019) settings: CondRefineNetDilated, sigma 1 -> 0.01, L = 10.

The v1 runner always dequantises training and test data uniformly, keeps no
EMA and samples with T = 100, eps = 2e-5 and no denoising step.
"""

from configs import default


def get_config():
  config = default.get_default_config()
  config.data.uniform_dequantization = True
  config.model.name = 'ncsn'
  config.model.num_classes = 10
  config.model.sigma_begin = 1.0
  config.model.ema = False
  config.training.n_iters = 200_001
  config.optim.lr = 1e-3
  config.sampling.n_steps_each = 100
  config.sampling.step_lr = 2e-5
  config.sampling.denoise = False
  return config
