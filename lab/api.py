"""The lab's public Python API: a target to work on, and your own BPF programs on it.

    from lab import api

    with api.boot("6.1") as target:                 # a QEMU guest of catalog kernel 6.1, or "host"
        obj = api.build("my_redirect.bpf.c")        # CO-RE object, built once and cached
        with api.cgroup(target) as cg, api.load(target, obj) as prog:
            prog.attach_sockmap("my_verdict", "my_sockhash")
            prog.attach_cgroup("my_sockops", cg)
            api.run_in(target, ["python3", "-c", "..."], cgroup=cg)
            print(prog.map("my_sockhash").dump())

This is the one way to get a target: every ``sockredir-lab`` command, the pytest plugin, ``verify``
and the scenario suite boot through ``guest()``/``boot()`` and reach the host through ``host()``,
so the sequence catalog -> kernel -> image -> boot files -> QEMU -> SSH exists once, and so does the
root check. ``Settings`` carries what a user can choose (their own catalog, extra guest packages,
the accelerator, where progress goes). Runnable examples: docs/api.md.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import secrets
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from lab import DEFAULT_KERNEL, HOST, IMAGES_DIR, LabError
from lab.bpf import build as bpf_build
from lab.bpf import bpftool, cgroups, links, pins, policy, redirect
from lab.bpf.policy import PortPolicy, parse_ports
from lab.bpf.program import UserProgram
from lab.cache import cache_dir
from lab.kernel.catalog import Catalog, KernelEntry
from lab.vm import capacity
from lab.vm.target import Command, LocalTarget, Result, Target, as_shell

Progress = Callable[[str], None]

__all__ = ["HOST", "DEFAULT_KERNEL", "Settings", "catalog", "prepare_kernel", "guest", "boot", "host",
           "build", "load", "Loaded", "MapHandle", "cgroup", "netns", "run_in", "install_redirect",
           "uninstall_redirect", "redirected_cgroup", "redirect_status", "set_redirect_policy", "PortPolicy", "parse_ports",
           "LabError"]


def _stderr_progress(message: str) -> None:
    print(f"[sockredir-lab] {message}", file=sys.stderr, flush=True)


@dataclass
class Settings:
    """What a user of the lab can choose; every field has a working default.

    ``kernels_toml``: a catalog of your own (default ``$SOCKREDIR_KERNELS_TOML``, else the lab's).
    ``kernel_sources``: kernel id -> .deb / vmlinuz path or URL, replacing or adding catalog entries.
    ``image_packages``: Debian packages added to the lab's guest image (a separate cached image).
    ``accel``: ``kvm`` or ``tcg`` to force QEMU's accelerator (default: prove KVM by booting).
    ``cold_boot``: boot every guest from scratch instead of restoring a saved one (lab.vm.snapshot).
    ``guest_cpus``: each guest's vCPUs (lab.vm.capacity: when several guests share the cores, their
    share of them; the pytest plugin and ``sockredir-lab matrix`` choose it so).
    """

    kernels_toml: Path | None = None
    kernel_sources: dict[str, str] = field(default_factory=dict)
    image_packages: tuple[str, ...] = ()
    accel: str | None = None
    cold_boot: bool = False
    guest_cpus: int = capacity.GUEST_CPUS
    progress: Progress = _stderr_progress
    _catalog: Catalog | None = field(default=None, repr=False, compare=False)

    def catalog_path(self) -> Path:
        path = self.kernels_toml or os.environ.get("SOCKREDIR_KERNELS_TOML") or IMAGES_DIR / "kernels.toml"
        return Path(path).expanduser().resolve()

    def catalog(self) -> Catalog:
        """The catalog with the overrides applied, loaded once (LabError if it is unusable)."""
        if self._catalog is None:
            loaded = Catalog.load(self.catalog_path())
            for kernel_id, source in self.kernel_sources.items():
                loaded = loaded.with_override(kernel_id, source)
            self._catalog = loaded
        return self._catalog


def _settings(settings: Settings | None) -> Settings:
    return settings if settings is not None else Settings()


# ----------------------------------------------------------------------------- targets

def catalog(settings: Settings | None = None) -> Catalog:
    return _settings(settings).catalog()


def prepare_kernel(kernel: str | KernelEntry, settings: Settings | None = None):
    """The kernel's files (fetched, extracted, depmod'ed; cached). KernelUnavailable when its
    source is not provided (e.g. 5.15 without a .deb), LabError for a broken entry."""
    from lab.kernel import fetch

    settings = _settings(settings)
    catalog = settings.catalog()
    entry = kernel if isinstance(kernel, KernelEntry) else catalog.get(kernel)
    return fetch.prepare(entry, progress=settings.progress, lock=catalog.read_lock())


def guest_image(settings: Settings | None = None):
    from lab.vm import image

    settings = _settings(settings)
    return image.ensure_image(progress=settings.progress, extra_packages=settings.image_packages)


@contextlib.contextmanager
def guest(kernel, settings: Settings | None = None, workdir: Path | None = None,
          extra_disks: Sequence[Path] = (), image=None):
    """A booted ``Guest`` of ``kernel`` (a catalog id, a catalog entry or prepared kernel files).

    Use it when you need the guest itself (its console, its SSH port); ``boot()`` gives the Target.
    ``workdir`` keeps the console and QEMU logs (default: a temporary directory, removed after).
    """
    from lab.kernel.trees import KernelArtifacts
    from lab.vm.guest import Guest

    settings = _settings(settings)
    files = kernel if isinstance(kernel, KernelArtifacts) else prepare_kernel(kernel, settings)
    image = image or guest_image(settings)
    accel = _forced_accel(settings.accel)
    with contextlib.ExitStack() as stack:
        if workdir is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(
                prefix=f"guest-{files.id}-", dir=cache_dir("run"))))
        settings.progress(f"booting kernel {files.id} ({files.release})")
        booted = stack.enter_context(Guest(files, image, Path(workdir), accel=accel,
                                           extra_disks=list(extra_disks), progress=settings.progress,
                                           cpus=settings.guest_cpus,
                                           snapshot="off" if settings.cold_boot else "auto"))
        yield booted


def _forced_accel(name: str | None):
    from lab.vm.accel import CHOICES, Accel

    if name in (None, "", "auto"):
        return None  # the Guest proves KVM by booting (or honours $SOCKREDIR_ACCEL)
    if name not in CHOICES:
        raise LabError(f"accelerator {name!r}: choose {', '.join(CHOICES)} or auto")
    return Accel(name, "forced by the caller")


def host() -> LocalTarget:
    """This machine as a Target: root is needed (BPF programs, cgroups, network namespaces)."""
    if os.geteuid() != 0:
        raise LabError("the host target loads BPF programs and makes cgroups and network namespaces "
                       "on this machine, which needs root; run as root (e.g. with sudo)")
    return LocalTarget()


@contextlib.contextmanager
def boot(kernel: str = DEFAULT_KERNEL, settings: Settings | None = None,
         workdir: Path | None = None) -> Iterator[Target]:
    """A Target for ``kernel``: a freshly booted guest (stopped after the block), or the host for
    ``"host"``."""
    if kernel == HOST:
        yield host()
        return
    with guest(kernel, settings, workdir) as booted:
        yield booted.target


# ----------------------------------------------------------------------------- BPF objects

def build(source: str | Path, defines: Sequence[str] = ()) -> Path:
    """Build a ``.bpf.c`` into a CO-RE object (cached by content); a ``.o`` is returned as it is.

    The source may include ``vmlinux.h``, ``bpf/bpf_helpers.h`` and the other libbpf headers."""
    source = Path(source).expanduser().resolve()
    if source.suffix == ".o":
        if not source.is_file():
            raise LabError(f"BPF object {source} does not exist; build it or pass the .bpf.c source")
        return source
    return bpf_build.build(source, tuple(defines))


class MapHandle:
    """A map pinned by ``load()``: dump, look up, update and delete through ``bpftool -j``.

    Keys and values are ``bytes`` (as the program lays them out) or, for ``dump``/``lookup``, come
    back as bpftool's JSON: ``{"key": [...hex...], "value": ..., "formatted": {...}}`` where the
    object carries BTF (``formatted`` then holds the decoded struct)."""

    def __init__(self, target: Target, name: str, pin: str, info: dict):
        self.target, self.name, self.pin, self.info = target, name, pin, info

    @property
    def type(self) -> str:
        return self.info.get("type", "")

    def dump(self) -> list[dict]:
        return bpftool.bpftool_json(self.target, ["map", "dump", "pinned", self.pin])

    def lookup(self, key: bytes) -> dict | None:
        result = self.target.run(["bpftool", "-j", "map", "lookup", "pinned", self.pin,
                                  "key", "hex", *_hex(key)])
        if not result.ok:
            if "No such file or directory" in result.stderr or "not found" in result.stderr:
                return None
            raise LabError(f"bpftool map lookup in {self.name} failed: {result.stderr.strip()}")
        return bpftool.parse_bpftool_json(result.stdout, f"map lookup {self.name}")

    def update(self, key: bytes, value: bytes, flags: str = "any") -> None:
        if flags not in ("any", "exist", "noexist"):
            raise LabError(f"update flags {flags!r}: use any, exist or noexist")
        self.target.run(["bpftool", "map", "update", "pinned", self.pin, "key", "hex", *_hex(key),
                         "value", "hex", *_hex(value), flags], check=True)

    def delete(self, key: bytes) -> None:
        self.target.run(["bpftool", "map", "delete", "pinned", self.pin, "key", "hex", *_hex(key)],
                        check=True)


def _hex(data: bytes) -> list[str]:
    return [f"{byte:02x}" for byte in bytes(data)]


# What `bpftool cgroup attach` calls each cgroup program type's usual attach point.
CGROUP_ATTACH_TYPES = {"sock_ops": "sock_ops", "cgroup_skb": None, "cgroup_sock": "sock_create",
                       "cgroup_sock_addr": None, "cgroup_device": "device", "cgroup_sysctl": "sysctl",
                       "cgroup_sockopt": None}


class Loaded:
    """Every program and map of one object, loaded and pinned on a target; ``close()`` (or the
    end of the ``with`` block) detaches what was attached through it and removes the pins."""

    def __init__(self, target: Target, obj: Path, pin_dir: str, programs: dict):
        self.target, self.obj, self.pin_dir = target, obj, pin_dir
        self.programs = programs  # name -> pins.Program (id, type, pin, verified_insns)
        self._detach: list[list[str]] = []
        self._maps: dict[str, MapHandle] | None = None

    def __enter__(self) -> "Loaded":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def maps(self) -> dict[str, MapHandle]:
        # An object's maps are fixed once it is loaded: one bpftool listing serves every lookup.
        if self._maps is None:
            self._maps = {name: MapHandle(self.target, name, f"{self.pin_dir}/maps/{name}", info)
                          for name, info in pins.pinned_maps(self.target, self.pin_dir).items()}
        return self._maps

    def map(self, name: str) -> MapHandle:
        maps = self.maps
        if name not in maps:
            raise LabError(f"{self.obj.name} has no map {name!r} (its maps: {', '.join(sorted(maps))})")
        return maps[name]

    def program(self, name: str):
        if name not in self.programs:
            raise LabError(f"{self.obj.name} has no program {name!r} "
                           f"(its programs: {', '.join(sorted(self.programs))})")
        return self.programs[name]

    def attach_cgroup(self, program: str, cgroup_path: str, attach_type: str | None = None) -> None:
        """Attach a cgroup program (sock_ops, cgroup/skb, ...) to a cgroup the caller owns."""
        prog = self.program(program)
        cgroup_path = cgroups.resolve(self.target, cgroup_path)
        attach_type = attach_type or CGROUP_ATTACH_TYPES.get(prog.type)
        if not attach_type:
            raise LabError(f"program {program} is of type {prog.type}: say where it attaches with "
                           f"attach_type= (a `bpftool cgroup attach` type, e.g. ingress, egress)")
        self._detach.append(links.to_cgroup(self.target, cgroup_path, attach_type, prog.pin))

    def attach_sockmap(self, program: str, map_name: str, attach_type: str | None = None) -> None:
        """Attach an sk_msg / sk_skb program to a SOCKMAP or SOCKHASH of this object."""
        prog = self.program(program)
        pin = self.map(map_name).pin
        attach_type = attach_type or links.MAP_ATTACH_TYPES.get(prog.type)
        if not attach_type:
            raise LabError(f"program {program} is of type {prog.type}, not sk_msg or sk_skb; give "
                           f"attach_type= (msg_verdict, stream_verdict, stream_parser, skb_verdict)")
        self._detach.append(links.to_map(self.target, prog.pin, attach_type, pin))

    def attach_tracepoint(self, program: str, point: str) -> str:
        """Attach a ``tracepoint`` program to ``CATEGORY/NAME`` (kernel 5.15+) or a
        ``raw_tracepoint`` program to ``NAME``; the link is pinned under this object's pins (removed
        by ``close()``). Returns the link's pin."""
        prog = self.program(program)
        if prog.type not in ("tracepoint", "raw_tracepoint"):
            raise LabError(f"program {program} is of type {prog.type}; attach_tracepoint takes "
                           "tracepoint and raw_tracepoint programs")
        return self._attach_link(prog, prog.type, point)

    def attach_tracing(self, program: str) -> str:
        """Attach a ``tracing`` program (``fentry/FUNC``, ``fexit/FUNC``) to the kernel function it
        was loaded for (kernel 5.5+); the link is pinned like attach_tracepoint's. Returns its pin."""
        prog = self.program(program)
        if prog.type != "tracing":
            raise LabError(f"program {program} is of type {prog.type}; attach_tracing takes tracing "
                           "(fentry/fexit) programs")
        return self._attach_link(prog, "tracing", "-")

    def _attach_link(self, prog: "pins.Program", kind: str, point: str) -> str:
        link_pin = f"{self.pin_dir}/links/{prog.name}"
        links.attach(self.target, prog.name, prog.pin, kind, point, link_pin)
        self._detach.append(["rm", "-f", link_pin])
        return link_pin

    def close(self) -> None:
        # Detach in reverse order; a detach that fails (the cgroup is gone) has nothing to undo.
        for argv in reversed(self._detach):
            self.target.run(argv)
        self._detach.clear()
        self.target.run(["rm", "-rf", self.pin_dir], check=True)


def load(target: Target, obj: str | Path, name: str | None = None) -> Loaded:
    """Load every program of ``obj`` (a .o, or a .bpf.c built first) and pin programs and maps in
    the lab's bpffs directory. Raises ``pins.VerifierRejected`` (with ``.log`` and
    ``.key_line``) or ``pins.ObjectRefused`` when the kernel or libbpf refuses it."""
    obj = build(obj)
    slug = name or f"{obj.stem.removesuffix('.bpf')}-{secrets.token_hex(3)}"
    pin_dir = posixpath.join(pins.ensure_bpffs(target), pins.PIN_PARENT, "user", slug)
    try:
        programs = pins.load(target, obj, pin_dir)
    except BaseException:
        target.run(["rm", "-rf", pin_dir])
        raise
    return Loaded(target, obj, pin_dir, programs)


# ----------------------------------------------------------------------------- places to run in

def cgroup(target: Target, name: str | None = None):
    """A fresh cgroup v2 on ``target`` for the block (``with api.cgroup(t) as path``), removed
    afterwards; the lab never attaches to a cgroup it did not make unless you name one."""
    return cgroups.dedicated(target, name)


@contextlib.contextmanager
def netns(target: Target, name: str | None = None) -> Iterator[str]:
    """A fresh network namespace (loopback up) for the block, deleted afterwards."""
    name = name or f"sredir-{secrets.token_hex(3)}"
    target.run(["ip", "netns", "add", name], check=True)
    try:
        target.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        target.run(["ip", "netns", "delete", name])


def run_in(target: Target, command: Command, cgroup: str | None = None, netns: str | None = None,
           timeout: float = 60, check: bool = False) -> Result:
    """Run ``command`` on ``target`` inside a cgroup and/or a network namespace."""
    inner = as_shell(command)
    if netns:
        inner = as_shell(["ip", "netns", "exec", netns, "sh", "-c", inner])
    if cgroup:
        procs = posixpath.join(cgroups.resolve(target, cgroup), "cgroup.procs")
        inner = f"echo $$ > {as_shell([procs])} && exec {inner}"
    return target.run(["sh", "-c", inner], timeout=timeout, check=check)


# ----------------------------------------------------------------------------- the redirect

def install_redirect(target: Target, cgroup_path: str, variant: str = "production",
                     max_entries: int | None = None, port_policy: PortPolicy | None = None) -> redirect.Installation:
    """The project's redirect on ``cgroup_path`` (see bpf/README.md for the variants), with
    ``port_policy`` set before it is attached (default: every connection)."""
    return redirect.install(target, cgroup_path, variant, max_entries, port_policy)


def set_redirect_policy(target: Target, cgroup_path: str, port_policy: PortPolicy) -> PortPolicy:
    """Which connections the installed redirect takes from now on; returns the policy read back."""
    return policy.apply(target, redirect.policy_pin_dir(target, cgroup_path), port_policy)


@contextlib.contextmanager
def redirected_cgroup(target: Target, variant: str = "production", port_policy: PortPolicy | None = None,
                      program: UserProgram | None = None) -> Iterator[redirect.Installation]:
    """A fresh cgroup with the redirect installed (the lab's ``variant``, or ``program``, one the
    lab did not write), for the block (``installed.cgroup`` is its path); uninstalled and removed
    afterwards, whatever happened."""
    with cgroup(target) as path:
        installed = (program.install(target, path) if program is not None
                     else redirect.install(target, path, variant, port_policy=port_policy))
        try:
            yield installed
        finally:
            redirect.uninstall(target, path)


def uninstall_redirect(target: Target, cgroup_path: str) -> list[str]:
    return redirect.uninstall(target, cgroup_path)


def redirect_status(target: Target, cgroup_path: str) -> dict[str, Any]:
    return redirect.status(target, cgroup_path)
