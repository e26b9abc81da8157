"""Shared set-up of the multi-process tests (imported by both sides)."""

import os
import re

from configs import tiny
import jax
import numpy as np

from ncsn_jax import models
from ncsn_jax import parallel
from ncsn_jax import train_state
from ncsn_jax.training import loop
from ncsn_jax.training import step as step_lib

N_STEPS = 3
_DEVICES = re.compile(r'--xla_force_host_platform_device_count=\d+')


def xla_flags(devices: int) -> str:
  """This process's XLA_FLAGS (tests/conftest.py's) with `devices` CPU
  devices, for the processes a test starts."""
  return _DEVICES.sub(f'--xla_force_host_platform_device_count={devices}',
                      os.environ.get('XLA_FLAGS', ''))


def config():
  c = tiny.get_config()
  c.data.dataset = 'digits'
  c.data.channels = 1
  # eval_resume_test's training run has the same 4-device train step:
  # compiled once for both (JAX's persistent cache).
  c.training.batch_size = 4
  c.training.n_iters = 4
  c.training.snapshot_sampling = False
  return c


def global_batches(c) -> np.ndarray:
  """Fixed global batches `[N_STEPS, 4, H, W, 1]`, the same everywhere."""
  shape = (N_STEPS, c.training.batch_size, c.data.image_size,
           c.data.image_size, c.data.channels)
  return np.asarray(jax.random.uniform(jax.random.key(11), shape))


def run_steps(c, images: np.ndarray):
  """N_STEPS train steps on this process's `[N_STEPS, B_process, ...]`."""
  model = models.create_model(c)
  p_train, tx = step_lib.make_train_step(c, model)  # The loop's program.
  state = train_state.create_train_state(c, model, tx, jax.random.key(0))
  state = parallel.replicate(state)
  for i in range(N_STEPS):
    keys = loop.train_keys(jax.random.key(1), i, 1, images.shape[1])
    state, _ = p_train(state, images[i:i + 1], keys)
  return jax.device_get(parallel.unreplicate(state))
