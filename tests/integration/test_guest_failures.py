"""A kernel that panics and a guest that never gets ready: each gives a clear error naming the kernel,
with the console tail, in bounded time, and leaves no QEMU behind. Run once per kernel."""

from pathlib import Path

import pytest

from lab import LabError
from lab.vm import reaper
from lab.vm.guest import Guest
from lab.pytest_plugin import HostKernel


@pytest.fixture
def guest_kernel(kernel):
    if isinstance(kernel, HostKernel):
        pytest.skip("boot failures are a guest matter")
    return kernel


def _processes_with(marker: str) -> list[int]:
    """PIDs whose command line carries the guest's marker (QEMU's -name): must be none after."""
    pids = [int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit()]
    return [pid for pid in pids if marker in " ".join(reaper.cmdline(pid) or [])]


def test_kernel_panic_is_reported(guest_kernel, guest_image, tmp_path):
    # No initramfs init and no root device: the kernel panics ("VFS: Unable to mount root fs" or
    # "No working init found"), and panic=-1 with -no-reboot ends QEMU at once.
    guest = Guest(guest_kernel, guest_image, tmp_path, boot_timeout=60, append="rdinit=/nonexistent")
    with pytest.raises(LabError) as failure:
        with guest:
            pass
    message = str(failure.value)
    print(message[-1500:])
    assert f"kernel {guest_kernel.id}" in message
    assert "The kernel panicked" in message and "Kernel panic" in message
    assert "console tail" in message
    assert _processes_with(guest._marker) == []


def test_guest_that_never_gets_ready_times_out(guest_kernel, guest_image, tmp_path):
    # The initramfs shell waits on the console forever: no ready line ever comes.
    guest = Guest(guest_kernel, guest_image, tmp_path, boot_timeout=2, append="rdinit=/bin/sh")
    with pytest.raises(LabError) as failure:
        with guest:
            pass
    message = str(failure.value)
    assert f"kernel {guest_kernel.id}" in message and "no ready line within 2s" in message
    assert _processes_with(guest._marker) == []
