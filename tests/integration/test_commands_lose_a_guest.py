"""Every command that works kernel by kernel goes through one loop (lab/per_kernel.py), so a guest
that stops answering in the middle of one fails that kernel's row the same way in each: within 30 s,
naming what QEMU could still tell (lost-guest.txt, kept in the command's artifacts), never as an
internal error, and the next kernel (the host here) still runs and keeps its results.

Real commands, real freezes: each command runs as a user runs it (``python -m lab.cli``) on the 6.1
guest and the host; as soon as the guest says it is ready, the test stops its vCPUs through QMP
(``stop``: QEMU answers, the guest does not), or, for two of them, kills the guest's sshd through
an SSH session of its own (the guest runs on, unreachable).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from qemu.qmp.legacy import QEMUMonitorProtocol

from inner_run import share_lab_cache

from lab import BPF_DIR, api
from lab.vm.target import SSHTarget

GUEST = "6.1"
WITHIN = 30
READY = f"kernel {GUEST} ("  # the loop's "kernel 6.1 (release, accel): ready" on the progress stream

COMMANDS = {
    "suite": ["suite", "--scenario", "bulk"],
    "mutants": ["mutants", "--mutant", "ipv4_only", "--json", "out.json"],
    "conformance": ["conformance", "--behaviour", "fionread", "--json", "out.json"],
    "bench": ["bench", "redirect", "--sizes", "64", "--modes", "rr", "--pinning", "same-cpu",
              "--repeats", "1", "--peers", "none", "--json", "out.json"],
    "verify": ["verify", str(BPF_DIR / "cases" / "ctx_write_readonly.bpf.c"), "--json"],
}


@pytest.fixture
def needs_root():
    if os.geteuid() != 0:
        pytest.skip("the host row of each command needs root")


def qemu_children(pid: int) -> list[int]:
    """QEMU processes started by ``pid`` (the guest is the command's direct child)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        if parent == pid and argv and b"qemu-system" in argv[0]:
            found.append(int(entry.name))
    return found


def qemu_argv(command_pid: int) -> list[str]:
    qemu, = qemu_children(command_pid)
    return Path(f"/proc/{qemu}/cmdline").read_bytes().decode().split("\0")


def freeze(command_pid: int) -> None:
    argv = qemu_argv(command_pid)
    monitor = QEMUMonitorProtocol(argv[argv.index("-qmp") + 1].removeprefix("unix:").split(",")[0])
    monitor.connect()
    try:
        monitor.cmd("stop")
    finally:
        monitor.close()  # the guest's watchdog asks QMP too, one client at a time


def kill_sshd(command_pid: int) -> None:
    """From a session of the test's own (the image's key, the port QEMU forwards)."""
    netdev = next(arg for arg in qemu_argv(command_pid) if "hostfwd=tcp:127.0.0.1:" in arg)
    port = int(netdev.split("hostfwd=tcp:127.0.0.1:")[1].split("-")[0])
    image = api.guest_image()
    session = SSHTarget("127.0.0.1", port, image.client_key, image.host_key_line, name="the test's session")
    session.run("setsid sh -c 'pkill -KILL sshd' >/dev/null 2>&1 &", timeout=30)


WAYS = {"qmp-stop": (freeze, "stopped answering"), "sshd-killed": (kill_sshd, "broke")}
# verify's work ends within a second of the guest being ready: too soon to lose it under
CASES = [(name, "qmp-stop") for name in COMMANDS] + [("suite", "sshd-killed"), ("conformance", "sshd-killed")]


@pytest.mark.parametrize("name,way", CASES, ids=[f"{name}-{way}" for name, way in CASES])
def test_a_lost_guest_fails_its_row_and_the_next_kernel_runs(name, way, tmp_path, needs_root, monkeypatch):
    share_lab_cache(monkeypatch)
    lose, symptom = WAYS[way]
    argv = [sys.executable, "-m", "lab.cli", *COMMANDS[name], "--kernel", GUEST, "--kernel", "host"]
    if name != "verify":
        argv += ["--artifacts", str(tmp_path / "artifacts")]
    proc = subprocess.Popen(argv, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[tuple[float, str]] = []
    frozen_at: list[float] = []

    def read() -> None:
        for line in proc.stdout:
            lines.append((time.monotonic(), line))
            if not frozen_at and READY in line and "): ready" in line:
                lose(proc.pid)
                frozen_at.append(time.monotonic())

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        proc.wait(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    reader.join(timeout=10)
    output = "".join(line for _, line in lines)
    print(output[-6000:])
    assert frozen_at, f"the command never said its {GUEST} guest was ready"
    lost = [(at, line) for at, line in lines if f"kernel {GUEST}: " in line and symptom in line]
    assert lost, f"no line says the {GUEST} guest was lost"
    waited = lost[0][0] - frozen_at[0]
    assert waited < WITHIN, f"the frozen guest held its row for {waited:.0f} s"
    capture = lost[0][1].split("what QEMU could still tell is in ", 1)[1].split(";")[0].strip()
    assert Path(capture).is_file() and str(tmp_path) in capture, capture
    assert "RIP=" in Path(capture).read_text()  # the vCPUs' registers, whichever way it was lost
    assert "internal error" not in output and "Traceback" not in output
    assert proc.returncode in (1, 2), proc.returncode  # the row failed, the command did not crash
    host_row_intact(name, tmp_path, output)


def host_row_intact(name: str, tmp_path: Path, output: str) -> None:
    if name == "suite":
        reports = json.loads((tmp_path / "artifacts" / "suite.json").read_text())
        assert [(r["kernel"], bool(r["error"]), [v["status"] for v in r["verdicts"]]) for r in reports] == [
            (GUEST, True, []), ("host", False, ["pass"])]
    elif name == "verify":
        runs = json.loads(output[output.index("\n[") + 1:])
        assert [(r["kernel"], r["held"]) for r in runs] == [(GUEST, None), ("host", True)]
    else:
        doc = json.loads((tmp_path / "out.json").read_text())
        assert list(doc["errors"]) == [GUEST]
        rows = doc["results"]
        # The guest's rows are errors (a mutant run when the guest froze) or none; the host's are all there.
        assert all(row.get("status") == "error" for row in rows if row["kernel"] == GUEST), rows
        host = [row for row in rows if row["kernel"] == "host"]
        assert host and all(row.get("status") != "error" for row in host), rows
