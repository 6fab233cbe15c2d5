"""The reaper kills only what is ours: harmless `sleep` children stand in for QEMU.

A marked child carries the marker as its argv[0] (``executable=/bin/sleep``), as QEMU carries it in
``-name``; an unmarked one is a stranger whose PID happens to be in a pid file.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

import lab
from lab.vm import reaper
from lab.vm.reaper import Reaper, Record

# The directory holding the `lab` package under test (a checkout or site-packages), for a child
# Python that must import the same copy.
SOURCE_ROOT = Path(lab.__file__).resolve().parent.parent


@pytest.fixture
def registry(tmp_path) -> Reaper:
    return Reaper(tmp_path / "run")


@pytest.fixture
def children():
    started: list[subprocess.Popen] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def marked_sleep(registry: Reaper, children: list) -> tuple[subprocess.Popen, Record]:
    marker = reaper.new_marker()
    proc, record = reaper.spawn([marker, "60"], marker, reaper=registry, executable="/bin/sleep")
    children.append(proc)
    return proc, record


def stranger(children: list) -> subprocess.Popen:
    proc = subprocess.Popen(["sleep", "60"])
    children.append(proc)
    return proc


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def wait_gone(pid: int, seconds: float = 10) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if reaper.gone(pid):
            return True
        time.sleep(0.05)
    return False


def test_is_ours_needs_the_marker_on_the_command_line(registry, children):
    proc, record = marked_sleep(registry, children)
    assert reaper.is_ours(proc.pid, record.marker)
    other = stranger(children)
    assert not reaper.is_ours(other.pid, record.marker)
    assert not reaper.is_ours(proc.pid, reaper.new_marker())  # a different guest's marker
    assert not reaper.is_ours(dead_pid(), record.marker)


def test_spawn_refuses_a_command_without_its_marker(registry):
    with pytest.raises(ValueError, match="marker"):
        reaper.spawn(["sleep", "1"], reaper.new_marker(), reaper=registry)


def test_sweep_kills_leftovers_of_dead_sessions_only(registry, children):
    leftover, leftover_record = marked_sleep(registry, children)
    registry.register(leftover.pid, leftover_record.marker)
    # Pretend an earlier, now dead, session started it.
    orphan = Record(leftover.pid, leftover_record.marker, dead_pid(), 12345)
    (registry.directory / f"{orphan.marker}.json").write_text(
        f'{{"pid": {orphan.pid}, "marker": "{orphan.marker}", "owner_pid": {orphan.owner_pid}, '
        f'"owner_start": {orphan.owner_start}}}')
    # A dead session's pid file whose PID now belongs to a stranger: must survive the sweep.
    innocent = stranger(children)
    reused_marker = reaper.new_marker()
    (registry.directory / f"{reused_marker}.json").write_text(
        f'{{"pid": {innocent.pid}, "marker": "{reused_marker}", "owner_pid": {dead_pid()}, '
        f'"owner_start": 1}}')
    # A live session's guest (ours): must survive too.
    alive, alive_record = marked_sleep(registry, children)

    killed = registry.sweep_leftovers()

    assert killed == [leftover.pid]
    assert leftover.wait(timeout=5) is not None
    assert innocent.poll() is None
    assert alive.poll() is None
    remaining = {r.marker for r in registry.records()}
    assert remaining == {alive_record.marker}  # stale files are gone, the live one stays


def test_kill_all_mine_ends_every_registered_child(registry, children):
    procs = [marked_sleep(registry, children)[0] for _ in range(3)]
    other = stranger(children)
    assert sorted(registry.kill_all_mine()) == sorted(p.pid for p in procs)
    for proc in procs:
        assert proc.wait(timeout=5) == -signal.SIGTERM
    assert other.poll() is None
    assert registry.records() == []


def test_stop_terminates_and_forgets(registry, children):
    proc, record = marked_sleep(registry, children)
    reaper.stop(proc, record, reaper=registry, grace=1)
    assert proc.returncode == -signal.SIGTERM
    assert registry.records() == []


def test_child_dies_with_a_killed_parent(tmp_path):
    """PR_SET_PDEATHSIG: SIGKILL the process that spawned the child; the child goes too."""
    script = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        sys.path.insert(0, {str(SOURCE_ROOT)!r})
        from lab.vm import reaper
        marker = reaper.new_marker()
        proc, _ = reaper.spawn([marker, "60"], marker, reaper=reaper.Reaper(Path({str(tmp_path)!r})),
                               executable="/bin/sleep")
        print(proc.pid, marker, flush=True)
        time.sleep(60)
    """)
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    child = None
    try:
        pid_text, marker = parent.stdout.readline().split()
        child = int(pid_text)
        assert reaper.is_ours(child, marker)
        parent.kill()
        parent.wait()
        assert wait_gone(child), f"child {child} outlived its killed parent"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        if child is not None and not reaper.gone(child):
            os.kill(child, signal.SIGKILL)


def test_child_outlives_the_thread_that_spawned_it(registry, children):
    """PR_SET_PDEATHSIG fires when the forking *thread* ends: two guests started at once from
    threads were killed as their threads returned, until spawn() forked from a thread of its own."""
    spawned: list[subprocess.Popen] = []
    starter = threading.Thread(target=lambda: spawned.append(marked_sleep(registry, children)[0]))
    starter.start()
    starter.join()
    time.sleep(0.3)  # SIGKILL from the kernel is immediate; give it time to show anyway
    assert spawned[0].poll() is None, "the child died with the thread that started it"
