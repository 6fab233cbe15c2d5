"""Per-kernel boot files: a busybox initramfs with the boot modules, and a modules disk.

Debian cloud kernels build ext4 in but ship virtio-blk and virtio-net (and, up to 6.1, virtio-pci)
as modules; a distribution's generic kernel also has ext4, its crc32c and jbd2 as modules. So
reaching an ext4 root on virtio-blk needs an initramfs. Ours holds busybox-static,
``images/initramfs-init.sh`` as ``/init`` and only the modules ``BOOT_MODULES`` need, resolved from
the kernel's own metadata as modprobe would (``lab.kernel.modules``: modules.dep, softdep, alias,
builtin). Compressed modules are decompressed here, because busybox's insmod may not read
``.ko.xz``/``.ko.zst``.

The rest of the kernel's modules reach the guest as a second, read-only virtio-blk disk: an ext4
image of the modules directory (``mkfs.ext4 -d``), mounted at ``/lib/modules/<release>``.

Under TCG a guest decompresses its own bzImage slowly (about 1 s for a zstd-packed 6.12+ kernel), so
when the kernel has a PVH entry point we unpack the ELF ``vmlinux`` once on the host
(``lab.kernel.bzimage``) and QEMU boots it directly; otherwise (or if unpacking fails) the guest
boots the ``vmlinuz`` as shipped.
"""

from __future__ import annotations

import gzip
import io
import lzma
import os
import shutil
import stat
import subprocess
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from lab import IMAGES_DIR, LabError
from lab.cache import atomic_file, atomic_write, cache_dir, digest_of, sha256_file
from lab.kernel import bzimage
from lab.kernel.modules import Load, ModuleIndex

INIT_SCRIPT = IMAGES_DIR / "initramfs-init.sh"
BUSYBOX = Path("/bin/busybox")
# What it takes to reach an ext4 root on virtio-blk and bring up a virtio NIC.
BOOT_MODULES = ("virtio_pci", "virtio_blk", "virtio_net", "ext4")
MODULES_LABEL = "sockredir-mods"  # ext4 labels hold at most 16 bytes
FORMAT = "2"  # bump when the layout of the initramfs or the modules disk changes

Progress = Callable[[str], None]


@dataclass(frozen=True)
class BootFiles:
    kernel_image: Path       # what QEMU's -kernel gets: an unpacked PVH vmlinux, or the vmlinuz
    initramfs: Path          # gzip'd newc cpio
    modules_disk: Path       # ext4 image of the kernel's modules directory (attach read-only)
    modules_label: str       # its volume label, for lab.modules=LABEL=...
    load_order: tuple[Load, ...]  # module files insmod'ed by /init, in order


# ---- modules ------------------------------------------------------------------------------------

def resolve_modules(modules_dir: Path, wanted: Iterable[str], kernel: str = "") -> list[Load]:
    """The module files to load for ``wanted``, in load order (``lab.kernel.modules``)."""
    return ModuleIndex.read(modules_dir, kernel).resolve(list(wanted))


def read_module(path: Path) -> bytes:
    """The plain ELF bytes of a module, decompressing ``.ko.xz``/``.ko.gz``/``.ko.zst``."""
    name = path.name
    if name.endswith(".ko.xz"):
        return lzma.decompress(path.read_bytes())
    if name.endswith(".ko.gz"):
        return gzip.decompress(path.read_bytes())
    if name.endswith(".ko.zst"):
        if not shutil.which("zstd"):
            raise LabError(f"{path} is zstd-compressed and zstd is not installed; "
                           "run scripts/install-deps")
        return subprocess.run(["zstd", "-dcq", str(path)], capture_output=True, check=True).stdout
    return path.read_bytes()


# ---- newc cpio ---------------------------------------------------------------------------------

class NewcWriter:
    """A minimal writer of the ``newc`` cpio format the kernel unpacks as an initramfs."""

    def __init__(self, out: io.BufferedIOBase):
        self.out = out
        self.ino = 1
        self.mtime = 0  # reproducible archives: content alone decides the bytes

    def _entry(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> None:
        name_bytes = name.encode() + b"\0"
        fields = [self.ino, mode, 0, 0, 2 if stat.S_ISDIR(mode) else 1, self.mtime, len(data),
                  0, 0, rdev[0], rdev[1], len(name_bytes), 0]
        self.ino += 1
        header = b"070701" + b"".join(b"%08X" % value for value in fields)
        self.out.write(header + name_bytes)
        self.out.write(b"\0" * _pad4(len(header) + len(name_bytes)))
        self.out.write(data)
        self.out.write(b"\0" * _pad4(len(data)))

    def directory(self, name: str, perm: int = 0o755) -> None:
        self._entry(name, stat.S_IFDIR | perm)

    def file(self, name: str, data: bytes, perm: int = 0o644) -> None:
        self._entry(name, stat.S_IFREG | perm, data)

    def symlink(self, name: str, target: str) -> None:
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def char_device(self, name: str, major: int, minor: int, perm: int = 0o600) -> None:
        self._entry(name, stat.S_IFCHR | perm, rdev=(major, minor))

    def close(self) -> None:
        self._entry("TRAILER!!!", 0)


def _pad4(length: int) -> int:
    return (4 - length % 4) % 4


# ---- building ----------------------------------------------------------------------------------

def ensure_boot_files(kernel, progress: Progress = print) -> BootFiles:
    """The initramfs and modules disk for ``kernel`` (a lab.kernel.trees.KernelArtifacts), cached."""
    order = resolve_modules(kernel.modules_dir, BOOT_MODULES, kernel.id)
    initramfs = _ensure_initramfs(kernel, order, progress)
    disk = ensure_modules_disk(kernel, progress)
    return BootFiles(ensure_kernel_image(kernel, progress), initramfs, disk, MODULES_LABEL,
                     tuple(order))


def _ensure_initramfs(kernel, order: list[Load], progress: Progress) -> Path:
    key = digest_of([kernel.key, FORMAT, INIT_SCRIPT, sha256_file(BUSYBOX),
                     [(load.path, load.optional) for load in order]])
    path = cache_dir("initramfs", kernel.id) / f"initramfs-{key}.cpio.gz"
    if not path.exists():
        started = time.monotonic()
        with atomic_file(path) as tmp:
            with open(tmp, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6,
                                                       mtime=0) as gz:
                write_initramfs(gz, kernel.modules_dir, order)
        progress(f"initramfs: {kernel.id}: {len(order)} modules, {path.stat().st_size // 1024} KiB "
                 f"in {time.monotonic() - started:.1f}s")
    return path


def write_initramfs(out, modules_dir: Path, order: list[Load]) -> None:
    """busybox + its applet links, /init, the modules flattened into /lib/modules + load-order
    (one ``required NAME.ko`` or ``optional NAME.ko`` line per module)."""
    if not BUSYBOX.exists():
        raise LabError(f"{BUSYBOX} is missing; install busybox-static (scripts/install-deps)")
    cpio = NewcWriter(out)
    for directory in ("bin", "dev", "proc", "sys", "newroot", "lib", "lib/modules"):
        cpio.directory(directory)
    cpio.char_device("dev/console", 5, 1)
    cpio.file("bin/busybox", BUSYBOX.read_bytes(), 0o755)
    for applet in _busybox_applets():
        if applet != "busybox":
            cpio.symlink(f"bin/{applet}", "busybox")
    cpio.file("init", INIT_SCRIPT.read_bytes(), 0o755)
    lines = []
    for load in order:
        name = load.name + ".ko"
        cpio.file(f"lib/modules/{name}", read_module(modules_dir / load.path))
        lines.append(f"{'optional' if load.optional else 'required'} {name}\n")
    cpio.file("lib/modules/load-order", "".join(lines).encode())
    cpio.close()


def _busybox_applets() -> list[str]:
    listing = subprocess.run([str(BUSYBOX), "--list"], capture_output=True, text=True, check=True)
    return sorted(set(listing.stdout.split()))


def ensure_modules_disk(kernel, progress: Progress = print) -> Path:
    """An ext4 image of the kernel's modules directory, cached by the kernel's key."""
    path = cache_dir("initramfs", kernel.id) / f"modules-{digest_of([kernel.key, FORMAT])}.ext4"
    if path.exists():
        return path
    started = time.monotonic()
    tree_mb = _tree_mb(kernel.modules_dir)
    with atomic_file(path) as tmp:
        proc = subprocess.run(["mkfs.ext4", "-q", "-F", "-L", MODULES_LABEL, "-O", "^has_journal",
                               "-m", "0", "-E", "lazy_itable_init=0",
                               "-d", str(kernel.modules_dir), str(tmp), f"{int(tree_mb * 1.2) + 16}M"],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise LabError(f"kernel {kernel.id}: mkfs.ext4 of {kernel.modules_dir} failed: "
                           f"{proc.stderr.strip()}; is e2fsprogs installed (scripts/install-deps)?")
        os.chmod(tmp, 0o444)
    progress(f"initramfs: {kernel.id}: modules disk {tree_mb} MB in {time.monotonic() - started:.1f}s")
    return path


def _tree_mb(directory: Path) -> int:
    used = subprocess.run(["du", "-sxm", str(directory)], capture_output=True,
                          text=True, check=True)
    return int(used.stdout.split()[0]) + 1


# ---- unpacked kernel for PVH boot --------------------------------------------------------------

def ensure_kernel_image(kernel, progress: Progress = print) -> Path:
    """An unpacked ELF vmlinux with a PVH entry for ``kernel``, cached; else ``kernel.vmlinuz``."""
    directory = cache_dir("initramfs", kernel.id)
    key = digest_of([kernel.key, FORMAT])
    path, unusable = directory / f"vmlinux-{key}", directory / f"vmlinux-{key}.unusable"
    if path.exists():
        return path
    if unusable.exists():
        return kernel.vmlinuz
    try:
        elf = bzimage.unpack(kernel.vmlinuz.read_bytes())
        if not bzimage.has_pvh_entry(elf):
            raise ValueError("the kernel has no PVH entry point (CONFIG_PVH)")
    except (ValueError, OSError, EOFError, zlib.error, subprocess.CalledProcessError,
            lzma.LZMAError) as exc:
        atomic_write(unusable, f"{exc}\n")
        progress(f"initramfs: {kernel.id}: booting the compressed vmlinuz ({exc})")
        return kernel.vmlinuz
    with atomic_file(path) as tmp:
        tmp.write_bytes(elf)
    progress(f"initramfs: {kernel.id}: unpacked vmlinux for PVH boot ({len(elf) // 2**20} MB)")
    return path
