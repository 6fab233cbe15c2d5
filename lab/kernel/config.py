"""A kernel's build configuration, and what the lab and the redirect need of it.

The configuration comes from wherever the kernel keeps it: ``boot/config-<release>`` in a
distribution's package (or ``lib/modules/<release>/config``), the ``IKCONFIG`` copy embedded in
the kernel image (``IKCFG_ST`` ... ``IKCFG_ED`` around a gzip stream) or in its ``configs`` module,
and ``/proc/config.gz`` or ``/boot/config-$(uname -r)`` for the running host. Each capability the
lab relies on is a set of options that must be built in (``y``) or may also be a module (``m``);
``check`` says per capability whether the kernel has it, so a kernel is judged before anyone waits
for it to boot, a test that needs a missing capability skips with the option named, and a boot
failure can point at the option that is missing.
"""

from __future__ import annotations

import gzip
import lzma
import re
import subprocess
import zlib
from dataclasses import dataclass
from pathlib import Path

from lab import LabError
from lab.kernel import bzimage

Version = tuple[int, int]


@dataclass(frozen=True)
class Option:
    name: str                   # without the CONFIG_ prefix
    allowed: str = "y"          # "y", or "ym" when a module does too
    before: Version | None = None   # needed only on kernels older than this


@dataclass(frozen=True)
class Capability:
    name: str
    purpose: str
    options: tuple[Option, ...]
    boot: bool = False          # the guest cannot boot without it


CAPABILITIES: tuple[Capability, ...] = (
    Capability("bpf", "the bpf() syscall and bpffs: every program", (Option("BPF_SYSCALL"),)),
    Capability("cgroup-bpf", "sock_ops programs attached to a cgroup", (Option("CGROUP_BPF"),)),
    # Before 5.13 sock_map.c was built only with the stream parser (5.13 "bpf: Clean up sockmap
    # related Kconfigs" moved it under NET_SOCK_MSG).
    Capability("sockmap", "SOCKHASH, sk_msg and bpf_msg_redirect_hash: the redirect",
               (Option("NET_SOCK_MSG"), Option("BPF_STREAM_PARSER", before=(5, 13)))),
    Capability("btf", "kernel BTF for the CO-RE objects (the redirect, verify)",
               (Option("DEBUG_INFO_BTF"),)),
    Capability("tracepoints", "tracefs events counted as bypass evidence",
               (Option("EVENT_TRACING"),)),
    Capability("kprobes", "kprobe events (tcp_bpf_sendmsg) as bypass evidence",
               (Option("KPROBES"), Option("KPROBE_EVENTS"))),
    Capability("netns", "a fresh network namespace per scenario", (Option("NET_NS"),)),
    Capability("ipv6", "the IPv6 and v4-mapped scenarios", (Option("IPV6", "ym"),)),
    Capability("initramfs", "the lab's initramfs", (Option("BLK_DEV_INITRD"), Option("DEVTMPFS")),
               boot=True),
    Capability("virtio-pci", "the guest's virtio devices", (Option("VIRTIO_PCI", "ym"),), boot=True),
    Capability("virtio-blk", "the root and modules disks", (Option("VIRTIO_BLK", "ym"),), boot=True),
    Capability("virtio-net", "the NIC that carries SSH", (Option("VIRTIO_NET", "ym"),), boot=True),
    Capability("ext4", "the root and modules filesystems", (Option("EXT4_FS", "ym"),), boot=True),
)
# What the redirect and every test that installs it need.
REDIRECT = ("bpf", "cgroup-bpf", "sockmap", "btf")


def by_name(name: str) -> Capability:
    for capability in CAPABILITIES:
        if capability.name == name:
            return capability
    raise KeyError(f"no capability {name!r}; known: {', '.join(c.name for c in CAPABILITIES)}")


@dataclass(frozen=True)
class KernelConfig:
    values: dict[str, str]      # "NET_SOCK_MSG" -> "y"
    source: str                 # where it was read, for messages
    version: Version | None = None

    def value(self, option: str) -> str:
        return self.values.get(option, "n")


@dataclass(frozen=True)
class CapabilityVerdict:
    capability: Capability
    missing: tuple[Option, ...]   # options not set as needed (empty: present)
    values: dict[str, str]

    @property
    def ok(self) -> bool:
        return not self.missing

    def reason(self) -> str:
        """``sockmap: CONFIG_NET_SOCK_MSG is not set (needed for ...)``."""
        parts = [f"CONFIG_{o.name}={self.values[o.name]}" if self.values[o.name] != "n"
                 else f"CONFIG_{o.name} is not set" for o in self.missing]
        return f"{self.capability.name}: {', '.join(parts)} (needed for {self.capability.purpose})"


def parse(text: str, source: str, version: Version | None = None) -> KernelConfig:
    """``CONFIG_X=y`` lines (and ``# CONFIG_X is not set``) -> a KernelConfig."""
    values = {}
    for line in text.splitlines():
        match = re.match(r"CONFIG_([A-Za-z0-9_]+)=(.*)$", line.strip())
        if match:
            values[match.group(1)] = match.group(2).strip('"')
        else:
            unset = re.match(r"# CONFIG_([A-Za-z0-9_]+) is not set", line.strip())
            if unset:
                values[unset.group(1)] = "n"
    return KernelConfig(values, source, version)


def version_of(release: str) -> Version | None:
    match = re.match(r"(\d+)\.(\d+)", release)
    return (int(match.group(1)), int(match.group(2))) if match else None


def check(config: KernelConfig, names: tuple[str, ...] | None = None) -> list[CapabilityVerdict]:
    """One verdict per capability (or per named capability), in CAPABILITIES order."""
    verdicts = []
    for capability in CAPABILITIES:
        if names is not None and capability.name not in names:
            continue
        relevant = [o for o in capability.options
                    if o.before is None or config.version is None or config.version < o.before]
        missing = tuple(o for o in relevant if config.value(o.name) not in o.allowed)
        verdicts.append(CapabilityVerdict(capability, missing, {o.name: config.value(o.name) for o in relevant}))
    return verdicts


def missing_reason(config: KernelConfig | None, names: tuple[str, ...]) -> str | None:
    """Why a kernel cannot serve a test that needs ``names``, or None when it can (or the
    configuration is unknown: then the test runs and shows what happens)."""
    if config is None:
        return None
    problems = [v.reason() for v in check(config, names) if not v.ok]
    if not problems:
        return None
    return f"kernel lacks {'; '.join(problems)} ({config.source})"


# ---- where a kernel keeps its configuration -----------------------------------------------------

IKCONFIG_START, IKCONFIG_END = b"IKCFG_ST", b"IKCFG_ED"


def of_kernel(artifacts) -> KernelConfig | None:
    """The configuration of a prepared kernel (``lab.kernel.trees.KernelArtifacts``)."""
    return for_tree(artifacts.release, artifacts.vmlinuz, artifacts.modules_dir)


def for_tree(release: str, vmlinuz: Path, modules_dir: Path) -> KernelConfig | None:
    """The configuration of an extracted kernel: its config file, else the embedded IKCONFIG of
    the image or of the ``configs`` module; None if the kernel keeps none."""
    version = version_of(release)
    root = modules_dir.parents[2] if len(modules_dir.parents) >= 3 else modules_dir
    for path in (root / "boot" / f"config-{release}", modules_dir / "config",
                 vmlinuz.parent / f"config-{release}"):
        if path.is_file():
            return parse(path.read_text(errors="replace"), str(path), version)
    embedded = _from_image(vmlinuz)
    if embedded is not None:
        return parse(embedded, f"IKCONFIG of {vmlinuz}", version)
    for module in sorted(modules_dir.glob("kernel/kernel/configs.ko*")):
        text = embedded_config(_read_maybe_compressed(module))
        if text is not None:
            return parse(text, f"IKCONFIG of {module}", version)
    return None


def for_host(release: str) -> KernelConfig | None:
    """The running kernel's configuration: /proc/config.gz, else /boot/config-<release>."""
    proc = Path("/proc/config.gz")
    if proc.exists():
        return parse(gzip.decompress(proc.read_bytes()).decode(errors="replace"), str(proc),
                     version_of(release))
    boot = Path(f"/boot/config-{release}")
    if boot.exists():
        return parse(boot.read_text(errors="replace"), str(boot), version_of(release))
    return None


def for_file(path: Path, release: str = "") -> KernelConfig:
    """A configuration named by the user: a .config file, or a kernel image carrying IKCONFIG."""
    data = path.read_bytes()
    if data.startswith(b"\x1f\x8b"):
        data = gzip.decompress(data)
    if b"CONFIG_" in data[:4096] and b"\0" not in data[:4096]:
        return parse(data.decode(errors="replace"), str(path), version_of(release))
    embedded = _from_image(path)
    if embedded is None:
        raise LabError(f"{path} is neither a kernel .config nor a kernel image with an embedded "
                       "configuration (IKCONFIG). Fix: give the kernel's config file")
    release = release or bzimage.release(path) or ""
    return parse(embedded, f"IKCONFIG of {path}", version_of(release))


def _from_image(vmlinuz: Path) -> str | None:
    try:
        data = vmlinuz.read_bytes()
        if data[0x202:0x206] == b"HdrS":
            data = bzimage.unpack(data)
    except (OSError, ValueError, subprocess.CalledProcessError, lzma.LZMAError, EOFError, zlib.error):
        return None
    return embedded_config(data)


def embedded_config(data: bytes) -> str | None:
    """The gzip'd configuration between IKCFG_ST and IKCFG_ED in a kernel or module image."""
    start = data.find(IKCONFIG_START)
    if start < 0:
        return None
    stream = data[start + len(IKCONFIG_START):]
    try:
        text = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(stream)
    except zlib.error:
        return None
    return text.decode(errors="replace")


def _read_maybe_compressed(path: Path) -> bytes:
    data = path.read_bytes()
    if path.name.endswith(".xz"):
        return lzma.decompress(data)
    if path.name.endswith(".gz"):
        return gzip.decompress(data)
    if path.name.endswith(".zst"):
        return subprocess.run(["zstd", "-dcq"], input=data, capture_output=True, check=True).stdout
    return data
