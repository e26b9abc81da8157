"""Runs run.py with tfds replaced by its offline mock (for end-to-end tests).

The repository root must be importable (PYTHONPATH; tests/conftest.py sets
it for the processes the tests start).
"""

import os
import runpy
import sys

import tensorflow_datasets as tfds

if __name__ == '__main__':
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  sys.argv = [os.path.join(root, 'run.py')] + sys.argv[1:]
  with tfds.testing.mock_data(num_examples=16):
    runpy.run_path(sys.argv[0], run_name='__main__')
