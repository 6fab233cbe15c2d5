"""No QEMU outlives the session that started it.

Three layers, because each covers a way the others can fail:
1. Every QEMU is started with ``PR_SET_PDEATHSIG(SIGKILL)``: if our process dies, even by SIGKILL,
   the kernel kills QEMU. (The signal follows the *thread* that forked QEMU: start guests from a
   thread that lives as long as they do, normally the main thread.)
2. Each QEMU gets a pid file under a runtime directory, naming its PID, a marker string that is on
   its command line, and the PID and start time of the session that owns it. On start-up, a session
   kills the QEMUs of sessions that are gone (leftovers of an interrupted run); it never touches a
   process whose command line lacks the marker, nor the guests of a session that is still running.
3. On ``atexit``, SIGTERM and SIGINT, a session kills every QEMU it registered.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import contextlib
import ctypes
import functools
import json
import os
import signal
import subprocess
import threading
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from lab import wait

MARKER_PREFIX = "sockredir-lab-guest-"
PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)  # loaded before any fork: preexec_fn must stay small


def runtime_dir() -> Path:
    explicit = os.environ.get("SOCKREDIR_RUNTIME_DIR")
    if explicit:
        path = Path(explicit)
    elif os.environ.get("XDG_RUNTIME_DIR"):
        path = Path(os.environ["XDG_RUNTIME_DIR"]) / "sockredir-lab"
    else:
        path = Path(f"/tmp/sockredir-lab-{os.getuid()}")
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def new_marker() -> str:
    """A string unique to one process we start; it must appear on that process's command line."""
    return MARKER_PREFIX + uuid.uuid4().hex[:16]


# ---- facts about processes, from /proc ---------------------------------------------------------

def cmdline(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return raw.decode(errors="replace").split("\0")[:-1] if raw else []


def start_time(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot (field 22 of /proc/PID/stat): with the PID it
    identifies one process for the whole uptime, even if the PID is reused later."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def is_ours(pid: int, marker: str) -> bool:
    """True if ``pid`` is a live process carrying ``marker`` on its command line."""
    args = cmdline(pid)
    if not args or not marker.startswith(MARKER_PREFIX):
        return False
    return any(marker in arg for arg in args) and not _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def gone(pid: int) -> bool:
    """The process has exited. A zombie counts as gone; it is left for its parent to reap, so a
    Popen of ours still learns the real exit status."""
    return cmdline(pid) is None or _is_zombie(pid)


# ---- the registry ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Record:
    pid: int
    marker: str
    owner_pid: int
    owner_start: int | None


class Reaper:
    def __init__(self, directory: Path | None = None):
        self.directory = directory or runtime_dir()
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._lock = threading.RLock()  # a signal handler may re-enter kill_all_mine

    def _file(self, marker: str) -> Path:
        return self.directory / f"{marker}.json"

    def register(self, pid: int, marker: str) -> Record:
        me = os.getpid()
        record = Record(pid, marker, me, start_time(me))
        path = self._file(marker)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(record)))
        tmp.replace(path)
        return record

    def forget(self, record: Record) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._file(record.marker).unlink()

    def records(self) -> list[Record]:
        found = []
        for path in sorted(self.directory.glob(f"{MARKER_PREFIX}*.json")):
            try:
                found.append(Record(**json.loads(path.read_text())))
            except (OSError, ValueError, TypeError):
                continue  # being written, or not ours to understand
        return found

    def kill(self, record: Record, grace: float = 2.0) -> bool:
        """SIGTERM, then SIGKILL after ``grace`` seconds; only if the process is still ours.
        Returns True if a process was signalled. The pid file is removed either way."""
        signalled = False
        try:
            if is_ours(record.pid, record.marker):
                signalled = True
                _signal(record.pid, signal.SIGTERM)
                wait.until(lambda: gone(record.pid), seconds=grace, every=0.02)
                if is_ours(record.pid, record.marker):
                    _signal(record.pid, signal.SIGKILL)
                    wait.until(lambda: gone(record.pid), seconds=5, every=0.02)
        finally:
            self.forget(record)
        return signalled

    def sweep_leftovers(self) -> list[int]:
        """Kill the registered processes of sessions that no longer exist; returns their PIDs."""
        killed = []
        for record in self.records():
            if _owner_alive(record):
                continue
            if self.kill(record, grace=0.5):
                killed.append(record.pid)
        return killed

    def kill_all_mine(self) -> list[int]:
        """Kill every process this session registered (atexit, SIGTERM, SIGINT)."""
        with self._lock:
            mine = [r for r in self.records() if r.owner_pid == os.getpid()]
            return [r.pid for r in mine if self.kill(r, grace=1.0)]


def _owner_alive(record: Record) -> bool:
    return record.owner_start is not None and start_time(record.owner_pid) == record.owner_start


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


# ---- starting processes ------------------------------------------------------------------------

def _die_with_parent(parent: int) -> None:
    """Runs in the child between fork and exec."""
    if _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        os._exit(127)
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(127)


def spawn(argv: list[str], marker: str, reaper: "Reaper | None" = None,
          **popen_kwargs) -> tuple[subprocess.Popen, Record]:
    """Start ``argv`` (which must carry ``marker``), dying with us, registered for reaping.

    It gets its own session, so a Ctrl-C at the terminal reaches us, not it: we decide when it ends.
    """
    if not any(marker in arg for arg in argv):
        raise ValueError(f"the command line must carry the marker {marker}")
    reaper = reaper or default_reaper()
    parent = os.getpid()
    proc = _forker().submit(subprocess.Popen, argv, preexec_fn=lambda: _die_with_parent(parent),
                            start_new_session=True, **popen_kwargs).result()
    return proc, reaper.register(proc.pid, marker)


@functools.cache
def _forker() -> concurrent.futures.ThreadPoolExecutor:
    """The one thread that starts our processes. PR_SET_PDEATHSIG fires when the *thread* that
    forked the child ends, not the process: a guest started from a short-lived thread (two guests
    started at once) would be killed as that thread returned. This thread lives as long as we do."""
    return concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="reaper-spawn")


def stop(proc: subprocess.Popen, record: Record, reaper: "Reaper | None" = None,
         grace: float = 2.0) -> None:
    """Terminate a process started by ``spawn`` and reap it (SIGTERM, SIGKILL after ``grace``)."""
    try:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
    finally:
        (reaper or default_reaper()).forget(record)


# ---- the session's reaper ----------------------------------------------------------------------

_default: Reaper | None = None
_default_lock = threading.Lock()


def default_reaper() -> Reaper:
    """The session's reaper: on first use it kills leftovers of dead sessions and installs the
    atexit and signal hooks."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Reaper()
            _default.sweep_leftovers()
            atexit.register(_default.kill_all_mine)
            _install_signal_handlers(_default)
        return _default


def _install_signal_handlers(reaper: Reaper) -> None:
    if threading.current_thread() is not threading.main_thread():
        return  # signal.signal only works there; pdeathsig and atexit still cover us

    def chain(sig: int, previous):
        def handler(signum, frame):
            reaper.kill_all_mine()
            if callable(previous):
                previous(signum, frame)
            elif previous != signal.SIG_IGN:
                signal.signal(signum, signal.SIG_DFL)
                os.kill(os.getpid(), signum)
        return handler

    for sig in (signal.SIGTERM, signal.SIGINT):
        previous = signal.getsignal(sig)
        if previous == signal.SIG_IGN:
            continue  # someone chose to ignore it (nohup, a shell's background job): respect that
        signal.signal(sig, chain(sig, previous))
