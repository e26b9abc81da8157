"""NCSN on CIFAR-10 32x32 (NCSN paper), ngf 128, random flips."""

from configs import ncsn_v1


def get_config():
  return ncsn_v1.get_config()  # CIFAR-10 at 32 px is the shared default.
