"""NCSN on CelebA 32x32 (centre crop 140, then resize), NCSN paper."""

from configs import ncsn_v1


def get_config():
  config = ncsn_v1.get_config()
  config.data.dataset = 'celeba'
  config.data.crop_size = 140
  return config
