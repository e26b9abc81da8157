"""NCSNv2 on CelebA 64x64 (centre crop 140), official celeba.yml.

The official runner trains the 4-stage NCSNv2 (not NCSNv2Deeper) at 64 px.
"""

from configs import default


def get_config():
  config = default.get_default_config()
  config.data.dataset = 'celeba'
  config.data.image_size = 64
  config.data.crop_size = 140
  config.model.num_classes = 500
  config.model.sigma_begin = 90.0
  config.training.n_iters = 210_001
  config.sampling.step_lr = 3.3e-6
  config.sampling.n_steps_each = 5
  config.sampling.batch_size = 64
  return config
