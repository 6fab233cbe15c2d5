"""The lab's cache: content-addressed, written atomically, outside the repository.

Everything expensive (downloaded kernels, built images, compiled BPF objects) lives under
``$SOCKREDIR_CACHE`` or ``$XDG_CACHE_HOME/sockredir-lab`` (default ``~/.cache/sockredir-lab``).
An entry only ever appears complete: it is built under a temporary name and renamed into place,
so an interrupted run leaves debris that is ignored, never a half-written entry that is trusted.
Entries that are expensive to build are built under a ``file_lock``, so that concurrent runs build
each one once.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, Iterator


def cache_root() -> Path:
    explicit = os.environ.get("SOCKREDIR_CACHE")
    if explicit:
        root = Path(explicit)
    else:
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        root = Path(base) / "sockredir-lab"
    root.mkdir(parents=True, exist_ok=True)
    return root


def cache_dir(*parts: str) -> Path:
    path = cache_root().joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def digest_of(items: Iterable[object]) -> str:
    """A short stable hash of some inputs: strings, bytes, paths (hashed by content) or JSON-able data."""
    digest = hashlib.sha256()
    for item in items:
        if isinstance(item, Path):
            digest.update(item.name.encode())
            digest.update(item.read_bytes())
        elif isinstance(item, bytes):
            digest.update(item)
        elif isinstance(item, str):
            digest.update(item.encode())
        else:
            digest.update(json.dumps(item, sort_keys=True).encode())
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def atomic_write(path: Path, data: bytes | str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


@contextlib.contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """Yield a fresh temporary directory beside ``path``; on success it replaces ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` until the block ends; the file and its directory are
    created if missing, since a lock is taken before the entry it guards exists.

    Between processes: pytest-xdist workers and parallel CLI runs that need the same cache entry
    take this lock around "check, else build", so one builds it and the others wait, then find it.
    flock, not a lock file that exists or not: the kernel drops the lock when its holder exits, so
    a killed run never leaves a stale lock behind. The lock file itself stays (it is empty).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
