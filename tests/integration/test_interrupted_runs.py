"""No QEMU outlives the process that started it, also when that process is interrupted mid-boot
(Ctrl-C) or killed outright (SIGKILL): the real command, a real guest, real signals."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lab.vm import reaper


def _wait_for_guest_record(runtime: Path, proc: subprocess.Popen, seconds: float = 60) -> dict:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and proc.poll() is None:
        records = list(runtime.glob(f"{reaper.MARKER_PREFIX}*.json"))
        if records:
            return json.loads(records[0].read_text())
        time.sleep(0.05)
    raise AssertionError(f"no guest was started (exit {proc.poll()})")


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _alive_and_ours(record: dict) -> bool:
    return not reaper.gone(record["pid"]) and reaper.is_ours(record["pid"], record["marker"])


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["ctrl_c", "sigkill"])
def test_no_qemu_left_after_interrupting_a_boot(tmp_path, sig):
    runtime = tmp_path / "runtime"
    env = dict(os.environ, SOCKREDIR_RUNTIME_DIR=str(runtime))
    command = [sys.executable, "-m", "lab.cli", "shell", "--kernel", "6.1", "--", "sleep", "300"]
    # Ctrl-C reaches a command started from a terminal with SIGINT's default action; a pytest run
    # started in the background of a shell (nohup, `&`, some CI runners) ignores SIGINT, and its
    # children would inherit that: give the command what a terminal gives it.
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            preexec_fn=_default_sigint)
    try:
        record = _wait_for_guest_record(runtime, proc)
        time.sleep(0.5)  # mid-boot: QEMU is running, the guest is not ready yet
        assert _alive_and_ours(record), "QEMU should be running while the guest boots"
        proc.send_signal(sig)
        proc.wait(timeout=30)
        deadline = time.monotonic() + 10
        while _alive_and_ours(record) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive_and_ours(record), f"QEMU (pid {record['pid']}) outlived its parent after {sig!r}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
