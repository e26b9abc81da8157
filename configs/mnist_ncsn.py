"""NCSN on MNIST 28x28 (NCSN paper; official anneal.yml), ngf 64."""

from configs import ncsn_v1


def get_config():
  config = ncsn_v1.get_config()
  config.data.dataset = 'mnist'
  config.data.image_size = 28
  config.data.channels = 1
  config.data.random_flip = False
  config.model.ngf = 64
  return config
