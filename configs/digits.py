"""NCSNv2 on scikit-learn's handwritten digits: the embedded default demo.

The digits (1797 images, 8x8, 17 grey levels) ship inside scikit-learn, so
this runs anywhere without downloads; training takes minutes on a laptop CPU.
"""

from configs import default


def get_config():
  config = default.get_default_config()
  config.data.dataset = 'digits'
  config.data.image_size = 8
  config.data.channels = 1
  config.data.random_flip = False  # Mirrored digits are not digits.
  config.model.name = 'ncsnv2'
  config.model.ngf = 16
  config.model.num_classes = 16
  config.model.sigma_begin = 4.8  # Max pairwise distance of the images.
  config.model.sigma_end = 0.05  # 17 grey levels: finer noise is wasted.
  config.model.ema_rate = 0.995
  config.training.batch_size = 64
  config.training.n_iters = 3000  # Score ratio 0.87 (0.89 after 4000).
  config.training.snapshot_freq = 1000
  config.training.log_freq = 50
  config.training.eval_freq = 100
  config.training.snapshot_n_samples = 64
  config.optim.lr = 1e-3
  config.sampling.batch_size = 100
  config.sampling.n_steps_each = 5
  config.sampling.step_lr = 6e-4
  config.eval.batch_size = 60
  config.eval.num_samples = 1000
  return config
