"""A QEMU guest as a context manager: boot a kernel on the lab image, wait for the ready line, SSH.

    with Guest(kernel, ensure_image(), workdir) as guest:
        guest.target.run(["uname", "-r"])

The kernel boots directly (``-kernel``/``-initrd``) with the per-kernel initramfs; the root image is
never written: the guest writes to a qcow2 overlay in ``workdir`` backed by it (writes vanish with the
guest), and the modules disk is read-only. A booting guest's RAM is a shared file in a run directory
(on /dev/shm when it has room), so that it can be saved by copying it. With ``snapshot="auto"`` (the
default) the first cold boot of a kernel is saved after its ready line and later guests are restored
from it (lab.vm.snapshot): they map the saved RAM privately (pages are read as the guest touches them,
and shared between guests restored at once), and get the host's clock and fresh randomness before
anything else runs. The network is QEMU's
user mode with ``restrict=on``: the guest reaches nothing, the host reaches its sshd through one
forwarded loopback port. Readiness is the guest init's ready line on the serial console (a log file
in ``workdir``), never a sleep; an early exit, a panic or the timeout raise a LabError that names the
kernel and quotes the console. Every QEMU is started through ``lab.vm.reaper`` and cannot outlive us.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from lab import LabError, wait
from lab.kernel import config as kconfig
from lab.vm import accel as accel_mod
from lab.vm import capacity
from lab.vm import initramfs
from lab.vm import reaper
from lab.vm import snapshot as snapshots
from lab.vm import watchdog
from lab.vm.image import GUEST_INIT_PATH, GUEST_RESTORED_PATH, GuestImage
from lab.vm.target import CommandTimeout, SSHTarget, TargetLost

QEMU = accel_mod.QEMU
READY_RE = re.compile(r"SOCKREDIR-READY uptime=(?P<uptime>[\d.]+) release=(?P<release>\S+)")
INITRAMFS_FAILED = "SOCKREDIR-INITRAMFS-FAILED"
# A kernel crash on the console before the ready line: the boot has failed, no need to wait it out.
CRASH_RE = re.compile(r"Kernel panic|Oops: |BUG: ")
# A fault inside the kernel (not a panic for want of a root or an init, which would recur).
OOPS_RE = re.compile(r"Oops: |BUG: ")
BOOT_TRIES = 2  # a crash during boot is retried once (see Guest.start)
SNAPSHOT_MODES = ("auto", "off")
RESTORE_SECONDS = 30  # load + SSH of a restored guest; it takes about a second here under TCG


class BootFailed(LabError):
    def __init__(self, message: str, crashed: bool):
        super().__init__(message)
        self.crashed = crashed


@dataclass(frozen=True)
class RunParts:
    """The parts of QEMU's command line that differ between two runs of the same guest; a
    snapshot's key sees placeholders in their place."""
    marker: str
    port: int | str
    console: Path | str
    overlay: Path | str
    qmp: Path | str
    ram: Path | str       # the file that is the guest's RAM
    ram_shared: bool = True  # a booting guest writes its RAM file; a restored one maps it privately

    @classmethod
    def placeholders(cls) -> "RunParts":
        return cls("<marker>", "<port>", "<console>", "<overlay>", "<qmp>", "<ram>")


PORT_ATTEMPTS = 5
ANSWER_SECONDS = 15  # a live guest runs `true` in well under a second, even under TCG on a busy host
# The keys of a lost guest's task dump: console loglevel 9 (sysrq runs its handler at the quiet
# boot's loglevel, which would keep the dumps off the console), every CPU's backtrace, every task.
TASK_DUMP_KEYS = "9lt"
TASK_DUMP_QUIET = 1.5  # the dump is over when the console has been still this long
POLL_SECONDS = 0.02


class Guest:
    def __init__(self, kernel, image: GuestImage, workdir: Path, accel: accel_mod.Accel | None = None,
                 memory_mb: int = 1024, cpus: int = capacity.GUEST_CPUS, boot_timeout: float = 120,
                 machine: str = "q35", append: str = "", progress=lambda msg: None,
                 extra_disks: tuple[Path, ...] | list[Path] = (), snapshot: str = "auto"):
        if snapshot not in SNAPSHOT_MODES:
            raise LabError(f"snapshot={snapshot!r}: choose {' or '.join(SNAPSHOT_MODES)}")
        self.kernel = kernel
        self.image = image
        self.workdir = Path(workdir)
        self.accel = accel
        self.memory_mb = memory_mb
        self.cpus = cpus
        self.boot_timeout = boot_timeout
        self.machine = machine
        self.append = append
        self.progress = progress
        self.extra_disks = [Path(d) for d in extra_disks]  # read-only virtio-blk disks, mounted by the caller
        self.snapshot = snapshot
        self.restored = False                    # restored from a snapshot rather than booted
        self.snapshot_key: snapshots.Key | None = None  # what a snapshot of this guest is saved under
        self.console_log = self.workdir / "console.log"
        self.overlay = self.workdir / "root.qcow2"  # the guest's writes; the image is never written
        self.qemu_log = self.workdir / "qemu.log"
        self.port: int | None = None
        self.boot_seconds: float | None = None   # QEMU start -> ready line (restored: -> running)
        self.guest_uptime: float | None = None   # guest's own uptime at the ready line
        self.ssh_seconds: float | None = None    # ready line -> SSH session up (restored: and reseeded)
        self._started = 0.0                      # monotonic time of the last QEMU start
        self._target: SSHTarget | None = None
        self._proc: subprocess.Popen | None = None
        self._record: reaper.Record | None = None
        self._qemu_log_handle = None
        self._marker = reaper.new_marker()  # on QEMU's command line: how the reaper knows it
        self._run_dir: Path | None = None   # QMP socket (a short path, as sockets need) and RAM file
        self._abandoned: str | None = None  # why the lab gave up on a guest whose QEMU still ran
        self._watchdog: watchdog.Watchdog | None = None
        self._abandon_lock = threading.Lock()

    # ---- lifecycle -----------------------------------------------------------------------------

    def __enter__(self) -> "Guest":
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        _refuse_unbootable(self.kernel)
        boot = initramfs.ensure_boot_files(self.kernel, progress=self.progress)
        if self.accel is None:
            self.accel = accel_mod.detect(self.kernel, boot.initramfs)
        self._run_dir = _new_run_dir(self.memory_mb)
        key = self.snapshot_key = self._snapshot_key(boot) if self.snapshot == "auto" else None
        saved = snapshots.matching(key) if key is not None else None
        if saved is None or not self._restore(boot, key, saved):
            self._cold_boot(boot, key)
            connected = time.monotonic()
            self._target = self._connect(deadline=max(self._started + self.boot_timeout, connected + 30))
            self.ssh_seconds = time.monotonic() - connected
        self._watchdog = self._new_watchdog().start()

    def _cold_boot(self, boot: initramfs.BootFiles, key: "snapshots.Key | None") -> None:
        for boot_try in range(1, BOOT_TRIES + 1):
            try:
                self._boot(boot)
                break
            except BootFailed as failure:
                # Under TCG a kernel sometimes oopses while it patches its own code at boot (seen:
                # 7.2, "Oops: int3" in enqueue_task_fair, 2 boots of 15). Once more, loudly, with the
                # crashed console kept; a second oops is reported. Panics for want of a root or an
                # init would recur, so they are reported at once.
                if not failure.crashed or boot_try == BOOT_TRIES:
                    raise
                kept = self.console_log.with_name(f"console.crashed-{boot_try}.log")
                self._stop_qemu()
                self.console_log.replace(kept)
                self.progress(f"guest {self.kernel.id}: the kernel crashed during boot (console kept in "
                              f"{kept}); booting it once more")
        if key is not None:
            self._save(key)
        self._ram_file.unlink(missing_ok=True)  # QEMU keeps it open; its memory goes when QEMU ends

    def _boot(self, boot: initramfs.BootFiles) -> None:
        """Start QEMU and wait for the ready line, on another port if the forwarded one was taken."""
        for attempt in range(1, PORT_ATTEMPTS + 1):
            self.port = _free_port()
            self._started = time.monotonic()
            snapshots.new_overlay(self.overlay, self.image.rootfs, "raw")
            self._launch(self._argv(boot, self._run_parts()))
            if self._wait_ready(self._started, last_attempt=attempt == PORT_ATTEMPTS):
                return
            self._stop_qemu()  # the forwarded port was taken between our check and QEMU's bind

    # ---- snapshots -----------------------------------------------------------------------------

    def _snapshot_key(self, boot: initramfs.BootFiles) -> "snapshots.Key":
        files = [boot.kernel_image, boot.initramfs, boot.modules_disk, self.image.rootfs,
                 *self.extra_disks]
        return snapshots.key(self.kernel.id, accel_mod.qemu_version(),
                             self._argv(boot, RunParts.placeholders()), files)

    def _save(self, key: "snapshots.Key") -> None:
        """Save the guest just booted for the next ones; a failed save costs only a message."""
        started = time.monotonic()
        monitor = None
        try:
            monitor = self._monitor()
            saved = snapshots.save(monitor, key, self.overlay, self._ram_file, {
                "guest_uptime": self.guest_uptime, "boot_seconds": self.boot_seconds})
            self.progress(f"guest {self.kernel.id}: saved as snapshot {saved.directory} in "
                          f"{time.monotonic() - started:.2f}s; later guests restore from it")
        except Exception as exc:  # QMP, the disk, QEMU: each raises its own types
            self.progress(f"guest {self.kernel.id}: could not save a snapshot ({exc}); the next "
                          "guest boots cold again")
        finally:
            if monitor is not None:
                with contextlib.suppress(Exception):
                    monitor.cmd("cont")  # after a completed migration too: the source runs on
                monitor.close()

    def _restore(self, boot: initramfs.BootFiles, key: "snapshots.Key",
                 saved: "snapshots.Snapshot") -> bool:
        """Start from ``saved``. False (and the snapshot removed, with a message) when it cannot be
        used: the caller then boots cold, which saves a new one."""
        verdict = snapshots.verify_in_background(saved, key)
        why = None
        for attempt in range(1, PORT_ATTEMPTS + 1):
            why = self._try_restore(boot, saved, verdict)
            if why != "port":
                break
            self._stop_qemu()
        if why is None:
            return True
        self._stop_qemu()
        snapshots.discard(saved)
        self.progress(f"guest {self.kernel.id}: snapshot {saved.directory} could not be used "
                      f"({why}); removed it, booting cold")
        return False

    def _try_restore(self, boot, saved, verdict) -> str | None:
        """One restore attempt: None when the guest answers, "port" when the forwarded port was
        taken, else why the snapshot is unusable."""
        self.port = _free_port()
        self._started = time.monotonic()
        snapshots.new_overlay(self.overlay, saved.disk, "qcow2")
        self._launch(self._argv(boot, self._run_parts(ram=saved.memory)) + ["-incoming", "defer"])
        deadline = self._started + RESTORE_SECONDS
        why = self._load(deadline, saved, verdict)
        if why is not None:
            # A snapshot whose files fail their check explains a failed load best.
            return why if why == "port" else (verdict() or why)
        self.boot_seconds = time.monotonic() - self._started
        # SSH only once the guest runs: a connection made while QEMU loads can lose its first
        # packets to the guest and wait out TCP's retransmission (seen: 6-7 s).
        try:
            self._target = self._connect(deadline)
            self._reseed(self._target, deadline)
        except LabError as exc:
            if self._target is not None:
                self._target.close()
                self._target = None
            return f"the restored guest did not answer: {exc}"
        self.ssh_seconds = time.monotonic() - self._started - self.boot_seconds
        self.restored = True
        self.guest_uptime = saved.meta.get("guest_uptime")
        self.progress(f"guest {self.kernel.id}: restored in {self.boot_seconds:.2f}s, answering "
                      f"after {self.boot_seconds + self.ssh_seconds:.2f}s ({self.accel.name}, {self.cpus} vCPU(s), "
                      f"snapshot {saved.directory.name})")
        return None

    def _load(self, deadline: float, saved: "snapshots.Snapshot", verdict) -> str | None:
        """Wait for QEMU to load the snapshot (paused, as it was saved), check the snapshot's
        files, then let the guest run. None, "port", or why the snapshot is unusable."""
        try:
            monitor = self._monitor()
        except LabError as exc:
            return self._restore_failed("QEMU did not start", exc)
        try:
            snapshots.load(monitor, saved)
            status = monitor.wait_status("inmigrate", deadline)
            if status != "paused":
                return f"QEMU could not load it (status {status!r}): {self._qemu_output()}"
            bad = verdict()
            if bad:
                return bad
            monitor.cmd("cont")
        except Exception as exc:  # QMP errors, or QEMU gone while loading
            return self._restore_failed("QEMU could not load it", exc)
        finally:
            monitor.close()
        return None

    @staticmethod
    def _reseed(target: SSHTarget, deadline: float) -> None:
        """Give a restored guest the host's clock and fresh randomness (images/guest-restored.c)
        in a session of its own, while the first kept shell starts in another (each costs ~0.2 s
        just after a restore, under TCG); both are done before any caller's command runs."""
        seconds, nanoseconds = divmod(time.time_ns(), 10**9)
        with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="guest-reseed") as pool:
            reseeded = pool.submit(target.run, [GUEST_RESTORED_PATH, str(seconds), str(nanoseconds),
                                                snapshots.fresh_entropy()],
                                   timeout=deadline - time.monotonic(), check=True, input="")
            target.run(["true"], timeout=deadline - time.monotonic(), check=True)
            reseeded.result()  # its error, if any, as the reseed raised it

    def _restore_failed(self, what: str, exc: Exception) -> str:
        """"port" when QEMU ended because the forwarded port was taken (try another), else why."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._proc.wait(timeout=1)
        if self._proc.poll() is not None and _port_taken(self.qemu_log):
            return "port"
        return f"{what}: {self._qemu_output() or exc}"

    def stop(self) -> None:
        if self._watchdog is not None:
            self._watchdog.stop()
            self._watchdog = None
        if self._target is not None:
            self._request_poweroff()
            with contextlib.suppress(Exception):
                self._target.close()
            self._target = None
        self._stop_qemu()
        self.overlay.unlink(missing_ok=True)  # the guest's writes die with it (and stay out of artifacts)
        if self._run_dir is not None:
            shutil.rmtree(self._run_dir, ignore_errors=True)
            self._run_dir = None

    # ---- what callers use ----------------------------------------------------------------------

    @property
    def alive(self) -> bool:
        """QEMU is still running and the lab has not given up on it (a guest can die under a test:
        a panic, a kill, an OOM; or stop answering)."""
        return self._abandoned is None and self._proc is not None and self._proc.poll() is None

    def death(self) -> str:
        """Why the guest is gone, for error messages: QEMU's status and the console's last lines."""
        if self._abandoned is not None:
            status = self._abandoned
        else:
            status = "never started" if self._proc is None else f"QEMU exit status {self._proc.poll()}"
        return (f"{status}; console {self.console_log}\n--- console tail ---\n"
                f"{self.console_tail(30)}")

    def answers(self, timeout: float = ANSWER_SECONDS) -> bool:
        """Does the guest still run a command? (After a command timed out: it may have hung, or
        the whole guest may have.)"""
        try:
            self.target.run(["true"], timeout=timeout, check=True)
        except LabError:
            return False
        return True

    def abandon(self, why: str) -> None:
        """Give up on a guest that stopped answering while its QEMU runs on: stop that QEMU, so
        its later tests fail at once (each would wait out its own timeout) and it burns no CPU.
        Called by the lab after a lost connection or a timed-out command, and by the guest's
        watchdog (lab/vm/watchdog.py), whichever notices first."""
        with self._abandon_lock:
            if not self.alive:
                return
            if self._watchdog is not None:
                if not self._watchdog.capture.exists():  # the watchdog's own finding is captured already
                    self._watchdog.record(why)
                why = f"{why}; what QEMU could still tell is in {self._watchdog.capture}"
            cpu = _cpu_seconds(self._proc.pid)
            self._abandoned = (f"it stopped answering over SSH while QEMU still ran ({why.strip()[:400]}; "
                               f"QEMU had used {cpu} of CPU time); the lab stopped QEMU (pid "
                               f"{self._proc.pid})")
            self.progress(f"guest {self.kernel.id}: {self._abandoned}")
            self._stop_qemu()

    def give_up_if_lost(self, error: BaseException) -> bool:
        """After ``error`` ended some work on this guest: if the SSH connection broke, or a command
        timed out and the guest no longer runs `true`, give it up (``abandon``: captured, QEMU
        ended) so its later work fails at once instead of each waiting out its timeout."""
        lost = isinstance(error, TargetLost) or (isinstance(error, CommandTimeout) and not self.answers())
        if lost and self.alive:
            self.abandon(str(error))
        return lost

    def qmp(self, command: str, **args):
        """One QMP command to this guest's QEMU (tests freeze a guest with ``stop``)."""
        monitor = snapshots.Monitor(self._qmp_socket, lambda: self.alive, timeout=watchdog.PROBE_SECONDS)
        try:
            return monitor.cmd(command, **args)
        finally:
            monitor.close()

    def task_dump(self) -> str:
        """Where every CPU and task of the kernel is, when it still takes interrupts but no longer
        answers over SSH: sysrq 9, l, t pressed on the guest's PS/2 keyboard (QMP ``send-key``; the
        serial console is a log file, it takes no input), and the console lines they brought."""
        start = self.console_log.stat().st_size
        for key in TASK_DUMP_KEYS:
            self.qmp("send-key", keys=[{"type": "qcode", "data": code} for code in ("alt", "sysrq", key)])
        sizes = [start]

        def still() -> bool:  # grown since the keys, and no longer growing
            sizes.append(self.console_log.stat().st_size)
            return sizes[-1] == sizes[-2] > start
        wait.until(still, every=TASK_DUMP_QUIET, seconds=watchdog.DUMP_SECONDS - 2 * TASK_DUMP_QUIET)
        with open(self.console_log, "rb") as console:
            console.seek(start)
            text = console.read().decode(errors="replace")
        return text or "(nothing came: the kernel did not handle the keys)"

    def _new_watchdog(self) -> watchdog.Watchdog:
        return watchdog.Watchdog(
            lambda: self.alive, lambda: self.qmp("query-status")["status"],
            lambda: self.qmp("human-monitor-command", **{"command-line": "info registers -a"}),
            self.target.oldest_command, self.answers, lambda: self.console_tail(60), self.task_dump,
            self.console_log.parent, self.abandon)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def target(self) -> SSHTarget:
        if self._target is None:
            raise LabError(f"guest for kernel {self.kernel.id} is not running; use it inside `with`")
        return self._target

    def console_tail(self, lines: int = 40) -> str:
        try:
            text = self.console_log.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    @property
    def known_hosts_line(self) -> str:
        return f"[127.0.0.1]:{self.port} {self.image.host_key_line}"

    # ---- internals -----------------------------------------------------------------------------

    @property
    def _qmp_socket(self) -> Path:
        return self._run_dir / "qmp.sock"

    def _monitor(self) -> "snapshots.Monitor":
        """QMP of the QEMU just started (LabError if it ends before answering)."""
        return snapshots.Monitor(self._qmp_socket, lambda: self._proc.poll() is None)

    @property
    def _ram_file(self) -> Path:
        return self._run_dir / "ram"

    def _run_parts(self, ram: Path | None = None) -> RunParts:
        """This run's parts; ``ram``: a saved RAM file to map privately (a restore)."""
        return RunParts(self._marker, self.port, self.console_log, self.overlay, self._qmp_socket,
                        ram or self._ram_file, ram_shared=ram is None)

    def _argv(self, boot: initramfs.BootFiles, run: RunParts) -> list[str]:
        append = " ".join(filter(None, [
            # sysrq_always_enabled: Debian's kernel.sysrq mask (438) refuses the task dumps a lost
            # guest's capture asks for on the keyboard (task_dump).
            "console=ttyS0", "panic=-1", "quiet", "sysrq_always_enabled",
            f"lab.root=LABEL={self.image.label}", f"lab.modules=LABEL={boot.modules_label}",
            f"lab.init={GUEST_INIT_PATH}", self.append]))
        return [
            QEMU, "-name", run.marker, "-machine", f"{self.machine},memory-backend=ram",
            *self.accel.qemu_args(), "-m", f"{self.memory_mb}M", "-smp", str(self.cpus),
            "-object", f"memory-backend-file,id=ram,size={self.memory_mb}M,mem-path={run.ram},"
                       f"share={'on' if run.ram_shared else 'off'}",
            "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
            "-kernel", str(boot.kernel_image), "-initrd", str(boot.initramfs), "-append", append,
            "-serial", f"file:{run.console}",
            "-qmp", f"unix:{run.qmp},server=on,wait=off",
            "-drive", f"file={run.overlay},format=qcow2,if=none,id=root,cache=unsafe",
            "-device", "virtio-blk-pci,drive=root",
            "-drive", f"file={boot.modules_disk},format=raw,if=none,id=modules,readonly=on",
            "-device", "virtio-blk-pci,drive=modules",
            *[arg for index, disk in enumerate(self.extra_disks) for arg in (
                "-drive", f"file={disk},format=raw,if=none,id=extra{index},readonly=on",
                "-device", f"virtio-blk-pci,drive=extra{index}")],
            "-netdev", f"user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:{run.port}-:22",
            "-device", "virtio-net-pci,netdev=n0",
        ]

    def _launch(self, argv: list[str]) -> None:
        self.console_log.write_text("")
        (self.workdir / "qemu.cmdline").write_text(" ".join(argv) + "\n")
        self._qemu_log_handle = open(self.qemu_log, "w")
        self._proc, self._record = reaper.spawn(argv, self._marker, stdin=subprocess.DEVNULL,
                                                stdout=self._qemu_log_handle, stderr=subprocess.STDOUT)

    def _wait_ready(self, started: float, last_attempt: bool) -> bool:
        """Poll the console for the ready line. False: retry on another port. Raises otherwise."""
        seen = {"offset": 0, "pending": ""}

        def outcome(console) -> str | None:
            console.seek(seen["offset"])
            chunk = console.read()
            seen["offset"] += len(chunk)
            pending = seen["pending"] + chunk.decode(errors="replace")
            match = READY_RE.search(pending)
            if match:
                self.boot_seconds = time.monotonic() - started
                self.guest_uptime = float(match["uptime"])
                self.progress(f"guest {self.kernel.id}: ready in {self.boot_seconds:.2f}s "
                              f"(guest uptime {self.guest_uptime:.2f}s, {self.accel.name}, "
                              f"{self.cpus} vCPU(s))")
                return "ready"
            if CRASH_RE.search(pending):
                time.sleep(1)  # let the oops/panic text reach the console log
                raise self._boot_error("the kernel crashed before the guest was ready")
            seen["pending"] = pending[-4096:]
            if self._proc.poll() is not None:
                if _port_taken(self.qemu_log) and not last_attempt:
                    return "port taken"
                raise self._boot_error(f"QEMU exited (status {self._proc.returncode}) before "
                                       "the guest was ready")
            return None

        with open(self.console_log, "rb") as console:
            return wait.until(lambda: outcome(console), deadline=started + self.boot_timeout, every=POLL_SECONDS,
                              fail=lambda: self._boot_error(f"no ready line within {self.boot_timeout:.0f}s")) == "ready"

    def _qemu_output(self) -> str:
        return self.qemu_log.read_text(errors="replace").strip()[-1500:] if self.qemu_log.exists() else ""

    def _boot_error(self, what: str) -> LabError:
        console = self.console_tail(60)
        qemu_out = self._qemu_output()
        cause = ""
        crashed = bool(OOPS_RE.search(console))
        if "Kernel panic" in console:
            cause = " The kernel panicked (see the console below)."
        elif INITRAMFS_FAILED in console:
            cause = (" The initramfs could not reach the root filesystem (see the console below; "
                     f"`sockredir-lab kernels check {self.kernel.id}` lists what the kernel lacks).")
        elif crashed:
            cause = " The kernel crashed (Oops/BUG, see the console below)."
        elif "KVM internal error" in qemu_out:
            cause = " KVM failed: force TCG with SOCKREDIR_ACCEL=tcg."
        return BootFailed(
            f"guest for kernel {self.kernel.id} ({getattr(self.kernel, 'release', '?')}, "
            f"{self.accel.name}) did not boot: {what}.{cause} Full console: {self.console_log}\n"
            f"--- console tail ---\n{console}\n"
            + (f"--- qemu output ---\n{qemu_out}\n" if qemu_out else ""), crashed)

    def _connect(self, deadline: float) -> SSHTarget:
        """sshd listens before the ready line, so this normally succeeds at once; a few retries
        absorb a slow first handshake on a loaded host."""
        last: list[Exception] = []

        def connected() -> SSHTarget | None:
            if self._proc.poll() is not None:
                raise self._boot_error("QEMU exited while we connected over SSH")
            try:
                target = SSHTarget("127.0.0.1", self.port, self.image.client_key,
                                   self.image.host_key_line, name=f"guest-{self.kernel.id}",
                                   connect_timeout=min(30.0, max(1.0, deadline - time.monotonic())))
            except Exception as exc:  # paramiko raises several unrelated types
                last[:] = [exc]
                return None
            target.kernel_patches = getattr(self.kernel, "patches", frozenset())
            return target

        return wait.until(connected, deadline=deadline, every=0.2, fail=lambda: LabError(
            f"guest for kernel {self.kernel.id}: SSH to 127.0.0.1:{self.port} failed: "
            f"{last[0] if last else 'no attempt before the deadline'}; see {self.console_log} and "
            "/run/sshd.log in the guest"))

    def _request_poweroff(self) -> None:
        """Ask the kernel to power off (sysrq 'o', no init involved); QEMU then exits by itself."""
        with contextlib.suppress(Exception):
            self._target.run("echo o > /proc/sysrq-trigger", timeout=1)
        if self._proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=2)

    def _stop_qemu(self) -> None:
        if self._proc is not None:
            reaper.stop(self._proc, self._record, grace=2.0)
            self._proc = self._record = None
        if self._qemu_log_handle is not None:
            self._qemu_log_handle.close()
            self._qemu_log_handle = None


def _refuse_unbootable(kernel) -> None:
    """A kernel whose configuration lacks what a lab guest needs (virtio, ext4, an initramfs) is
    refused before QEMU starts, with the options named; an unknown configuration is tried."""
    known = kconfig.of_kernel(kernel)
    missing = [v.reason() for v in kconfig.check(known) if v.capability.boot and not v.ok] if known else []
    if missing:
        raise LabError(f"kernel {kernel.id} ({kernel.release}) cannot boot a lab guest: "
                       f"{'; '.join(missing)} ({known.source}). Fix: build it with those options "
                       "(built in, or as modules)")


def _cpu_seconds(pid: int) -> str:
    """User + system CPU time of a process, from /proc/PID/stat (fields 14 and 15, in ticks)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError as exc:
        return f"an unknown amount ({exc.strerror})"
    return f"{(int(fields[11]) + int(fields[12])) / os.sysconf('SC_CLK_TCK'):.1f} s"


RUN_DIR_PREFIX = "sockredir-guest-"


def _new_run_dir(memory_mb: int) -> Path:
    """A directory for a guest's QMP socket and RAM file: on /dev/shm when it has room for the RAM
    (a RAM file on disk would be written back as the guest runs), else in the temporary directory.
    Named after our PID, so that the directories of runs that were killed are found and removed."""
    _remove_dead_run_dirs()
    shm = Path("/dev/shm")
    room = 0
    with contextlib.suppress(OSError):
        stat = os.statvfs(shm)
        room = stat.f_bavail * stat.f_frsize
    parent = shm if room > 2 * memory_mb * 2**20 else None
    return Path(tempfile.mkdtemp(prefix=f"{RUN_DIR_PREFIX}{os.getpid()}-", dir=parent))


def _remove_dead_run_dirs() -> None:
    for parent in (Path("/dev/shm"), Path(tempfile.gettempdir())):
        for entry in parent.glob(f"{RUN_DIR_PREFIX}*-*"):
            pid = entry.name[len(RUN_DIR_PREFIX):].split("-", 1)[0]
            if pid.isdigit() and reaper.gone(int(pid)):
                shutil.rmtree(entry, ignore_errors=True)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _port_taken(qemu_log: Path) -> bool:
    try:
        text = qemu_log.read_text(errors="replace")
    except FileNotFoundError:
        return False
    return "Could not set up host forwarding rule" in text
