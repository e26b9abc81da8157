"""Counts XLA compilations, through JAX's compile-time monitoring events."""

import collections
import contextlib

from jax import monitoring
import jax

# Recorded once per backend compilation (a persistent-cache hit included).
_EVENT = '/jax/core/compile/backend_compile_duration'
# The name every `jax.pmap` program compiles under (pmap runs on jit).
PMAP = 'jit(_fun)'


@contextlib.contextmanager
def counting():
  """Yields a Counter {compiled function name: compilations} filled inside.

  The in-memory caches are cleared first, so every program the block needs
  is compiled (and counted) inside it.
  """
  counts = collections.Counter()

  def listener(event, duration, **kwargs):
    del duration
    if event == _EVENT:
      counts[kwargs.get('fun_name', '?')] += 1

  jax.clear_caches()
  monitoring.register_event_duration_secs_listener(listener)
  try:
    yield counts
  finally:
    monitoring.unregister_event_duration_listener(listener)
