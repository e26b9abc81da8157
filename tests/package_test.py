"""The package's shape: dependencies, layers, no test hooks; the user cache.

pyproject.toml matches the requirements files, whose ranges admit the
installed versions, and its requires-python is where they install; the
library's modules form layers without cycles, read no test variables and use
only public JAX; the cache folder is per user.
"""

import ast
from importlib import metadata
import os
import re
import subprocess
import sys
import tomllib
from unittest import mock

from absl.testing import absltest
from configs import tiny
from packaging import requirements
from packaging import specifiers

from ncsn_jax import outputs
from ncsn_jax.evaluation import sample_quality
from ncsn_jax.evaluation.inception import weight_files

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, 'ncsn_jax')


def _requirements(name: str) -> list[str]:
  """Requirement lines of a file, without comments, blanks and `-r`."""
  with open(os.path.join(ROOT, name)) as f:
    lines = [line.split('#')[0].strip() for line in f]
  return [line for line in lines if line and not line.startswith('-r')]


def _name(requirement: str) -> str:
  return re.split(r'[<>=!~\[; ]', requirement, maxsplit=1)[0].lower()


def _pyproject() -> dict:
  with open(os.path.join(ROOT, 'pyproject.toml'), 'rb') as f:
    return tomllib.load(f)


def _library_imports() -> dict[str, set[str]]:
  """{module path: the ncsn_jax modules it imports (anywhere in it)}."""
  out = {}
  for folder, _, names in os.walk(PACKAGE):
    for name in names:
      if not name.endswith('.py'):
        continue
      path = os.path.join(folder, name)
      with open(path) as f:
        tree = ast.parse(f.read())
      found = set()
      for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and (
            node.module.split('.')[0] == 'ncsn_jax'):
          found.update(f'{node.module}.{a.name}' for a in node.names)
        elif isinstance(node, ast.Import):
          found.update(a.name for a in node.names
                       if a.name.split('.')[0] in ('ncsn_jax', 'jax'))
        if isinstance(node, ast.ImportFrom) and node.module and (
            node.module.split('.')[0] == 'jax'):
          found.add(node.module)
      out[os.path.relpath(path, ROOT)] = found
  return out


def _layer(module: str) -> str:
  """A module's node in the layer graph: its subpackage, or itself."""
  parts = module.split('.')
  if os.path.isdir(os.path.join(ROOT, *parts[:2])):
    return parts[1]
  return parts[1] if len(parts) > 1 else parts[0]


class LayoutTest(absltest.TestCase):

  def test_no_cycles_between_packages(self):
    edges: dict[str, set[str]] = {}
    for path, imports in _library_imports().items():
      source = _layer(path[:-3].replace(os.sep, '.'))
      for module in imports:
        if module.startswith('ncsn_jax.') and _layer(module) != source:
          edges.setdefault(source, set()).add(_layer(module))
    self.assertIn('checkpoints', edges['training'])  # The graph is real.
    # Depth-first: a node reached again while on the path is a cycle.
    state = {}

    def visit(node, path):
      state[node] = 'open'
      for nxt in sorted(edges.get(node, ())):
        self.assertNotEqual(state.get(nxt), 'open',
                            f'import cycle: {" -> ".join(path + [nxt])}')
        if nxt not in state:
          visit(nxt, path + [nxt])
      state[node] = 'done'

    for node in sorted(edges):
      if node not in state:
        visit(node, [node])

  def test_at_most_45_modules_and_pmap_in_parallel_only(self):
    modules = [p for p in _library_imports() if not p.endswith('__init__.py')]
    self.assertLessEqual(len(modules), 45)
    for path in _library_imports():
      with open(os.path.join(ROOT, path)) as f:
        text = f.read()
      if path != os.path.join('ncsn_jax', 'parallel.py'):
        self.assertNotIn('jax.pmap(', text, path)
      self.assertNotIn('NCSN_JAX_TEST', text, path)

  def test_command_entry_points_come_last(self):
    # `python -m module` runs the block when it is reached: a definition
    # after it does not exist yet when `main` calls it.
    paths = [os.path.join(ROOT, p) for p in _library_imports()]
    paths += [os.path.join(ROOT, root, name)
              for root in ('tests', 'bench', 'tools', '.')
              for name in os.listdir(os.path.join(ROOT, root))
              if name.endswith('.py')]
    commands = 0
    for path in paths:
      with open(path) as f:
        body = ast.parse(f.read()).body
      for i, node in enumerate(body):
        if (isinstance(node, ast.If) and isinstance(node.test, ast.Compare)
            and isinstance(node.test.left, ast.Name)
            and node.test.left.id == '__name__'):
          commands += 1
          self.assertEqual(i, len(body) - 1, f'{path}: code after __main__')
    self.assertGreater(commands, 5)

  def test_public_jax_only(self):
    private = 'jax.' + '_src'  # JAX's compatibility policy excludes it.
    for path, imports in _library_imports().items():
      self.assertFalse([m for m in imports if m.startswith(private)], path)
    for root in ('tests', 'bench', 'tools'):
      for name in os.listdir(os.path.join(ROOT, root)):
        if name.endswith('.py'):
          with open(os.path.join(ROOT, root, name)) as f:
            self.assertNotIn(private, f.read(), name)

  def test_modes_without_data_never_import_tensorflow(self):
    # TensorFlow takes seconds to import; sample, import and export read no
    # data. The data package is still what brings it (and hides GPUs).
    code = ('import sys, run\n'
            'from ncsn_jax.sampling import sample_mode\n'
            'from ncsn_jax.interop import export, official_checkpoint\n'
            'loaded = lambda: sorted({m.split(".")[0] for m in sys.modules}\n'
            '    & {"tensorflow", "tensorflow_datasets", "clu"})\n'
            'print(loaded())\n'
            'from ncsn_jax.data import input_pipeline\n'
            'print(loaded())\n')
    result = subprocess.run([sys.executable, '-c', code], cwd=ROOT,
                            capture_output=True, text=True, check=True,
                            env=dict(os.environ, JAX_PLATFORMS='cpu'))
    self.assertEqual(result.stdout.splitlines(),
                     ['[]', "['tensorflow', 'tensorflow_datasets']"])


class PyprojectTest(absltest.TestCase):

  def test_dependencies_are_requirements_txt(self):
    project = _pyproject()['project']
    self.assertEqual(project['name'], 'ncsn_jax')
    self.assertCountEqual(project['dependencies'],
                          _requirements('requirements.txt'))
    names = [_name(r) for r in project['dependencies']]
    self.assertNotIn('torch', names)
    self.assertIn('jax', names)
    self.assertLen(set(names), len(names))

  def test_test_extra_is_requirements_test_txt(self):
    project = _pyproject()['project']
    self.assertCountEqual(project['optional-dependencies']['test'],
                          _requirements('requirements-test.txt'))
    with open(os.path.join(ROOT, 'requirements-test.txt')) as f:
      self.assertIn('-r requirements.txt', f.read())

  def test_only_ncsn_jax_is_packaged(self):
    find = _pyproject()['tool']['setuptools']['packages']['find']
    self.assertEqual(find['include'], ['ncsn_jax', 'ncsn_jax.*'])

  def test_requires_python_is_the_range_that_installs(self):
    # orbax-checkpoint 0.12 and jax 0.10 need 3.11; tensorflow-cpu 2.21 has
    # no 3.14 wheels: outside 3.11-3.13 the requirements do not resolve.
    supported = specifiers.SpecifierSet(
        _pyproject()['project']['requires-python'])
    for version in ('3.11', '3.12', '3.13'):
      self.assertIn(version, supported)
    for version in ('3.10', '3.14'):
      self.assertNotIn(version, supported)
    running = '.'.join(map(str, sys.version_info[:3]))
    self.assertIn(running, supported)  # The suite runs only where it installs.

  def test_installed_versions_are_in_the_declared_ranges(self):
    # `make test` and `make test-newest` both run this: the versions each
    # suite ran with are ones the declared ranges admit.
    for line in (_requirements('requirements.txt') +
                 _requirements('requirements-test.txt')):
      requirement = requirements.Requirement(line)
      installed = metadata.version(requirement.name)
      self.assertTrue(
          requirement.specifier.contains(installed, prereleases=True),
          f'{requirement.name} {installed} is outside {line}')

  def test_no_sys_path_edits_for_the_package(self):
    folders = [os.path.join(ROOT, 'tests'), os.path.join(ROOT, 'bench')]
    for folder in folders:
      for name in sorted(os.listdir(folder)):
        if not name.endswith('.py') or name == 'torch_reference.py':
          continue  # torch_reference imports an external checkout.
        with open(os.path.join(folder, name)) as f:
          edits = re.findall(r'^\s*sys\.path\.(?:insert|append)\(', f.read(),
                             re.MULTILINE)
        self.assertEmpty(edits, name)


class CacheDirsTest(absltest.TestCase):

  def _env(self, **values):
    clear = {
        k: '' for k in ('NCSN_JAX_CACHE', 'NCSN_JAX_INCEPTION_CACHE',
                        'XDG_CACHE_HOME')
    }
    patch = mock.patch.dict(os.environ, dict(clear, **values))
    patch.start()
    self.addCleanup(patch.stop)

  def test_xdg_cache_home(self):
    xdg = self.create_tempdir().full_path
    self._env(XDG_CACHE_HOME=xdg)
    self.assertEqual(outputs.cache_root(), os.path.join(xdg, 'ncsn_jax'))
    self.assertEqual(weight_files.default_cache_dir(),
                     os.path.join(xdg, 'ncsn_jax', 'inception'))

  def test_home_when_nothing_is_set(self):
    home = self.create_tempdir().full_path
    self._env(HOME=home, XDG_CACHE_HOME='relative/is/ignored')
    self.assertEqual(outputs.cache_root(),
                     os.path.join(home, '.cache', 'ncsn_jax'))

  def test_ncsn_jax_cache_wins_over_xdg(self):
    root = self.create_tempdir().full_path
    self._env(XDG_CACHE_HOME=self.create_tempdir().full_path,
              NCSN_JAX_CACHE=root)
    self.assertEqual(outputs.cache_root(), root)
    self.assertEqual(weight_files.default_cache_dir(),
                     os.path.join(root, 'inception'))
    inception = self.create_tempdir().full_path
    os.environ['NCSN_JAX_INCEPTION_CACHE'] = inception
    self.assertEqual(weight_files.default_cache_dir(), inception)

  def test_config_overrides_and_never_the_package(self):
    root = self.create_tempdir().full_path
    self._env(NCSN_JAX_CACHE=root)
    config = tiny.get_config('cifar10')
    self.assertEqual(
        sample_quality.default_stats_path(config, 'train'),
        os.path.join(root, 'inception', 'stats', 'cifar10_8px_train_tf.npz'))
    config.eval.cache_dir = os.path.join(root, 'mine')
    self.assertEqual(
        sample_quality.default_stats_path(config, 'test'),
        os.path.join(root, 'mine', 'stats', 'cifar10_8px_test_tf.npz'))
    with self.assertRaisesRegex(ValueError, 'No Inception weights in .*mine'):
      sample_quality.create_extractor(config)
    self._env(HOME=self.create_tempdir().full_path)
    for path in (outputs.cache_root(), weight_files.default_cache_dir()):
      self.assertFalse(os.path.abspath(path).startswith(PACKAGE), path)


if __name__ == '__main__':
  absltest.main()
