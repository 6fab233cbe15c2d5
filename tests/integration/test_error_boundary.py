"""One error boundary: a guest that dies in the middle of a run reaches the user as a clear message,
never a Python traceback, and the run goes on.

Real guests, real kills: a pytest run (in a subprocess, as a user's project would run it) whose first
test kills its guest's QEMU, and the ``sockredir-lab shell`` command whose guest powers off under it.
"""

import os
import subprocess
import sys

import pytest

from inner_run import share_lab_cache

from lab.kernel.catalog import test_id_of as kernel_test_id  # not collected as a test

GUEST_KERNEL = "6.1"
KILLED_MID_RUN = """
import os
import signal


def test_1_kill_the_guest(guest, target):
    target.run(["true"], check=True)
    os.kill(guest.pid, signal.SIGKILL)
    guest._proc.wait(timeout=10)


def test_2_after(target):
    target.run(["true"], check=True)


def test_3_after(target):
    target.run(["true"], check=True)
"""


FROZEN_MID_RUN = """
import os
import signal


def test_1_freeze_the_guest(guest, target):
    target.run(["true"], check=True)  # a kept shell: the frozen command times out, not its start
    os.kill(guest.pid, signal.SIGSTOP)  # QEMU runs on as a process, but its guest answers nothing
    target.run(["true"], timeout=2)


def test_2_after(target):
    target.run(["true"], check=True)
"""


@pytest.fixture
def needs_root():
    if os.geteuid() != 0:
        pytest.skip("the host column of the inner run needs root")


def inner_run(pytester, monkeypatch, source: str, *args: str):
    """A pytest run of ``source`` as test_inner.py against the 6.1 guest: (result, its output)."""
    share_lab_cache(monkeypatch)
    monkeypatch.setenv("COLUMNS", "400")  # whole first lines of the reasons in the summary
    pytester.makepyfile(test_inner=source)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--kernel", GUEST_KERNEL,
                                           *args, "-rA", timeout=600)
    output = result.stdout.str() + result.stderr.str()
    print(output[-6000:])
    return result, output


def test_guest_killed_mid_run_fails_its_kernel_and_the_run_goes_on(pytester, needs_root, monkeypatch):
    result, output = inner_run(pytester, monkeypatch, KILLED_MID_RUN, "--kernel", "host")
    kernel_id = kernel_test_id(GUEST_KERNEL)
    # The test that killed the guest fails at teardown (the guest died during it); the guest's
    # later tests fail at once with the reason and the console; the host's tests run and pass.
    result.assert_outcomes(passed=3, errors=3)
    assert f"ERROR test_inner.py::test_1_kill_the_guest[{kernel_id}] - Failed: the guest of kernel " \
           f"{GUEST_KERNEL} died during this test" in output
    for name in ("test_2_after", "test_3_after"):
        assert f"ERROR test_inner.py::{name}[{kernel_id}] - Failed: the guest of kernel " \
               f"{GUEST_KERNEL} died earlier in this run" in output
        assert f"PASSED test_inner.py::{name}[kernel_host]" in output
    assert "QEMU exit status -9" in output and "console tail" in output
    assert "Traceback" not in output


def test_guest_that_stops_answering_is_given_up_at_once(pytester, needs_root, monkeypatch):
    # A guest that hangs (here: QEMU frozen by SIGSTOP) makes a command time out; the lab finds
    # that the guest no longer runs `true`, stops its QEMU (no process left behind) and fails the
    # kernel's later tests at once instead of letting each wait out its own timeout.
    result, output = inner_run(pytester, monkeypatch, FROZEN_MID_RUN, "--no-host")
    kernel_id = kernel_test_id(GUEST_KERNEL)
    result.assert_outcomes(failed=1, errors=2)
    assert f"FAILED test_inner.py::test_1_freeze_the_guest[{kernel_id}] - CommandTimeout: command " \
           "timed out after 2s" in output
    assert f"ERROR test_inner.py::test_2_after[{kernel_id}] - Failed: the guest of kernel " \
           f"{GUEST_KERNEL} died earlier in this run (it stopped answering over SSH while QEMU " \
           "still ran" in output
    assert "the lab stopped QEMU (pid" in output
    assert "Traceback" not in output


def test_cli_reports_a_guest_that_dies_under_a_command(tmp_path):
    # sysrq 'o' powers the guest off while the command runs: the SSH session breaks.
    command = [sys.executable, "-m", "lab.cli", "shell", "--kernel", GUEST_KERNEL, "--",
               "sh", "-c", "echo o > /proc/sysrq-trigger; sleep 30"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    print(done.stderr[-3000:])
    assert done.returncode == 2
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("sockredir-lab: error: the SSH connection to guest-6.1 broke")
    assert "Traceback" not in done.stderr
