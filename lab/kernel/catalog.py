"""The kernel catalog (``images/kernels.toml``) and its lock (``images/kernels.lock.json``).

The catalog says where each kernel comes from; the lock pins what a Debian source resolved to
(exact package names, versions, archive paths and SHA-256), so every machine fetches the same bytes.
A broken entry never hides the good ones: ``Catalog.load`` returns the valid entries plus one
``CatalogError`` per broken entry, so a test matrix can report it as an error and carry on.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Mapping

from lab import IMAGES_DIR, LabError
from lab.cache import atomic_write

CATALOG_PATH = IMAGES_DIR / "kernels.toml"
LOCK_PATH = IMAGES_DIR / "kernels.lock.json"
# The suites of the private apt configuration (lab/kernels.py); a new suite is added here.
SUITES = ("bullseye", "bookworm", "trixie", "trixie-backports", "sid")
ENV_PREFIX = "SOCKREDIR_KERNEL_"
URL_SCHEMES = ("http://", "https://", "file://")

_ENTRY_KEYS = {"id", "suite", "package", "url", "path", "modules", "env", "build", "config", "patches", "hint"}
_LIST_KEYS = {"url", "path", "patches"}  # url, path: a kernel in several packages (Ubuntu: linux-image-* + linux-modules-*)
TARBALL_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.xz", ".txz", ".tar.bz2", ".tar.zst")
_ID_RE = re.compile(r"^[0-9A-Za-z][0-9A-Za-z._-]*$")
_GLOB_RE = re.compile(r"^[a-z0-9][a-z0-9+.*?\[\]!-]*$")  # Debian package name characters + glob
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


# A kernel's test id (test_id_of): never a dash, so it stands apart in pytest's "a-b-c" param ids.
TEST_ID_RE = re.compile(r"kernel_[0-9a-z_]+", re.IGNORECASE)


def test_id_of(kernel_id: str) -> str:
    return "kernel_" + re.sub(r"[.-]", "_", kernel_id)


def split_test_name(name: str) -> tuple[str, str | None]:
    """A test's name without its kernel parameter, and that kernel's test id:
    ``test_x[kernel_6_1-seed]`` -> (``test_x[seed]``, ``kernel_6_1``); (name, None) without one."""
    base, bracket, params = name.partition("[")
    if not bracket or not params.endswith("]"):
        return name, None
    parts = params[:-1].split("-")
    index = next((i for i, part in enumerate(parts) if TEST_ID_RE.fullmatch(part)), None)
    if index is None:
        return name, None
    rest = parts[:index] + parts[index + 1:]
    return (f"{base}[{'-'.join(rest)}]" if rest else base), parts[index]


def env_var_of(kernel_id: str) -> str:
    """The variable that overrides a kernel's source: 6.1 -> SOCKREDIR_KERNEL_6_1."""
    return ENV_PREFIX + re.sub(r"[.-]", "_", kernel_id)


@dataclass(frozen=True)
class KernelEntry:
    id: str
    suite: str | None = None
    package: str | None = None
    url: str | None = None
    path: Path | None = None
    modules: Path | None = None
    env: str | None = None
    build: Path | None = None   # a kernel source tree or tarball, built by lab.kernel.build
    config: Path | None = None  # the user's config fragment for a build
    patches: tuple[Path, ...] = ()  # git-format patches applied, in order, before a build
    more: tuple[str, ...] = ()  # more .deb files (paths or URLs) of the same kernel as url/path
    hint: str = ""              # how to get this kernel, for `kernels list` and skip reasons
    origin: str = ""  # where this source was declared, for messages

    @property
    def test_id(self) -> str:
        return test_id_of(self.id)

    @property
    def source(self) -> str:
        """One of "suite", "url", "path", "build", "env" (an env source whose variable is unset)."""
        if self.suite:
            return "suite"
        if self.build:
            return "build"
        return "url" if self.url else "path" if self.path else "env"

    def describe(self) -> str:
        if self.source == "suite":
            return f"{self.suite}: {self.package}"
        more = "".join(f" + {extra}" for extra in self.more)
        if self.source == "url":
            return self.url + more
        if self.source == "path":
            return f"{self.path}" + (f" + modules {self.modules}" if self.modules else "") + more
        if self.source == "build":
            return (f"build of {self.build}" + "".join(f" + {patch.name}" for patch in self.patches)
                    + (f" with {self.config}" if self.config else ""))
        return f"${self.env} (unset)"

    def unavailable_reason(self) -> str | None:
        if self.source != "env":
            return None
        return (f"kernel {self.id} image not provided: set {self.env} to a .deb path/URL "
                f"(several, comma-separated, for a kernel in several packages), a vmlinuz path "
                f"or a kernel source tree" + (f"; {self.hint}" if self.hint else ""))


class CatalogError(LabError):
    """One broken catalog entry (or a broken file, then ``index`` is None)."""

    def __init__(self, file: Path, index: int | None, entry_id: str | None, problem: str, fix: str):
        self.file, self.index, self.entry_id = file, index, entry_id
        where = f"kernel entry #{index}" if index is not None else "catalog"
        if entry_id:
            where += f" (id {entry_id!r})"
        super().__init__(f"{_shown(file)}: {where}: {problem}. Fix: {fix}")

    @property
    def test_id(self) -> str:
        return test_id_of(self.entry_id) if self.entry_id else f"kernel_entry_{self.index}"


def source_from_value(kernel_id: str, value: str, origin: str) -> KernelEntry:
    """An entry from a user-given value (environment variable, CLI or pytest option): a .deb or
    vmlinuz path or URL, several .deb files separated by commas (image + modules packages), or a
    kernel source tree or tarball to build."""
    first, *more = [part.strip() for part in value.split(",") if part.strip()] or [value]
    more = tuple(m if m.startswith(URL_SCHEMES) else str(Path(m).expanduser().resolve()) for m in more)
    if first.startswith(URL_SCHEMES):
        return KernelEntry(id=kernel_id, url=first, more=more, origin=origin)
    path = Path(first).expanduser().resolve()
    if not more and is_source(path):
        return KernelEntry(id=kernel_id, build=path, origin=origin)
    return KernelEntry(id=kernel_id, path=path, more=more, origin=origin)


def is_source(path: Path) -> bool:
    """A kernel source tree (a directory with Kbuild's top Makefile and Kconfig) or a tarball."""
    if path.is_dir():
        return (path / "Makefile").is_file() and (path / "Kconfig").is_file()
    return path.name.endswith(TARBALL_SUFFIXES)


@dataclass(frozen=True)
class Catalog:
    path: Path
    entries: tuple[KernelEntry, ...]
    errors: tuple[CatalogError, ...] = ()

    @classmethod
    def load(cls, path: Path = CATALOG_PATH, environ: Mapping[str, str] | None = None) -> "Catalog":
        """Parse the catalog and apply SOCKREDIR_KERNEL_<ID> overrides from ``environ``.

        Raises LabError only when the file as a whole is unusable; broken entries land in ``errors``.
        """
        environ = os.environ if environ is None else environ
        try:
            data = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise LabError(f"{path}: kernel catalog not found. Fix: create it "
                           f"(see {_shown(CATALOG_PATH)} in the repository)") from None
        except tomllib.TOMLDecodeError as exc:
            raise LabError(f"{path}: not valid TOML ({exc}). Fix the syntax") from None
        entries: list[KernelEntry] = []
        errors: list[CatalogError] = []
        for extra in sorted(set(data) - {"kernel"}):
            errors.append(CatalogError(path, None, None, f"unknown top-level key {extra!r}",
                                       "only [[kernel]] tables belong in this file"))
        tables = data.get("kernel", [])
        if not isinstance(tables, list):
            tables = []
            errors.append(CatalogError(path, None, None, "'kernel' is not a list of tables",
                                       "write each kernel as a [[kernel]] table"))
        for index, table in enumerate(tables, start=1):
            try:
                entry = _parse_entry(path, index, table)
                first = next((e for e in entries if e.id == entry.id), None)
                if first:
                    raise CatalogError(path, index, entry.id, f"duplicate id (also {first.origin})",
                                       "give each [[kernel]] its own id")
                entries.append(entry)
            except CatalogError as exc:
                errors.append(exc)
        catalog = cls(path, tuple(entries), tuple(errors))
        return catalog._with_environment(environ)

    def _with_environment(self, environ: Mapping[str, str]) -> "Catalog":
        catalog = self
        claimed = {e.env for e in self.entries if e.env}
        for entry in self.entries:
            for name in (entry.env, env_var_of(entry.id)):
                if name and environ.get(name):
                    catalog = catalog._replaced(source_from_value(entry.id, environ[name], f"${name}"))
        for name, value in sorted(environ.items()):
            if name.startswith(ENV_PREFIX) and name not in claimed and value:
                kernel_id = name[len(ENV_PREFIX):].replace("_", ".")
                if not catalog.find(kernel_id) and _ID_RE.match(kernel_id):
                    catalog = catalog._replaced(source_from_value(kernel_id, value, f"${name}"))
        return catalog

    def with_override(self, kernel_id: str, path_or_url: str) -> "Catalog":
        """This catalog with ``kernel_id`` taken from a path or URL (replacing or adding it)."""
        if not _ID_RE.match(kernel_id):
            raise LabError(f"kernel id {kernel_id!r} is not valid: use letters, digits, '.', '-', '_'")
        return self._replaced(source_from_value(kernel_id, path_or_url, "override"))

    def _replaced(self, new: KernelEntry) -> "Catalog":
        if self.find(new.id):
            entries = tuple(new if e.id == new.id else e for e in self.entries)
        else:
            entries = self.entries + (new,)
        return replace(self, entries=entries)

    @property
    def lock_path(self) -> Path:
        """The lock of this catalog: ``kernels.lock.json`` beside it (a user's catalog has its own)."""
        return self.path.with_name(LOCK_PATH.name)

    def read_lock(self) -> dict[str, dict]:
        return read_lock(self.lock_path)

    def find(self, kernel_id: str) -> KernelEntry | None:
        return next((e for e in self.entries if e.id == kernel_id), None)

    def get(self, kernel_id: str) -> KernelEntry:
        entry = self.find(kernel_id)
        if entry:
            return entry
        broken = next((e for e in self.errors if e.entry_id == kernel_id), None)
        if broken:
            raise broken
        known = ", ".join(e.id for e in self.entries) or "none"
        raise LabError(f"kernel {kernel_id!r} is not in {_shown(self.path)} (known: {known}). "
                       f"Fix: add a [[kernel]] entry or set {env_var_of(kernel_id)}")

    @property
    def ids(self) -> list[str]:
        return [e.id for e in self.entries]


def _parse_entry(path: Path, index: int, table: object) -> KernelEntry:
    def fail(problem: str, fix: str, entry_id: str | None = None):
        raise CatalogError(path, index, entry_id, problem, fix)

    if not isinstance(table, dict):
        fail("is not a table", "write it as a [[kernel]] table")
    kernel_id = table.get("id")
    if not isinstance(kernel_id, str) or not _ID_RE.match(kernel_id):
        fail(f"missing or invalid id ({kernel_id!r})",
             'add id = "X.Y" (letters, digits, ".", "-", "_")')
    for key in sorted(table):
        if key not in _ENTRY_KEYS:
            fail(f"unknown key {key!r}", f"use only {', '.join(sorted(_ENTRY_KEYS))}", kernel_id)
        value = table[key]
        listed = isinstance(value, list) and key in _LIST_KEYS
        if listed and (not value or not all(isinstance(v, str) and v for v in value)):
            fail(f"{key} must be a non-empty list of non-empty strings",
                 f'write {key} = ["image.deb", "modules.deb"]', kernel_id)
        if not listed and (not isinstance(value, str) or not value):
            fail(f"{key} must be a non-empty string", f'write {key} = "..."', kernel_id)
    sources = [k for k in ("suite", "url", "path", "build", "env") if k in table]
    if "package" in table and "suite" not in table:
        fail("package without suite", f"add suite = one of {', '.join(SUITES)}", kernel_id)
    if len(sources) != 1:
        found = ", ".join(sources) if sources else "none"
        fail(f"needs exactly one source, found {found}",
             "keep one of suite+package, url, path, build or env", kernel_id)
    if "modules" in table and "path" not in table:
        fail("modules without path", "modules only goes with path = a vmlinuz", kernel_id)
    if "config" in table and "build" not in table:
        fail("config without build", "config (a fragment) only goes with build = a source tree", kernel_id)
    if "patches" in table and "build" not in table:
        fail("patches without build", "patches only go with build = a source tree", kernel_id)
    base = path.parent
    entry = KernelEntry(id=kernel_id, origin=f"{_shown(path)} entry #{index}", hint=table.get("hint", ""))
    if "suite" in table:
        suite, package = table["suite"], table.get("package")
        if suite not in SUITES:
            fail(f"unknown suite {suite!r}",
                 f"use one of {', '.join(SUITES)} (or add it to SUITES in lab/catalog.py)", kernel_id)
        if not package:
            fail("suite without package", 'add package = "linux-image-...*" (a glob)', kernel_id)
        if not _GLOB_RE.match(package) or not _brackets_balanced(package):
            fail(f"bad package glob {package!r}",
                 "use a Debian package name with * ? [...] wildcards, lower case", kernel_id)
        return replace(entry, suite=suite, package=package)
    if "url" in table:
        urls = table["url"] if isinstance(table["url"], list) else [table["url"]]
        for url in urls:
            if not url.startswith(URL_SCHEMES):
                fail(f"url {url!r} is not http(s):// or file://", "give a full URL", kernel_id)
        return replace(entry, url=urls[0], more=tuple(urls[1:]))
    if "path" in table:
        paths = [str((base / Path(p).expanduser()).resolve())
                 for p in (table["path"] if isinstance(table["path"], list) else [table["path"]])]
        modules = table.get("modules")
        if modules and len(paths) > 1:
            fail("modules with several paths", "modules goes with one path = a vmlinuz; a kernel in "
                 "several packages lists only the .deb files", kernel_id)
        return replace(entry, path=Path(paths[0]), more=tuple(paths[1:]),
                       modules=(base / Path(modules).expanduser()).resolve() if modules else None)
    if "build" in table:
        config = table.get("config")
        patches = table.get("patches", [])
        built = table["build"]  # a path, or debian:linux-source-X.Y (kept as written)
        return replace(entry, build=Path(built) if built.startswith("debian:")
                       else (base / Path(built).expanduser()).resolve(),
                       config=(base / Path(config).expanduser()).resolve() if config else None,
                       patches=tuple((base / Path(p).expanduser()).resolve()
                                     for p in (patches if isinstance(patches, list) else [patches])))
    if not _ENV_NAME_RE.match(table["env"]):
        fail(f"env {table['env']!r} is not a variable name", "use e.g. SOCKREDIR_KERNEL_5_15", kernel_id)
    return replace(entry, env=table["env"])


def _brackets_balanced(glob: str) -> bool:
    depth = 0
    for char in glob:
        if char == "[":
            if depth:
                return False
            depth = 1
        elif char == "]":
            if not depth:
                return False
            depth = 0
    return depth == 0


def _shown(path: Path) -> str:
    """``path`` relative to the working directory when it is below it (in a checkout, run from its
    top: ``images/kernels.toml``), else absolute (an installed copy, or another directory)."""
    path = Path(path)
    try:
        path = path.resolve()
        return str(path.relative_to(Path.cwd()))
    except (ValueError, OSError):  # not below the working directory, or that directory was removed
        return str(path)


# --- the lock ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LockedPackage:
    name: str
    version: str
    suite: str
    filename: str  # path in the archive, e.g. pool/main/l/linux/linux-image-..._amd64.deb
    size: int
    sha256: str


def read_lock(path: Path = LOCK_PATH) -> dict[str, dict]:
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except ValueError as exc:
        raise LabError(f"{_shown(path)}: not valid JSON ({exc}). "
                       f"Fix: delete it and run `sockredir-lab kernels lock`") from None
    return data.get("kernels", {})


def write_lock(locked: dict[str, dict], path: Path = LOCK_PATH) -> None:
    document = {"comment": "Written by `sockredir-lab kernels lock`; do not edit.",
                "kernels": dict(sorted(locked.items()))}
    atomic_write(path, json.dumps(document, indent=2) + "\n")


def lock_record(entry: KernelEntry, packages: list[LockedPackage] | None = None,
                url_sha256: str | None = None, url_size: int | None = None) -> dict:
    if entry.source == "suite":
        return {"suite": entry.suite, "package": entry.package,
                "packages": [asdict(p) for p in packages or []]}
    return {"url": entry.url, "sha256": url_sha256, "size": url_size}


def locked_packages(entry: KernelEntry, lock: Mapping[str, dict]) -> list[LockedPackage] | None:
    """The pinned packages of a suite entry, or None if the lock has none for this exact source."""
    record = lock.get(entry.id)
    if entry.source != "suite" or not record:
        return None
    if record.get("suite") != entry.suite or record.get("package") != entry.package:
        return None  # the catalog changed since the lock was written
    return [LockedPackage(**p) for p in record.get("packages", [])] or None


def locked_url_sha256(entry: KernelEntry, lock: Mapping[str, dict]) -> str | None:
    record = lock.get(entry.id)
    if entry.source != "url" or not record or record.get("url") != entry.url:
        return None
    return record.get("sha256")
