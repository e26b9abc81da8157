"""NCSNv2Deepest on FFHQ 256x256, official ffhq.yml.

FFHQ is read as an image folder (`--config.data.data_dir=PATH` to the PNGs,
any resolution, resized to 256) with a fixed random 63000 / 7000 split.
"""

from configs import default


def get_config():
  config = default.get_default_config()
  config.data.dataset = 'image_folder'
  config.data.image_size = 256
  config.data.test_fraction = 0.1  # 7000 of 70000 images.
  config.model.name = 'ncsnv2_deepest'
  config.model.num_classes = 2311
  config.model.sigma_begin = 348.0
  config.training.batch_size = 32
  config.training.n_iters = 80_001
  config.optim.eps = 1e-3  # FFHQ alone uses Adam eps 1e-3.
  config.sampling.step_lr = 9e-7
  config.sampling.n_steps_each = 3
  config.sampling.batch_size = 36
  return config
