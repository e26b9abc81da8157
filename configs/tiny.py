"""Tiny NCSNv2 on 8x8 images: smoke runs and end-to-end tests (seconds)."""

from configs import default


def get_config():
  config = default.get_default_config()
  config.data.dataset = 'cifar10'
  config.data.image_size = 8
  config.data.channels = 3
  config.data.shuffle_buffer = 16
  config.model.name = 'ncsnv2'
  config.model.ngf = 4
  config.model.num_classes = 4
  config.model.sigma_begin = 1.0
  config.training.batch_size = 4
  config.training.n_iters = 4
  config.training.snapshot_freq = 2
  config.training.log_freq = 1
  config.training.eval_freq = 2
  config.training.snapshot_n_samples = 4
  config.optim.lr = 1e-3
  config.sampling.batch_size = 4
  config.sampling.n_steps_each = 2
  config.sampling.step_lr = 1e-3
  config.eval.batch_size = 4
  config.eval.num_samples = 8
  config.eval.inception_batch_size = 8  # One compiled batch shape.
  return config
