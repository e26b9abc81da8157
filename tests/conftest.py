"""Test setup: 4 simulated CPU devices, the weights, the subprocesses' path.

XLA_FLAGS must be set before JAX is first imported, which is why this lives
in conftest.py. pytest itself imports the package from the repository root
(`pythonpath` in pyproject.toml); the scripts the tests start (run.py,
tests/run_with_mock_data.py, tests/multihost_worker.py) get the root through
PYTHONPATH. The Inception weights are those `make inception-weights` writes
into the repository's `.cache/inception`, unless NCSN_JAX_INCEPTION_CACHE
names another folder.
"""

import gc
from importlib import metadata
import os
import tempfile

from packaging import version


# jaxlib 0.12.1 runs some XLA:CPU ops through YNNPACK fusions, which compute
# some reductions differently: NCSN v1's norm-embedding Adam moments then
# land 160-990 float32 ulps from the official ones, where the parity test
# allows 16 times what one ulp of input jitter moves them (7-25 ulps) plus
# 32 (tests/parity_train_test.py). The tests keep XLA's own emitters;
# runs keep jaxlib's default. XLA aborts on a flag it does not know, so
# older jaxlibs do not get it. The processes tests start with other device
# counts keep these flags (multihost_common.xla_flags).
_JAXLIB = version.parse(metadata.version('jaxlib'))
_NO_YNN = (' --xla_cpu_experimental_ynn_fusion_type='
           if _JAXLIB >= version.parse('0.12.1') else '')


def _unless_given(flag: str, value: str) -> str:
  """` --flag=value`, or '' when XLA_FLAGS already names the flag."""
  given = flag in os.environ.get('XLA_FLAGS', '')
  return '' if given else f' --{flag}={value}'


# LLVM's optimisation level: 0 unless XLA_FLAGS names one. Most of the
# suite's CPU time is compiling small programs, of which LLVM's optimisation
# passes are the larger part; at level 0 a tiny train step compiles in 60%
# of the CPU time and a model initialises in 35% (its eager initialisers are
# hundreds of small programs). Programs run slower: the tiny train step
# twice as slowly, and the toy test took 2.4 times the CPU time. Results
# differ from the default level (3) by floating-point rounding only (no
# fused multiply-adds), within every tolerance here but that of the parity
# with the official training steps, which compiles its step at the default
# level (tests/parity_train_test.py); tests that ask for equal bits compare
# runs under the same flags. The toy test, which mostly runs rather than
# compiles, and `make test-newest` (the core tests) use the default.
_OPT = _unless_given('xla_backend_optimization_level', '0')
# XLA:CPU's elemental emitters instead of its newer MLIR fusion emitters
# (runs keep jaxlib's default): the same programs compile in about a fifth
# less CPU time (models_test and langevin_test: 90-105 CPU-s instead of
# 116-132). jaxlib 0.11.1 and later (`make test-newest`) do not know the
# flag, and XLA aborts on a flag it does not know: they keep their default.
_EMITTERS = ('' if _JAXLIB >= version.parse('0.11.1') else
             _unless_given('xla_cpu_use_fusion_emitters', 'false'))
os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + _NO_YNN + _OPT +
                           _EMITTERS +
                           ' --xla_force_host_platform_device_count=4')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
# One BLAS thread per process: the suite already runs more processes than
# there are cores (with two threads, FID's 2048x2048 eigendecompositions
# took about a fifth more CPU time).
os.environ.setdefault('OPENBLAS_NUM_THREADS', '1')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
# Tests (and the run.py subprocesses they start) compile the same small
# programs many times: share them through JAX's persistent cache.
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR',
                      os.path.join(tempfile.gettempdir(), 'ncsn_jax_tests_xla'))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ['PYTHONPATH'] = os.pathsep.join(
    [ROOT] + [p for p in [os.environ.get('PYTHONPATH')] if p])
os.environ.setdefault('NCSN_JAX_INCEPTION_CACHE',
                      os.path.join(ROOT, '.cache', 'inception'))

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


# The longest test files, longest first (minutes each on 2 cores, much of it
# in the processes they start): with pytest-xdist (`make test`, which keeps
# this order) the short files then fill the other workers and no long file
# starts last.
LONG_FILES = ('multihost_test.py', 'step_test.py', 'eval_resume_test.py',
              'data_end_to_end_test.py', 'bench_test.py', 'loop_test.py',
              'fid_cli_test.py', 'resume_kill_test.py',
              'checkpoint_errors_test.py', 'langevin_test.py', 'run_test.py',
              'sampler_dtypes_test.py', 'toy_test.py', 'export_test.py',
              'models_test.py',
              'checkpoint_import_test.py', 'sliced_sm_test.py')


def pytest_collection_modifyitems(items):
  rank = {name: i for i, name in enumerate(LONG_FILES)}
  items.sort(key=lambda item: rank.get(item.path.name, len(LONG_FILES)))
