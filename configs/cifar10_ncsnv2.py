"""NCSNv2 on CIFAR-10 32x32 (NCSNv2 paper, official cifar10.yml).

  python run.py --config=configs/cifar10_ncsnv2.py --workdir=runs/c10v2
"""

from configs import default


def get_config():
  # The shared defaults are exactly the official CIFAR-10 NCSNv2 settings:
  # sigma 50 -> 0.01 over 232 levels, T = 5, eps = 6.2e-6, 300k iterations,
  # batch 128, Adam lr 1e-4 eps 1e-8, EMA 0.999, random flips, denoising.
  return default.get_default_config()
