"""What a kernel's modules need, read from the kernel's own metadata, the way modprobe reads it.

The initramfs must load, with busybox's insmod only, every module between the kernel and an ext4
root on virtio-blk. On a cloud kernel that is a handful of virtio modules; on a distribution's
generic kernel ext4 itself is a module, it asks for ``crypto-crc32c`` through ``modules.softdep``
(without it: ``EXT4-fs (vda): Cannot load crc32c driver``), and that name is an alias
(``modules.alias``) of ``crc32c_intel`` and ``crc32c_generic``. So a name is resolved like modprobe
resolves it:

1. a module of ``modules.dep``: its hard dependencies first, then its ``softdep ... pre:`` modules,
   then itself, then its ``post:`` modules;
2. a module built into the kernel (``modules.builtin``), or an alias that a built-in module declares
   (``modules.builtin.modinfo``): nothing to load;
3. an alias of ``modules.alias`` (patterns may hold shell wildcards): every module it names, as
   alternatives that may fail to load (modprobe too tries each).

Each module comes once, after everything it depends on. A name that nothing provides is an error
when something hard-depends on it, and is skipped when it was only a soft dependency (modprobe
does the same), so the boot failure that follows says what is missing.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from pathlib import Path

from lab import LabError

COMPRESSED_SUFFIXES = (".ko.xz", ".ko.zst", ".ko.gz")


def module_name(path: str) -> str:
    """``kernel/drivers/virtio/virtio_pci.ko.xz`` -> ``virtio_pci`` (dashes and underscores are one)."""
    base = path.rsplit("/", 1)[-1]
    for suffix in COMPRESSED_SUFFIXES + (".ko",):
        if base.endswith(suffix):
            base = base[: -len(suffix)]
            break
    return base.replace("-", "_")


@dataclass(frozen=True)
class Load:
    """One module file to insmod; ``optional`` when it is one alternative of an alias or a soft
    dependency, whose failure to load is not the end of the boot."""
    path: str
    optional: bool = False

    @property
    def name(self) -> str:
        return module_name(self.path)


@dataclass
class ModuleIndex:
    """The metadata files of one ``lib/modules/<release>`` directory, parsed."""
    directory: Path
    kernel: str
    dep: dict[str, tuple[str, list[str]]]          # name -> (path, [paths it needs])
    builtin: set[str]
    aliases: list[tuple[str, str]]                  # (pattern, module name), in file order
    builtin_aliases: list[str] = field(default_factory=list)
    softdeps: dict[str, tuple[list[str], list[str]]] = field(default_factory=dict)  # name -> (pre, post)

    @classmethod
    def read(cls, directory: Path, kernel: str = "") -> "ModuleIndex":
        where = f"kernel {kernel or directory.name}"
        try:
            dep = parse_modules_dep((directory / "modules.dep").read_text())
        except FileNotFoundError as exc:
            raise LabError(f"{where}: no modules.dep in {directory}; run `depmod -b ROOT RELEASE` "
                           "(lab.kernel.fetch does this when it prepares a kernel)") from exc

        def text(name: str) -> str:
            path = directory / name
            return path.read_text(errors="replace") if path.exists() else ""

        builtin_modinfo = directory / "modules.builtin.modinfo"
        return cls(directory=directory, kernel=where, dep=dep,
                   builtin=parse_modules_builtin(text("modules.builtin")),
                   aliases=parse_modules_alias(text("modules.alias")),
                   builtin_aliases=parse_builtin_modinfo_aliases(
                       builtin_modinfo.read_bytes() if builtin_modinfo.exists() else b""),
                   softdeps=parse_modules_softdep(text("modules.softdep")))

    def is_builtin(self, name: str) -> bool:
        return (module_name(name) in self.builtin
                or any(fnmatch.fnmatchcase(name, pattern) for pattern in self.builtin_aliases))

    def alias_targets(self, name: str) -> list[str]:
        targets = []
        for pattern, module in self.aliases:
            if fnmatch.fnmatchcase(name, pattern) and module not in targets:
                targets.append(module)
        return targets

    def resolve(self, wanted: list[str]) -> list[Load]:
        """The modules to load for ``wanted`` names (modules or aliases), in load order."""
        order: list[Load] = []
        placed: set[str] = set()

        def place(name: str, chain: tuple[str, ...], optional: bool) -> None:
            module = module_name(name)
            if module in placed:
                return
            if module in chain:
                raise LabError(f"{self.kernel}: dependency cycle {' -> '.join(chain + (module,))} in "
                               "modules.dep; regenerate it with depmod")
            if module in self.dep:
                path, deps = self.dep[module]
                pre, post = self.softdeps.get(module, ([], []))
                for dependency in deps:
                    place(module_name(dependency), chain + (module,), optional)
                for soft in pre:
                    place_soft(soft, chain + (module,))
                placed.add(module)
                order.append(Load(path, optional))
                for soft in post:
                    place_soft(soft, chain + (module,))
                return
            if self.is_builtin(name):
                return
            targets = [t for t in self.alias_targets(name) if t in self.dep or t in self.builtin]
            if any(t in self.builtin for t in targets):
                return
            if targets:
                for target in targets:
                    place(target, chain, optional=True)
                return
            if optional:
                return
            needed_by = f" (needed by {chain[-1]})" if chain else ""
            if not (self.directory / "modules.builtin").exists():
                raise LabError(f"{self.kernel}: module {name}{needed_by} is not in modules.dep, and "
                               f"{self.directory} has no modules.builtin, so what the kernel builds "
                               "in cannot be told: a package of this kernel is missing (Debian 7.x "
                               "ships it in linux-base-*, next to linux-binary-* and linux-modules-*)")
            raise LabError(f"{self.kernel}: module {name}{needed_by} is neither in modules.dep, "
                           "modules.builtin nor modules.alias; this kernel cannot boot a virtio "
                           "guest - choose a kernel that has it (built in or as a module), "
                           "`sockredir-lab kernels check` lists what is missing")

        def place_soft(name: str, chain: tuple[str, ...]) -> None:
            place(name, chain, optional=True)

        for name in wanted:
            place(name, (), optional=False)
        return order


def parse_modules_dep(text: str) -> dict[str, tuple[str, list[str]]]:
    """``modules.dep`` -> {module name: (its path, [paths it depends on])}."""
    table: dict[str, tuple[str, list[str]]] = {}
    for line in text.splitlines():
        if ":" not in line:
            continue
        path, deps = line.split(":", 1)
        table[module_name(path.strip())] = (path.strip(), deps.split())
    return table


def parse_modules_builtin(text: str) -> set[str]:
    return {module_name(line.strip()) for line in text.splitlines() if line.strip()}


def parse_modules_alias(text: str) -> list[tuple[str, str]]:
    """``alias crypto-crc32c crc32c_generic`` lines -> [(pattern, module name)]."""
    aliases = []
    for line in text.splitlines():
        words = line.split()
        if len(words) == 3 and words[0] == "alias":
            aliases.append((words[1], module_name(words[2])))
    return aliases


def parse_builtin_modinfo_aliases(data: bytes) -> list[str]:
    """The aliases built-in modules declare: NUL-separated ``module.alias=NAME`` records."""
    aliases = []
    for record in data.split(b"\0"):
        key, _, value = record.decode(errors="replace").partition("=")
        if key.endswith(".alias") and value:
            aliases.append(value)
    return aliases


def parse_modules_softdep(text: str) -> dict[str, tuple[list[str], list[str]]]:
    """``softdep ext4 pre: crypto-crc32c post: x`` lines -> {module: ([pre...], [post...])}."""
    table: dict[str, tuple[list[str], list[str]]] = {}
    for line in text.splitlines():
        words = line.split()
        if len(words) < 3 or words[0] != "softdep":
            continue
        pre, post = table.setdefault(module_name(words[1]), ([], []))
        current = None
        for word in words[2:]:
            if word in ("pre:", "post:"):
                current = pre if word == "pre:" else post
            elif current is not None:
                current.append(word)
    return table
