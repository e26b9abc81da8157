"""Test setup: 4 simulated CPU devices and the repository root on sys.path.

XLA_FLAGS must be set before JAX is first imported, which is why this lives
in conftest.py.
"""

import gc
import os
import sys
import tempfile

os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           ' --xla_force_host_platform_device_count=4')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
# Tests (and the run.py subprocesses they start) compile the same small
# programs many times: share them through JAX's persistent cache.
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR',
                      os.path.join(tempfile.gettempdir(), 'ncsn_jax_tests_xla'))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # pylint: disable=g-import-not-at-top
import pytest  # pylint: disable=g-import-not-at-top

# absltest helpers (create_tempdir) read flags that pytest never parses.
if not flags.FLAGS.is_parsed():
  flags.FLAGS.mark_as_parsed()


@pytest.fixture(autouse=True, scope='module')
def _free_programs_after_each_module():
  """Drops JAX's compiled programs and traces once a test module is done.

  Every module builds its own small networks; without this one pytest
  process keeps all their executables (and the arrays they pin) alive.
  """
  yield
  import jax  # pylint: disable=g-import-not-at-top
  jax.clear_caches()
  gc.collect()
