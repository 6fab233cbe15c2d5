"""A kernel's Debian headers as a read-only ext4 disk, for bcc's run-time compile in a guest.

Fetched only when asked for (bcc tests), never by the ordinary test run. Debian splits a kernel's
headers in two packages of the same build: ``linux-headers-<release>`` (the flavour's .config and
generated headers) and ``linux-headers-<ver>-common`` (the source tree's headers). The kernel image
package leaves ``/lib/modules/<release>/build`` and ``source`` to the headers package, and in the
guest that directory is the read-only modules disk, so the two trees are merged here into one tree
(common first, the flavour's files over it) and the guest points bcc at it with BCC_KERNEL_SOURCE,
bcc's documented override: with it bcc compiles from that one directory.

    disk = ensure_headers(entry, artifacts)            # Path of headers.ext4, cached by content
    with Guest(artifacts, image, workdir, extra_disks=[disk]) as guest:
        source = mount_headers(guest.target)            # -> "/run/kernel-headers"
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from lab import LabError
from lab.cache import atomic_dir, cache_dir, digest_of, file_lock
from lab.kernel.catalog import KernelEntry, locked_packages, read_lock
from lab.kernel.fetch import Progress, fetch_suite_packages
from lab.kernel.trees import KernelArtifacts

HEADERS_FORMAT = "1"  # bump when the merged tree's layout changes
HEADERS_LABEL = "sockredir-hdrs"  # ext4 volume label (at most 16 characters)
GUEST_MOUNT = "/run/kernel-headers"
DISK_NAME = "headers.ext4"


class HeadersUnavailable(LabError):
    """The archive does not carry this kernel build's headers: bcc cannot run on it (tests skip)."""


def ensure_headers(entry: KernelEntry, kernel: KernelArtifacts, progress: Progress = print) -> Path:
    """The ext4 image of ``kernel``'s merged headers, built once per headers build."""
    if entry.source != "suite":
        raise LabError(f"kernel {entry.id}: headers are fetched from the Debian suite of a `suite` "
                       f"catalog entry, and this one is a {entry.source} source. Fix: run bcc on a "
                       f"suite kernel, or give the kernel's headers yourself")
    try:
        # 6.12+ headers depend on their exact linux-image: the kernel itself is not wanted here
        found = fetch_suite_packages(entry.suite, f"linux-headers-{kernel.release}", progress,
                                     keep=lambda name: name.startswith("linux-headers-"))
    except LabError as exc:
        if "no package matching" not in str(exc):
            raise
        # Seen: trixie-backports still has the signed 6.18.15 image but only 7.x headers.
        raise HeadersUnavailable(f"kernel {entry.id}: {entry.suite} has no linux-headers-{kernel.release}, so bcc "
                       f"cannot compile for it. Fix: `sockredir-lab kernels lock --id {entry.id}` if "
                       f"the suite has a newer build with headers (`apt-cache pkgnames linux-headers-` "
                       f"on the lab's lists shows them), else run bcc on another kernel") from None
    _check_same_build(entry, kernel, found)
    key = digest_of(["headers", HEADERS_FORMAT, *sorted(p.sha256 for p, _ in found)])
    entry_dir = cache_dir("headers") / key
    disk = entry_dir / DISK_NAME
    with file_lock(cache_dir("headers") / f"{key}.lock"):
        if not disk.exists():
            _build(entry_dir, kernel.release, [deb for _, deb in found], progress)
    return disk


def _check_same_build(entry: KernelEntry, kernel: KernelArtifacts, found) -> None:
    """Headers of another build than the booted kernel compile, then mis-read kernel structures."""
    pinned = locked_packages(entry, read_lock())
    headers = found[0][0]
    if pinned and pinned[0].version != headers.version:
        raise LabError(f"kernel {entry.id}: {headers.name} in {entry.suite} is version "
                       f"{headers.version}, the locked kernel is {pinned[0].version}. Fix: "
                       f"`sockredir-lab kernels lock --id {entry.id}` to move both to the suite's build")
    if not any(p.name.endswith("-common") for p, _ in found):
        raise LabError(f"kernel {entry.id}: {headers.name} came without its linux-headers-*-common "
                       f"package in {entry.suite}. Fix: check `apt-cache show {headers.name}`")


def _build(entry_dir: Path, release: str, debs: list[Path], progress: Progress) -> None:
    started = time.monotonic()
    with atomic_dir(entry_dir) as out, tempfile.TemporaryDirectory(dir=entry_dir.parent,
                                                                   prefix=".headers.") as scratch:
        root = Path(scratch) / "root"
        for deb in debs:
            _run(["dpkg-deb", "-x", str(deb), str(root)], f"extracting {deb.name}")
        merged = _merge(root / "usr" / "src", release)
        size_mb = _du_mb(merged)
        _run(["mkfs.ext4", "-q", "-F", "-L", HEADERS_LABEL, "-O", "^has_journal", "-m", "0",
              "-d", str(merged), str(out / DISK_NAME), f"{int(size_mb * 1.3) + 32}M"],
             "mkfs.ext4 of the headers")
        os.chmod(out / DISK_NAME, 0o444)
        (out / "headers.json").write_text(json.dumps({
            "release": release, "debs": [d.name for d in debs],
            "debs_bytes": sum(d.stat().st_size for d in debs), "tree_mb": size_mb}, indent=2) + "\n")
    progress(f"headers {release}: {size_mb} MB tree, disk built in {time.monotonic() - started:.1f}s")


def _merge(src: Path, release: str) -> Path:
    """One tree: the common headers with the flavour's .config and generated headers laid over."""
    flavour = src / f"linux-headers-{release}"
    commons = [d for d in src.glob("linux-headers-*-common*") if d.is_dir()]
    if not flavour.is_dir() or len(commons) != 1:
        raise LabError(f"headers of {release}: expected usr/src/linux-headers-{release} and one "
                       f"linux-headers-*-common in the packages, found "
                       f"{sorted(p.name for p in src.iterdir())}. Fix: check the packages' contents")
    merged = commons[0]
    # scripts/ and tools/ point into linux-kbuild-*, a host-tools package bcc does not need.
    shutil.copytree(flavour, merged, symlinks=True, dirs_exist_ok=True,
                    ignore=lambda d, names: [n for n in names if n in ("scripts", "tools")
                                             and Path(d) == flavour])
    if not (merged / "include" / "linux" / "kconfig.h").is_file():
        raise LabError(f"headers of {release}: the merged tree has no include/linux/kconfig.h, "
                       f"which bcc needs. Fix: check the packages' contents")
    return merged


def mount_headers(target, device_label: str = HEADERS_LABEL, mountpoint: str = GUEST_MOUNT) -> str:
    """Mount the headers disk read-only in a running guest; returns the directory for
    BCC_KERNEL_SOURCE. /run is a writable tmpfs in the guest, unlike /lib/modules/<release>."""
    result = target.run(f"mkdir -p {mountpoint} && mountpoint -q {mountpoint} || "
                        f"mount -o ro LABEL={device_label} {mountpoint}", timeout=30, check=False)
    if result.rc != 0:
        raise LabError(f"cannot mount the headers disk (LABEL={device_label}) at {mountpoint} in the "
                       f"guest: {result.stderr.strip()}. Fix: pass the disk from ensure_headers() "
                       f"to Guest(extra_disks=[...])")
    return mountpoint


def _du_mb(directory: Path) -> int:
    used = subprocess.run(["du", "-sxm", str(directory)], capture_output=True, text=True)
    return int(used.stdout.split()[0]) if used.returncode == 0 else 512


def _run(argv: list[str], what: str) -> None:
    result = subprocess.run(argv, capture_output=True, text=True)
    if result.returncode != 0:
        raise LabError(f"{what} failed (exit {result.returncode}): {result.stderr.strip()[-1000:]}")
