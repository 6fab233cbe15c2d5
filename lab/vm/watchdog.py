"""Noticing a guest that stopped while the lab waits on it, and saying why.

A guest can stop without QEMU exiting: paused (a QMP ``stop``, a guest panic with a pause action),
or running a kernel that no longer answers (seen: QEMU spinning at 90% CPU, no SSH answer). Every
command sent to it then waits out its own timeout (minutes), and each of the kernel's remaining
tests after it. A daemon thread per guest checks, every CHECK_SECONDS:

- QMP ``query-status``: anything but "running", or no answer at all (QEMU itself stopped), means the
  guest cannot answer;
- when a command has waited more than PROBE_AFTER seconds: does the guest run ``true`` within
  PROBE_SECONDS on a session of its own?

When either says no, it captures what QEMU can still tell (the VM status and every vCPU's registers
through QMP, the console's last lines) and, when the VM still runs, what the kernel says when asked
for a task dump on its keyboard (sysrq: every CPU's backtrace, every task's state and stack) into
``lost-guest.txt`` beside the console log, and gives the guest up (``Guest.abandon``): QEMU ends, so every command waiting on it fails at once with
TargetLost, and the guest's death names the capture.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Callable

CHECK_SECONDS = 5
PROBE_AFTER = 20      # a command older than this makes the watchdog ask the guest itself
PROBE_SECONDS = 8
DUMP_SECONDS = 12     # a TCG guest prints its task dump to the console in a few seconds
CAPTURE_NAME = "lost-guest.txt"


class Watchdog:
    def __init__(self, alive: Callable[[], bool], status: Callable[[], str], registers: Callable[[], str],
                 oldest_command: Callable[[], float | None], answers: Callable[[float], bool],
                 console_tail: Callable[[], str], task_dump: Callable[[], str], capture_dir: Path,
                 give_up: Callable[[str], None]):
        self._alive = alive            # False once QEMU has ended or been given up: nothing to watch
        self._status = status
        self._registers = registers
        self._oldest_command = oldest_command
        self._answers = answers
        self._console_tail = console_tail
        self._task_dump = task_dump
        self.capture = Path(capture_dir) / CAPTURE_NAME
        self._give_up = give_up
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="guest-watchdog", daemon=True)

    def start(self) -> "Watchdog":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopped.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(PROBE_SECONDS + CHECK_SECONDS)

    def _watch(self) -> None:
        while not self._stopped.wait(CHECK_SECONDS):
            if not self._alive():
                return
            why = self.check()
            if why and not self._stopped.is_set():
                self._give_up(why)  # the guest names the capture in its death
                return

    def check(self) -> str | None:
        """Why the guest cannot answer (after capturing its state), or None while it can."""
        try:
            status = within(self._status, PROBE_SECONDS)
        except Exception as exc:
            if self._stopped.is_set() or not self._alive():  # QEMU ended: its own exit says why
                return None
            return self.record(f"its QMP monitor did not answer ({exc})")
        if status != "running":
            return self.record(f"QEMU reports the VM {status!r}, not running")
        waited = self._oldest_command()
        if waited is not None and waited > PROBE_AFTER and not self._answers(PROBE_SECONDS):
            return self.record(f"a command has waited {waited:.0f} s and the guest did not run `true` "
                               f"within {PROBE_SECONDS} s")
        return None

    def record(self, why: str) -> str:
        """Capture the guest's state now, with ``why`` (also for a loss the lab noticed itself: a
        broken connection, a timed-out command); returns ``why``."""
        parts = [f"why: {why}", f"at: {time.strftime('%Y-%m-%d %H:%M:%S')}"]
        status = self._part(parts, "QEMU status", self._status, PROBE_SECONDS)
        self._part(parts, "registers (info registers -a)", self._registers, PROBE_SECONDS)
        self._part(parts, "console tail", self._console_tail, PROBE_SECONDS)
        dump = "the kernel's task dump (sysrq 9, l, t)"
        if status == "running":
            self._part(parts, dump, self._task_dump, DUMP_SECONDS)
        else:  # a paused VM would take the keys only when it runs again; a silent QEMU not at all
            parts.append(f"--- {dump} ---\n(not asked: the VM is not running)")
        self.capture.parent.mkdir(parents=True, exist_ok=True)
        self.capture.write_text("\n".join(parts) + "\n")
        return why

    @staticmethod
    def _part(parts: list[str], title: str, read: Callable[[], object], seconds: float) -> object:
        """One part of the capture, or why it could not be read; returns what was read (or None)."""
        try:
            value = within(read, seconds)
        except Exception as exc:
            parts.append(f"--- {title} ---\n(could not be read: {type(exc).__name__}: {exc})")
            return None
        parts.append(f"--- {title} ---\n{value}")
        return value


def within(read: Callable[[], object], seconds: float) -> object:
    """``read()``, or TimeoutError after ``seconds``: a QEMU stopped as a whole (SIGSTOP) accepts a
    QMP connection and never greets, and nothing here may wait on it for ever. The reading thread
    is left behind; it ends when that QEMU does."""
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            outcome["value"] = read()
        except BaseException as exc:
            outcome["error"] = exc
    reader = threading.Thread(target=run, name="guest-watchdog-read", daemon=True)
    reader.start()
    reader.join(seconds)
    if reader.is_alive():
        raise TimeoutError(f"no answer within {seconds:.0f} s")
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome["value"]
