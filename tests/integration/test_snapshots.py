"""Guests restored from a snapshot (lab/vm/snapshot.py): each restored guest has randomness of its
own and the host's time; a corrupt or stale snapshot is never used, and is rebuilt by a cold boot.

The randomness and clock test runs on 5.10 (the random.c before 5.18's rewrite) and the default
kernel, 6.1 (after it), and on every kernel with --checks-all; the corrupt and stale snapshot tests
are kernel-independent logic and run on the default kernel only.
"""

import json
import threading
import time

import pytest

from lab.pytest_plugin import HostKernel
from lab.vm import snapshot
from lab.vm.guest import Guest

DEFAULT_KERNEL = "6.1"
RANDOMNESS_KERNELS = ("5.10", DEFAULT_KERNEL)
CLOCK_SLACK = 2.0  # seconds: the guest's clock is set over SSH, from the host's, at restore


@pytest.fixture
def guest_kernel(kernel):
    if isinstance(kernel, HostKernel):
        pytest.skip("snapshots are a guest matter")
    return kernel


@pytest.fixture
def default_kernel(guest_kernel):
    if guest_kernel.id != DEFAULT_KERNEL:
        pytest.skip(f"snapshot bookkeeping is kernel-independent: tested on {DEFAULT_KERNEL} only")
    return guest_kernel


def _ensure_snapshot(kernel, image, workdir) -> Guest:
    """Boot once (restoring, or cold and saving), so that a snapshot exists; returns the guest."""
    with Guest(kernel, image, workdir) as guest:
        guest.target.run(["true"], check=True)
    assert snapshot.matching(guest.snapshot_key) is not None, "the cold boot saved no snapshot"
    return guest


def _start(kernel, image, workdir, messages: list[str]) -> Guest:
    guest = Guest(kernel, image, workdir, progress=messages.append)
    guest.start()
    return guest


def test_restored_guests_have_their_own_randomness_and_the_right_clock(guest_kernel, guest_image,
                                                                       tmp_path, request):
    if guest_kernel.id not in RANDOMNESS_KERNELS and not request.config.option.checks_all:
        pytest.skip(f"restored guests' randomness is checked on {', '.join(RANDOMNESS_KERNELS)} "
                    "(random.c before and after 5.18) by default; --checks-all: every kernel")
    _ensure_snapshot(guest_kernel, guest_image, tmp_path / "first")
    guests: list[Guest] = []
    errors: list[BaseException] = []
    messages: list[str] = []

    def start(name: str) -> None:
        try:
            guests.append(_start(guest_kernel, guest_image, tmp_path / name, messages))
        except BaseException as exc:  # reported below; the other guest is still stopped
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(name,)) for name in ("a", "b")]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors, errors
        assert all(guest.restored for guest in guests), messages
        seen = []
        for guest in guests:
            out = guest.target.run(
                "cat /proc/sys/kernel/random/boot_id; head -c 32 /dev/urandom | od -An -tx1 | "
                "tr -d ' \\n'; echo; python3 -c 'import os; print(os.getrandom(32).hex())'; "
                "date +%s.%N", check=True).stdout.split()
            host_now = time.time()
            boot_id, urandom, getrandom, guest_now = out
            assert abs(float(guest_now) - host_now) < CLOCK_SLACK, (guest_now, host_now)
            seen.append((boot_id, urandom, getrandom))
        print(seen)
        for first, second in zip(*seen):
            assert first != second, f"two restored {guest_kernel.id} guests share {first}"
    finally:
        for guest in guests:
            guest.stop()


def test_corrupt_snapshot_is_refused_and_rebuilt(default_kernel, guest_image, tmp_path):
    saved = snapshot.matching(_ensure_snapshot(default_kernel, guest_image, tmp_path / "first")
                          .snapshot_key)
    with open(saved.state, "r+b") as state:
        state.truncate(saved.state.stat().st_size // 2)
    messages: list[str] = []
    guest = _start(default_kernel, guest_image, tmp_path / "second", messages)
    try:
        assert not guest.restored
        assert any("does not match its checksum" in m and "booting cold" in m for m in messages), \
            messages
        guest.target.run(["true"], check=True)
    finally:
        guest.stop()
    rebuilt = snapshot.matching(guest.snapshot_key)
    assert rebuilt is not None and snapshot.check(rebuilt, guest.snapshot_key) is None
    again = _start(default_kernel, guest_image, tmp_path / "third", [])
    try:
        assert again.restored
    finally:
        again.stop()


def test_stale_snapshot_is_rebuilt_and_removed(default_kernel, guest_image, tmp_path):
    key = _ensure_snapshot(default_kernel, guest_image, tmp_path / "first").snapshot_key
    saved = snapshot.matching(key)
    # As if QEMU had been upgraded since the save: the stored key material no longer matches.
    meta = saved.meta
    meta["material"]["qemu"] = "QEMU emulator version 0.1"
    (saved.directory / snapshot.META).write_text(json.dumps(meta))
    # And a snapshot of an older key (another image, say), which nothing can match any more.
    old = snapshot.kernel_dir(key.kernel_id) / "0123456789abcdef"
    old.mkdir()
    (old / snapshot.META).write_text("{}")
    messages: list[str] = []
    guest = _start(default_kernel, guest_image, tmp_path / "second", messages)
    try:
        assert not guest.restored
        assert any("other key material" in m for m in messages), messages
    finally:
        guest.stop()
    assert snapshot.check(snapshot.matching(key), key) is None
    assert not old.exists()
