"""The kernel matrix on one machine: one pytest run per kernel, N at once, live progress, then the
merged report (``lab.matrix.report``).

Each kernel's run is ``pytest --kernel ID -k kernel_ID`` in the working directory (the kernel's
tests only; tests that take no kernel are not the matrix's), with its own JUnit XML, artifact tree
and output log under ``OUT/ID/``. Its progress arrives as typed events on a pipe
(``--progress-fd``, ``lab.matrix.events``); its output is only kept, never parsed. A run is a separate process with its own guest, reaper and
tracing instances, so runs never share a guest. Interrupted, the matrix ends the runs it started
(by PID); each run's reaper then ends its QEMU.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from lab import HOST
from lab.kernel.catalog import test_id_of
from lab.matrix import events
PROGRESS_EVERY = 20.0  # seconds between progress lines while nothing else is said


@dataclass
class PytestRun:
    kernel: str
    out: Path
    argv: list[str]
    counts: Counter = field(default_factory=Counter)
    selected: int | None = None
    proc: subprocess.Popen | None = None
    started: float = 0.0
    seconds: float = 0.0
    returncode: int | None = None
    failures: list[str] = field(default_factory=list)

    @property
    def log(self) -> Path:
        return self.out / "pytest.log"

    @property
    def junit(self) -> Path:
        return self.out / "junit.xml"

    @property
    def done(self) -> int:
        return sum(self.counts.values())

    def state(self) -> str:
        if self.proc is None:
            return "waiting"
        counts = ", ".join(f"{n} {s}" for s, n in sorted(self.counts.items()))
        total = f"/{self.selected}" if self.selected is not None else ""
        when = self.seconds if self.returncode is not None else time.monotonic() - self.started
        verdict = "" if self.returncode is None else f" exit {self.returncode},"
        return f"{self.done}{total} done,{verdict} {counts or 'nothing yet'} ({when:.0f}s)"


def keyword(kernel: str, pytest_args: list[str]) -> tuple[str, list[str]]:
    """The -k expression selecting this kernel's tests, and with the user's own -k folded in."""
    mine = test_id_of(kernel)
    rest, user = [], None
    args = iter(pytest_args)
    for arg in args:
        if arg == "-k":
            user = next(args, "")
        elif arg.startswith("-k") and len(arg) > 2:
            user = arg[2:]
        else:
            rest.append(arg)
    return (f"{mine} and ({user})" if user else mine), rest


def plan(kernels: list[str], out: Path, pytest_args: list[str], guest_cpus: int) -> list[PytestRun]:
    """One pytest run per kernel; each guest gets ``guest_cpus`` vCPUs (a --guest-cpus among
    ``pytest_args`` wins: it comes later)."""
    runs = []
    for kernel in kernels:
        directory = out / kernel
        expression, rest = keyword(kernel, pytest_args)
        argv = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-v", "--no-header",
                "-o", "console_output_style=classic", "--kernel", kernel, "-k", expression,
                f"--junitxml={directory / 'junit.xml'}", f"--artifacts={directory / 'artifacts'}",
                f"--guest-cpus={guest_cpus}", *rest]
        runs.append(PytestRun(kernel, directory, argv))
    return runs


def _next_startable(waiting: list[PytestRun], running: list[PytestRun], jobs: int) -> PytestRun | None:
    guests = sum(1 for run in running if run.kernel != HOST)
    for run in waiting:
        if run.kernel == HOST or guests < jobs:
            return run
    return None


def _keep_output(run: PytestRun) -> None:
    assert run.proc is not None and run.proc.stdout is not None
    with open(run.log, "w") as log:
        for line in run.proc.stdout:
            log.write(line)
            log.flush()


def _follow_events(run: PytestRun, stream, on_event: Callable[[PytestRun, events.Event], None]) -> None:
    with stream:
        for line in stream:
            event = events.parse(line)
            if event is not None:
                on_event(run, event)


def _start(run: PytestRun, on_event) -> list[threading.Thread]:
    """The run's pytest, its output kept in its log, its events followed; the threads that do it."""
    read_end, write_end = os.pipe()
    try:
        run.proc = subprocess.Popen([*run.argv, f"--progress-fd={write_end}"], stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
                                    bufsize=1, pass_fds=(write_end,))
    except BaseException:
        os.close(read_end)
        raise
    finally:
        os.close(write_end)  # pytest holds it now: the stream ends when pytest does
    threads = [threading.Thread(target=_keep_output, args=(run,), daemon=True),
               threading.Thread(target=_follow_events, args=(run, os.fdopen(read_end), on_event), daemon=True)]
    for thread in threads:
        thread.start()
    return threads


def run_matrix(runs: list[PytestRun], jobs: int, say: Callable[[str], None]) -> list[PytestRun]:
    """Run up to ``jobs`` guests at once, and the host's run beside them from the start (it boots
    no guest, and left to the end it would run alone); say what happens (starts, failures, ends,
    progress)."""
    lock = threading.Lock()

    def on_event(run: PytestRun, event: events.Event) -> None:
        with lock:
            if isinstance(event, events.Selected):
                run.selected = event.count
                return
            run.counts[event.status] += 1
            if event.status in ("fail", "error"):
                run.failures.append(event.nodeid)
                say(f"{run.kernel}: {event.status.upper()} {event.nodeid}")
            elif event.status == "xpass":  # a strict one is pytest's failure, above
                say(f"{run.kernel}: XPASS {event.nodeid} (a listed intermittent kernel defect did not show)")

    waiting, running, finished = list(runs), [], []
    readers: dict[str, list[threading.Thread]] = {}
    last_progress = time.monotonic()
    try:
        while waiting or running:
            while (run := _next_startable(waiting, running, jobs)) is not None:
                waiting.remove(run)
                run.out.mkdir(parents=True, exist_ok=True)
                run.started = time.monotonic()
                readers[run.kernel] = _start(run, on_event)
                running.append(run)
                say(f"{run.kernel}: started (pid {run.proc.pid}; log {run.log})")
            time.sleep(0.5)
            for run in [r for r in running if r.proc.poll() is not None]:
                for reader in readers[run.kernel]:
                    reader.join()
                run.returncode, run.seconds = run.proc.returncode, time.monotonic() - run.started
                running.remove(run)
                finished.append(run)
                say(f"{run.kernel}: finished: {run.state()}")
            if running and time.monotonic() - last_progress >= PROGRESS_EVERY:
                last_progress = time.monotonic()
                with lock:
                    say("progress: " + " | ".join(f"{r.kernel} {r.state()}" for r in running + waiting))
    finally:
        for run in running:  # interrupted: end what we started, by PID; their reapers end QEMU
            run.proc.terminate()
        for run in running:
            try:
                run.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                run.proc.kill()
    return finished
