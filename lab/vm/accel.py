"""KVM or TCG: decided by booting, not by looking for /dev/kvm.

On some hosts /dev/kvm exists and KVM_CREATE_VM succeeds, yet every real boot fails
(``KVM internal error. Suberror: 1``) or hangs. So KVM is proven by booting the guest's kernel with
its initramfs in probe mode (``lab.probe=1``: print a line, power off) within a few seconds; if that
fails, guests use TCG. The probe runs once per host boot and QEMU version (cached on disk).
``SOCKREDIR_ACCEL=kvm|tcg`` skips the probe and forces one.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from lab import LabError
from lab.cache import atomic_write, cache_dir, digest_of, file_lock

QEMU = "qemu-system-x86_64"
PROBE_TIMEOUT = 10.0
PROBE_LINE = "SOCKREDIR-PROBE-OK"
CHOICES = ("kvm", "tcg")
# Every feature TCG emulates, except fast string moves: with ERMS/FSRM the guest kernel copies
# socket data with `rep movsb`, which TCG runs a byte at a time. Without them the kernel's copies
# are word loops: measured here (6.12, QEMU 7.2), 128 MiB through a socketpair took 0.5 s of
# guest CPU instead of 1.2-2.0 s; exec, Python start-up and SHA-256 cost the same. RDRAND stays,
# so the guest's RNG is ready at boot.
TCG_CPU = "max,-erms,-fsrm"


@dataclass(frozen=True)
class Accel:
    name: str    # "kvm" or "tcg"
    reason: str  # why, for logs and reports

    def qemu_args(self) -> list[str]:
        if self.name == "kvm":
            return ["-accel", "kvm", "-cpu", "host"]
        return ["-accel", "tcg", "-cpu", TCG_CPU]


def choose(forced: str | None, kvm_device_usable: bool, probe: Callable[[], bool]) -> Accel:
    """The decision, free of side effects but for calling ``probe`` when (and only when) needed."""
    if forced:
        if forced not in CHOICES:
            raise LabError(f"SOCKREDIR_ACCEL={forced!r} is not one of {', '.join(CHOICES)}; "
                           "set it to kvm or tcg, or unset it to probe")
        return Accel(forced, "forced by SOCKREDIR_ACCEL")
    if not kvm_device_usable:
        return Accel("tcg", "/dev/kvm is missing or not accessible")
    if probe():
        return Accel("kvm", "a probe boot under KVM succeeded")
    return Accel("tcg", "a probe boot under KVM failed (KVM present but unusable)")


def detect(kernel, initramfs: Path) -> Accel:
    """Choose the accelerator for this host; ``kernel``/``initramfs`` are booted by the probe."""
    return choose(os.environ.get("SOCKREDIR_ACCEL", "").strip().lower() or None,
                  os.access("/dev/kvm", os.R_OK | os.W_OK),
                  lambda: cached_probe(kernel, initramfs))


def cached_probe(kernel, initramfs: Path) -> bool:
    """The probe's verdict for this host boot and QEMU version, probing once under a lock."""
    path = cache_dir("accel") / f"probe-{probe_cache_key()}.json"
    with file_lock(path.with_suffix(".lock")):
        if path.exists():
            return bool(json.loads(path.read_text())["kvm_ok"])
        ok, detail, seconds = probe_kvm(kernel, initramfs)
        atomic_write(path, json.dumps({"kvm_ok": ok, "detail": detail, "seconds": round(seconds, 2),
                                       "kernel": kernel.id, "probed_at": time.time()}))
        return ok


def probe_cache_key() -> str:
    boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    return digest_of([boot_id, qemu_version()])


@functools.cache  # a guest start asks twice (probe cache, snapshot key); QEMU is not upgraded mid-run
def qemu_version() -> str:
    try:
        out = subprocess.run([QEMU, "--version"], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        raise LabError(f"{QEMU} does not run ({exc}); install qemu-system-x86 "
                       "(scripts/install-deps)") from exc
    return out.stdout.splitlines()[0].strip()


def probe_kvm(kernel, initramfs: Path) -> tuple[bool, str, float]:
    """Boot ``kernel`` under KVM to the initramfs's probe line. Returns (ok, detail, seconds)."""
    from lab.vm import reaper

    marker = reaper.new_marker()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="sockredir-kvm-probe-") as tmp:
        console = Path(tmp) / "console.log"
        argv = [QEMU, "-name", marker, "-nodefaults", "-no-user-config", "-display", "none",
                "-accel", "kvm", "-cpu", "host", "-m", "256", "-no-reboot",
                "-kernel", str(kernel.vmlinuz), "-initrd", str(initramfs),
                "-append", "console=ttyS0 panic=-1 quiet lab.probe=1",
                "-serial", f"file:{console}"]
        proc, record = reaper.spawn(argv, marker, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            out, _ = proc.communicate(timeout=PROBE_TIMEOUT)
            seen = console.read_text(errors="replace") if console.exists() else ""
            ok = proc.returncode == 0 and PROBE_LINE in seen
            detail = "ok" if ok else f"exit {proc.returncode}: {out.decode(errors='replace')[-500:]}"
        except subprocess.TimeoutExpired:
            ok, detail = False, f"no probe line within {PROBE_TIMEOUT:.0f}s (KVM boot hangs)"
        finally:
            reaper.stop(proc, record, grace=0.5)
    return ok, detail, time.monotonic() - started
