"""A guest that stops answering is the lab's business to name and survive (lab/vm/watchdog.py):
frozen by QMP ``stop`` while a command waits on it, the command fails with TargetLost within 30 s,
its QEMU is ended, and lost-guest.txt beside its console holds QEMU's status, every vCPU's registers
and the console's tail; a guest whose sshd is killed fails its next command at once with
TargetLost, and its capture adds the kernel's task dump (sysrq on the guest's keyboard). Each on a guest of its own (restored from the snapshot in about a second), on the
default guest kernel only: the mechanism is the lab's, not the kernel's."""

from __future__ import annotations

import time

import pytest

from lab.vm import watchdog
from lab.vm.target import TargetLost

DEFAULT_GUEST = "6.1"
WITHIN = 30


def default_guest(kernel, request):
    """A guest of the test's own, on the default guest kernel (skipped before booting elsewhere)."""
    if kernel.id != DEFAULT_GUEST:
        pytest.skip(f"the lab's own mechanism, proven on the {DEFAULT_GUEST} guest")
    return request.getfixturevalue("own_guest")


@pytest.mark.fresh_guest
def test_a_frozen_guest_fails_the_waiting_command_within_30_s_with_its_state_captured(kernel, request):
    own_guest = default_guest(kernel, request)
    target = own_guest.target
    own_guest.qmp("stop")
    started = time.monotonic()
    with pytest.raises(TargetLost):
        target.run(["sleep", "600"], timeout=600)
    waited = time.monotonic() - started
    assert waited < WITHIN, f"the frozen guest held its command for {waited:.0f} s"
    assert not own_guest.alive
    capture = own_guest.console_log.parent / watchdog.CAPTURE_NAME
    assert str(capture) in own_guest.death()
    text = capture.read_text()
    assert "QEMU reports the VM 'paused'" in text and "RIP=" in text, text[:2000]


@pytest.mark.fresh_guest
def test_a_guest_whose_sshd_is_killed_fails_its_next_command_at_once(kernel, request):
    own_guest = default_guest(kernel, request)
    target = own_guest.target
    target.run("setsid sh -c 'sleep 1; pkill -KILL sshd' >/dev/null 2>&1 &", timeout=10)
    time.sleep(3)
    started = time.monotonic()
    with pytest.raises(TargetLost) as lost:
        target.run(["true"], timeout=60)
    assert time.monotonic() - started < WITHIN
    # Given up as the plugin and the commands do; the kernel still takes interrupts, so the capture
    # holds its own account of every task.
    assert own_guest.give_up_if_lost(lost.value) and not own_guest.alive
    text = (own_guest.console_log.parent / watchdog.CAPTURE_NAME).read_text()
    dump = text.partition("task dump (sysrq 9, l, t) ---\n")[2]
    assert "sysrq: Show State" in dump and "task:" in dump and "Call Trace:" in dump, text[-3000:]
