"""Atomic file writes (a reader never sees a half-written file) and hashes.

Every file the project writes (images, reports, weights, reference
statistics, downloads) goes through `atomic_open`: the bytes go to a
temporary file in the target directory, are flushed to disk, and the file is
then `os.replace`d into place. `sha256_of` identifies weights and their
sources.
"""

import contextlib
import hashlib
import os
import uuid


@contextlib.contextmanager
def atomic_open(path: str):
  """Yields a binary temp file next to `path`; renamed to `path` on success.

  On an exception the temp file is removed and `path` is left as it was.
  """
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  tmp_path = os.path.join(
      directory, f'.{os.path.basename(path)}.{uuid.uuid4().hex}.tmp')
  # os.open with 0o666 honours the umask (mkstemp would leave the file 0600).
  fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
  try:
    with os.fdopen(fd, 'wb') as f:
      yield f
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp_path, path)
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      os.remove(tmp_path)
    raise


def save_bytes(path: str, data: bytes) -> None:
  """Writes `data` to `path` atomically."""
  with atomic_open(path) as f:
    f.write(data)


def save_text(path: str, text: str) -> None:
  """Writes UTF-8 `text` to `path` atomically."""
  save_bytes(path, text.encode('utf-8'))


def sha256_of(path_or_bytes) -> str:
  """Hex sha256 of a file (read in 1 MiB chunks) or of a bytes object."""
  digest = hashlib.sha256()
  if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
    digest.update(path_or_bytes)
  else:
    with open(path_or_bytes, 'rb') as f:
      for chunk in iter(lambda: f.read(1 << 20), b''):
        digest.update(chunk)
  return digest.hexdigest()
