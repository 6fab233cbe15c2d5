"""Saved guests: a booted guest's RAM and device state plus its disk, restored instead of booted.

A cold boot under TCG takes 3-5 s to the ready line; restoring a guest saved just after its ready
line takes a fraction of that. The first cold boot of a kernel saves the guest: its device state
(QEMU migration to a file, through QMP, with ``x-ignore-shared`` so that RAM stays out of it), a
sparse copy of its RAM file (a booting guest's RAM is a shared file: lab/vm/guest.py) and a copy of
its root overlay. Later guests with the same key start QEMU with the saved RAM file mapped privately
(copy on write: nothing is loaded up front, and guests restored at once share the unchanged pages)
and ``-incoming`` from the device state, on a fresh overlay backed by the saved one, so the disk a
restored guest sees is exactly the disk it was saved with.

The key is everything that determines the saved state: the QEMU version, QEMU's command line with
the per-run parts (marker, port, console, overlay, QMP socket) replaced by placeholders, and the size
and modification time of every file QEMU reads (kernel, initramfs, root image, modules disk, extra
disks). A snapshot whose key no longer matches (QEMU upgraded, a kernel or the image rebuilt) is
never found, and is removed when its successor is saved; a snapshot whose stored key material or
checksum disagrees with what is on disk is removed and the guest boots cold, with a message.

Layout: ``<cache>/snapshots/<kernel id>/<key>/{state,memory,root.qcow2,meta.json}``, written in a
temporary directory and renamed into place (two guests saving the same key at once: the first
rename wins, the other copy is dropped).
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import logging
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from lab import LabError, wait
from lab.cache import cache_dir, digest_of

FORMAT = 1  # bump when the layout or the restore procedure changes: every older snapshot is stale
STATE, MEMORY, DISK, META = "state", "memory", "root.qcow2", "meta.json"
SAVE_SECONDS = 60  # a save of a ~100 MiB state takes well under a second here
DEBRIS_SECONDS = 3600  # a temporary save directory older than this was left by an interrupted run
QEMU_IMG = "qemu-img"


@dataclass(frozen=True)
class Key:
    kernel_id: str
    digest: str
    material: dict


@dataclass(frozen=True)
class Snapshot:
    directory: Path

    @property
    def state(self) -> Path:
        return self.directory / STATE

    @property
    def memory(self) -> Path:
        return self.directory / MEMORY

    @property
    def disk(self) -> Path:
        return self.directory / DISK

    @property
    def meta(self) -> dict:
        return json.loads((self.directory / META).read_text())


def key(kernel_id: str, qemu_version: str, argv: list[str], files: Iterable[Path]) -> Key:
    """The key of a guest: ``argv`` must already carry placeholders for its per-run parts."""
    material = {
        "format": FORMAT,
        "qemu": qemu_version,
        "argv": list(argv),
        "files": {str(path): _stamp(path) for path in files},
    }
    return Key(kernel_id, digest_of([material]), material)


def _stamp(path: Path) -> list[int]:
    stat = Path(path).stat()
    return [stat.st_size, stat.st_mtime_ns]


def kernel_dir(kernel_id: str) -> Path:
    return cache_dir("snapshots", re.sub(r"[^A-Za-z0-9._-]", "_", kernel_id))


def matching(k: Key) -> Snapshot | None:
    """The stored snapshot of this key, if one is complete (a half-written one is never renamed
    into place)."""
    directory = kernel_dir(k.kernel_id) / k.digest
    if not (directory / META).is_file():
        return None
    return Snapshot(directory)


def check(snapshot: Snapshot, k: Key) -> str | None:
    """Why ``snapshot`` must not be used for ``k`` (its files or stored key disagree), or None.
    Reads every file (about 100 MiB of RAM that is not holes: ~0.1 s with SHA extensions)."""
    try:
        meta = snapshot.meta
    except (OSError, ValueError) as exc:
        return f"its {META} is unreadable ({exc})"
    if meta.get("material") != k.material:
        return "it was saved under other key material (a digest collision or a hand-copied snapshot)"
    for name, field in ((STATE, "state_sha256"), (MEMORY, "memory_sha256"), (DISK, "disk_sha256")):
        path = snapshot.directory / name
        if not path.is_file():
            return f"its {name} is missing"
        if sparse_sha256(path) != meta.get(field):
            return f"its {name} does not match its checksum (truncated or corrupt)"
    return None


def sparse_sha256(path: Path, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file's data and where it lies, skipping its holes: the RAM file is 1 GiB of
    which about 100 MiB is data, and a restore checks it every time."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        fd = handle.fileno()
        end = os.fstat(fd).st_size
        offset = 0
        while offset < end:
            try:
                start = os.lseek(fd, offset, os.SEEK_DATA)
            except OSError:  # ENXIO: only a hole is left
                break
            stop = os.lseek(fd, start, os.SEEK_HOLE)
            digest.update(f"{start}:{stop};".encode())
            handle.seek(start)
            while start < stop:
                block = handle.read(min(chunk, stop - start))
                digest.update(block)
                start += len(block)
            offset = stop
        digest.update(f"size:{end}".encode())
    return digest.hexdigest()


def discard(snapshot: Snapshot) -> None:
    shutil.rmtree(snapshot.directory, ignore_errors=True)


def prune(k: Key) -> list[str]:
    """Remove this kernel's stale snapshots (saved by another QEMU, or from files that have changed
    or gone since: their key can never match again), unreadable ones, and debris of saves
    interrupted long ago (a recent one may be another guest's save in progress). Snapshots of the
    same files under another command line (another memory size, an extra disk) stay: guests of
    both kinds keep restoring. Returns the names removed."""
    removed = []
    for entry in kernel_dir(k.kernel_id).iterdir():
        if entry.name == k.digest:
            continue
        if entry.name.startswith("."):
            if time.time() - entry.stat().st_mtime < DEBRIS_SECONDS:
                continue
        elif not _stale(entry, k.material["qemu"]):
            continue
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry.name)
    return removed


def _stale(directory: Path, qemu_version: str) -> bool:
    try:
        material = json.loads((directory / META).read_text())["material"]
        if material["format"] != FORMAT or material["qemu"] != qemu_version:
            return True
        return any(not Path(path).exists() or _stamp(Path(path)) != stamp
                   for path, stamp in material["files"].items())
    except (OSError, ValueError, KeyError, TypeError):
        return True


def new_overlay(path: Path, backing: Path, backing_format: str) -> None:
    """A fresh qcow2 file at ``path`` whose unwritten blocks read from ``backing``."""
    path.unlink(missing_ok=True)
    try:
        subprocess.run([QEMU_IMG, "create", "-q", "-f", "qcow2", "-b", str(backing.resolve()),
                        "-F", backing_format, str(path)], check=True, capture_output=True, text=True)
    except FileNotFoundError as exc:
        raise LabError(f"{QEMU_IMG} is missing; install qemu-utils (scripts/install-deps)") from exc
    except subprocess.CalledProcessError as exc:
        raise LabError(f"{QEMU_IMG} could not create {path} on {backing}: {exc.stderr.strip()}") from exc


class Monitor:
    """QEMU's QMP socket (qemu.qmp's synchronous client), connected once QEMU has made it."""

    def __init__(self, path: Path, alive: Callable[[], bool], timeout: float = 10):
        from qemu.qmp import ConnectError
        from qemu.qmp.legacy import QEMUMonitorProtocol

        # QEMU ending (a failed load, a guest stopped) is reported by the caller, with QEMU's words.
        logging.getLogger("qemu.qmp").setLevel(logging.CRITICAL)

        failure: list[Exception] = []

        def connected() -> bool:
            # QEMU binds the socket (the path appears) a moment before it listens on it.
            if path.exists():
                self._qmp = QEMUMonitorProtocol(str(path))
                try:
                    self._qmp.connect()
                    return True
                except ConnectError as exc:
                    failure[:] = [exc]
            if not alive():
                raise not_answering()
            return False

        def not_answering() -> LabError:
            return LabError(f"QEMU's QMP socket {path} did not answer"
                            + (f" ({failure[0]})" if failure else " (never made)"))

        wait.until(connected, seconds=timeout, every=0.005, fail=not_answering)
        self._qmp.settimeout(timeout)

    def cmd(self, name: str, **args):
        return self._qmp.cmd(name, **args)

    def wait_status(self, leaving: str, deadline: float, poll: float = 0.005) -> str:
        """Poll query-status until the VM's status is no longer ``leaving``; returns the new one."""
        def left() -> str | None:
            status = self.cmd("query-status")["status"]
            return status if status != leaving else None

        return wait.until(left, deadline=deadline, every=poll,
                          fail=lambda: LabError(f"the guest stayed in QEMU status {leaving!r}"))

    def close(self) -> None:
        try:
            self._qmp.close()
        except Exception:  # a QEMU that has exited closes the socket first
            pass


# The guest's RAM is a shared file (lab/vm/guest.py): migration leaves it out and the file is copied.
IGNORE_SHARED = [{"capability": "x-ignore-shared", "state": True}]


def save(monitor: Monitor, k: Key, overlay: Path, ram: Path, extra_meta: dict) -> Snapshot:
    """Save the running guest behind ``monitor`` under ``k``: its device state (QEMU migration),
    its RAM file and its root overlay. Leaves the guest paused; the caller continues it (``cont``)
    whatever happens. LabError if QEMU reports a failed migration."""
    home = kernel_dir(k.kernel_id)
    tmp = Path(tempfile.mkdtemp(dir=home, prefix=f".{k.digest}."))
    try:
        monitor.cmd("stop")
        monitor.cmd("migrate-set-capabilities", capabilities=IGNORE_SHARED)
        monitor.cmd("migrate", uri=f"exec:cat > {shlex.quote(str(tmp / STATE))}")
        _wait_migrated(monitor, time.monotonic() + SAVE_SECONDS)
        # Migration flushed and released the overlay, and the guest is stopped: copy both files.
        # --sparse=always: of a 1 GiB RAM file about 100 MiB is not zeros.
        subprocess.run(["cp", "--sparse=always", str(ram), str(tmp / MEMORY)], check=True,
                       capture_output=True)
        shutil.copyfile(overlay, tmp / DISK)
        meta = {"material": k.material, "saved": time.time(),
                **{f"{name}_sha256": sparse_sha256(tmp / file) for name, file in
                   (("state", STATE), ("memory", MEMORY), ("disk", DISK))},
                "memory_bytes_used": (tmp / MEMORY).stat().st_blocks * 512, **extra_meta}
        (tmp / META).write_text(json.dumps(meta, indent=1))
        final = home / k.digest
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / META).is_file():  # not another guest's save of the same key
                raise
        prune(k)
        return Snapshot(final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load(monitor: Monitor, snapshot: Snapshot) -> None:
    """Start loading ``snapshot`` into a QEMU started with ``-incoming defer`` and the snapshot's
    RAM file mapped privately (QEMU 7.2 has no ``file:`` URI, hence ``exec:cat``)."""
    monitor.cmd("migrate-set-capabilities", capabilities=IGNORE_SHARED)
    monitor.cmd("migrate-incoming", uri=f"exec:cat {shlex.quote(str(snapshot.state))}")


def _wait_migrated(monitor: Monitor, deadline: float) -> None:
    while True:
        info = monitor.cmd("query-migrate")
        status = info.get("status")
        if status == "completed":
            return
        if status in ("failed", "cancelled"):
            raise LabError(f"QEMU could not save the guest: {info.get('error-desc', status)}")
        if time.monotonic() > deadline:
            monitor.cmd("migrate_cancel")
            raise LabError(f"saving the guest took more than {SAVE_SECONDS}s")
        time.sleep(0.01)


def verify_in_background(snapshot: Snapshot, k: Key) -> Callable[[], str | None]:
    """Start check() in a thread (hashing overlaps QEMU's load); returns a function that waits
    for it and gives its verdict."""
    pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="snapshot-check")
    verdict = pool.submit(check, snapshot, k)
    pool.shutdown(wait=False)  # the thread ends with the check
    return verdict.result


def fresh_entropy(nbytes: int = 64) -> str:
    return os.urandom(nbytes).hex()
