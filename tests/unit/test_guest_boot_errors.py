"""How a failed boot is told: panics, oopses (retried once) and initramfs failures, from the console."""

from pathlib import Path
from types import SimpleNamespace

import pytest

from lab.vm.accel import Accel
from lab.vm.guest import Guest

OOPS = """[    1.20] Oops: int3: 0000 [#1] PREEMPT SMP NOPTI
[    1.21] RIP: 0010:enqueue_task_fair+0x5/0x900
[    1.30] Kernel panic - not syncing: Attempted to kill the idle task!"""
NO_ROOT = "[    1.90] Kernel panic - not syncing: VFS: Unable to mount root fs on unknown-block(0,0)"
NO_DISK = "SOCKREDIR-INITRAMFS-FAILED: no disk labelled sockredir-root"


def _guest_with_console(tmp_path: Path, text: str) -> Guest:
    kernel = SimpleNamespace(id="7.2", release="7.2.13+deb14-cloud-amd64")
    guest = Guest(kernel, image=None, workdir=tmp_path, accel=Accel("tcg", "forced"))
    guest.console_log.write_text(text + "\n")
    return guest


@pytest.mark.parametrize("console,crashed,cause", [
    (OOPS, True, "The kernel panicked"),
    (NO_ROOT, False, "The kernel panicked"),
    (NO_DISK, False, "The initramfs could not reach the root filesystem"),
])
def test_boot_error_names_kernel_cause_and_console(tmp_path, console, crashed, cause):
    error = _guest_with_console(tmp_path, console)._boot_error("QEMU exited")
    assert error.crashed is crashed  # only an oops is worth a second boot
    message = str(error)
    assert message.startswith("guest for kernel 7.2 (7.2.13+deb14-cloud-amd64, tcg) did not boot")
    assert cause in message
    assert console.splitlines()[-1] in message
