"""Shared LSUN settings of NCSNv2 (NCSNv2Deeper); see church/bedroom/tower."""

from configs import default


def get_lsun_config(category: str, image_size: int):
  config = default.get_default_config()
  config.data.dataset = 'lsun'
  config.data.category = category
  config.data.image_size = image_size
  config.model.name = 'ncsnv2_deeper'
  return config
