"""Tiny NCSNv2 on 8x8 RGB images: smoke runs and end-to-end tests (seconds).

By default it trains on the embedded scikit-learn digits (grey, repeated to 3
channels), so `run.py --config=configs/tiny.py` runs anywhere, offline. An
argument picks another data set at the same size, e.g.
`--config=configs/tiny.py:cifar10` (or `get_config('cifar10')`), which reads
CIFAR-10 from tfds in `config.data.data_dir`, or `:image_folder` with
`--config.data.data_dir=FOLDER`.
"""

from configs import default


def get_config(dataset: str = 'digits'):
  config = default.get_default_config()
  config.data.dataset = dataset
  config.data.image_size = 8
  config.data.channels = 3
  config.data.random_flip = dataset != 'digits'  # Mirrored digits are not.
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
