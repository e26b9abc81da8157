"""NCSNv2Deeper on LSUN bedroom 128x128, official bedroom.yml."""

from configs import lsun_ncsnv2


def get_config():
  config = lsun_ncsnv2.get_lsun_config('bedroom', 128)
  config.model.num_classes = 1086
  config.model.sigma_begin = 190.0
  config.training.n_iters = 150_001
  config.sampling.step_lr = 1.8e-6
  config.sampling.n_steps_each = 3
  config.sampling.batch_size = 36
  return config
