"""The cache's extracted kernels: ``kernels/trees/<key>``, one kernel each, in one layout.

Whatever a kernel came from (Debian packages, a user's .deb files, a bare vmlinuz and its modules,
a build from source), it ends up as a tree with ``boot/vmlinuz-<release>`` (or the 7.x split
packages' ``usr/lib/modules/<release>/vmlinuz``), ``lib/modules/<release>`` with a fresh
``modules.dep`` (depmod), and ``kernel.json`` naming both. ``key`` is a hash of what the kernel was
made from, so a warm lookup reads one small JSON file. Trees are built once (other processes wait
on a lock) and atomically.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from lab import LabError
from lab.cache import atomic_dir, atomic_write, cache_dir, file_lock

TREE_FORMAT = "1"  # bump when the layout of an extracted tree changes
Progress = Callable[[str], None]


@dataclass(frozen=True)
class KernelArtifacts:
    id: str  # catalog id, "6.1"
    release: str  # uname -r, "6.1.0-41-cloud-amd64"
    vmlinuz: Path
    modules_dir: Path  # the directory holding modules.dep: <root>/lib/modules/<release>
    key: str  # content hash of this build, for caching derived artifacts
    # The kernel-fixes/ patches (file names) it was built with: the defects they fix are not there
    # to excuse a failure (lab.conformance.defects).
    patches: frozenset[str] = frozenset()


def load(kernel_id: str, key: str) -> KernelArtifacts | None:
    tree = cache_dir("kernels", "trees") / key
    meta = tree / "kernel.json"
    if not meta.exists():
        return None
    data = json.loads(meta.read_text())
    return KernelArtifacts(id=kernel_id, release=data["release"], vmlinuz=tree / data["vmlinuz"],
                           modules_dir=tree / data["modules_dir"], key=key)


def build(kernel_id: str, key: str, progress: Progress,
                populate: Callable[[Path], None]) -> KernelArtifacts:
    """Build ``trees/<key>`` once (others wait on a lock), atomically, then load it."""
    trees = cache_dir("kernels", "trees")
    with file_lock(trees / f"{key}.lock"):
        ready = load(kernel_id, key)
        if ready:
            return ready
        with atomic_dir(trees / key) as tmp:
            root = tmp / "root"
            root.mkdir()
            populate(root)
            release, vmlinuz, modules = _find_kernel(root)
            _depmod(root, release, progress)
            meta = {"release": release, "vmlinuz": str(vmlinuz.relative_to(tmp)),
                    "modules_dir": str((root / "lib" / "modules" / release).relative_to(tmp))}
            atomic_write(tmp / "kernel.json", json.dumps(meta, indent=2) + "\n")
        artifacts = load(kernel_id, key)
        progress(f"kernel {kernel_id}: {artifacts.release} ready in {trees / key}")
        return artifacts


def merge_usr_lib(root: Path) -> None:
    """Give every tree one modules location, <root>/lib/modules, as on a merged-/usr system.

    6.12+ packages install into usr/lib/modules, older ones into lib/modules; depmod -b on this
    host only looks under <root>/lib/modules, so lib becomes a link to usr/lib.
    """
    usr_lib = root / "usr" / "lib"
    if not (usr_lib / "modules").is_dir():
        return
    lib = root / "lib"
    if lib.is_dir() and not lib.is_symlink():
        for item in lib.rglob("*"):
            if item.is_file() or item.is_symlink():
                moved = usr_lib / item.relative_to(lib)
                moved.parent.mkdir(parents=True, exist_ok=True)
                os.replace(item, moved)
        shutil.rmtree(lib)
    lib.symlink_to("usr/lib")


def _find_kernel(root: Path) -> tuple[str, Path, Path]:
    """(release, vmlinuz, modules dir) of the one kernel in ``root``."""
    found = {}
    for vmlinuz in root.glob("boot/vmlinuz-*"):
        found[vmlinuz.name[len("vmlinuz-"):]] = vmlinuz
    for vmlinuz in root.glob("lib/modules/*/vmlinuz"):
        found.setdefault(vmlinuz.parent.name, vmlinuz)
    if len(found) != 1:
        what = ", ".join(sorted(found)) or "none"
        raise LabError(f"expected one kernel image (boot/vmlinuz-* or usr/lib/modules/*/vmlinuz) "
                       f"in the extracted packages, found {what}. Fix: point the catalog entry at "
                       f"a kernel image package")
    release, vmlinuz = found.popitem()
    modules = root / "lib" / "modules" / release
    if not modules.is_dir():
        raise LabError(f"kernel {release}: no lib/modules/{release} in the extracted packages. "
                       f"Fix: include the package with the modules (linux-modules-*)")
    return release, vmlinuz, modules


def _depmod(root: Path, release: str, progress: Progress) -> None:
    progress(f"depmod {release}")
    run_checked(["depmod", "-b", str(root), release], f"depmod for {release}")
    modules = root / "lib" / "modules" / release
    has_modules = any(modules.rglob("*.ko*"))
    if has_modules and not (modules / "modules.dep").read_text().strip():
        raise LabError(f"depmod wrote an empty modules.dep for {release}. Fix: a kmod built with "
                       f"xz/zstd support (`depmod --version` shows +XZ +ZSTD)")


def run_checked(argv: list[str], what: str) -> None:
    result = subprocess.run(argv, capture_output=True, text=True)
    if result.returncode != 0:
        raise LabError(f"{what} failed (exit {result.returncode}): {result.stderr.strip()[-1000:]}")
