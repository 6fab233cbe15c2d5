"""lab.cache.file_lock between real processes: what pytest-xdist workers and parallel CLI runs rely
on to build a cache entry once. A child process holds the lock; this process tries to take it."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lab.cache import file_lock

REPO = Path(__file__).resolve().parents[2]

# argv: lock path, events file, ready marker, seconds to hold. It logs its entry and exit in the
# events file *inside* the lock, and makes the ready marker once it holds the lock.
HOLDER = """
import sys, time
from pathlib import Path
from lab.cache import file_lock
lock, events, ready, hold = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), float(sys.argv[4])
with file_lock(lock):
    with events.open("a") as log:
        log.write("child in\\n")
    ready.touch()
    time.sleep(hold)
    with events.open("a") as log:
        log.write("child out\\n")
"""


def start_holder(tmp_path: Path, lock: Path, hold: float) -> tuple[subprocess.Popen, Path]:
    events, ready = tmp_path / "events", tmp_path / "ready"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    child = subprocess.Popen([sys.executable, "-c", HOLDER, str(lock), str(events), str(ready), str(hold)],
                             env=env)
    deadline = time.monotonic() + 10
    while not ready.exists():
        if child.poll() is not None or time.monotonic() > deadline:
            child.kill()
            pytest.fail(f"the child never took the lock (exit status {child.poll()})")
        time.sleep(0.01)
    return child, events


def is_locked(lock: Path) -> bool:
    """Whether another process holds the lock, asked without waiting."""
    with open(lock, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False


def test_a_second_process_waits_until_the_holder_releases(tmp_path):
    lock = tmp_path / "entry.lock"
    child, events = start_holder(tmp_path, lock, hold=0.4)
    try:
        assert is_locked(lock)
        started = time.monotonic()
        with file_lock(lock):
            waited = time.monotonic() - started
            with events.open("a") as log:
                log.write("parent in\n")
    finally:
        child.wait(timeout=10)
    # Had the lock not excluded, "parent in" would come between the child's two lines.
    assert events.read_text().splitlines() == ["child in", "child out", "parent in"]
    assert waited > 0.2
    assert child.returncode == 0


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    lock = tmp_path / "entry.lock"
    child, _ = start_holder(tmp_path, lock, hold=30)
    assert is_locked(lock)
    child.kill()
    child.wait(timeout=10)
    assert not is_locked(lock)


def test_the_lock_file_and_its_directory_are_created(tmp_path):
    lock = tmp_path / "not" / "yet" / "there.lock"
    with file_lock(lock):
        assert lock.exists() and is_locked(lock)
    assert not is_locked(lock)
