"""Fetch a catalog kernel, extract it, run depmod, and cache the result by content.

Debian sources are resolved with apt under a private configuration (its own sources list, lists and
cache under the lab cache; the host's apt state is never read or written) and the archive signatures
are checked with the host's Debian keyring. The resolved packages are pinned in the lock file; the
.deb files are then downloaded straight from the archive and checked against the pinned SHA-256.
Extracted trees live under ``kernels/trees/<key>`` (``lab.kernel.trees``), ``key`` being a hash of
the debs' content, so a warm ``prepare`` reads one small JSON file and touches neither the network
nor apt.
"""

from __future__ import annotations

import fnmatch
import functools
import hashlib
import http.client
import os
import pwd
import re
import shlex
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, Mapping

from lab import LabError
from lab.cache import atomic_dir, atomic_file, atomic_write, cache_dir, digest_of, file_lock, sha256_file
from lab.kernel import build, bzimage, trees
from lab.kernel.trees import KernelArtifacts
from lab.kernel.catalog import (LOCK_PATH, SUITES, URL_SCHEMES, Catalog, KernelEntry, LockedPackage, lock_record, locked_packages,
                         locked_url_sha256, read_lock, write_lock)

MIRROR = os.environ.get("SOCKREDIR_DEBIAN_MIRROR", "http://deb.debian.org/debian")
KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
LISTS_MAX_AGE = 24 * 3600
Progress = Callable[[str], None]


class KernelUnavailable(LabError):
    """The kernel's source is not provided (e.g. an unset env source): its tests skip."""


def prepare(entry: KernelEntry, progress: Progress = print,
            lock: Mapping[str, dict] | None = None) -> KernelArtifacts:
    """Fetch, extract and depmod ``entry``'s kernel (or build it from source), or return the
    cached result."""
    reason = entry.unavailable_reason()
    if reason:
        raise KernelUnavailable(reason)
    lock = read_lock() if lock is None else lock
    if entry.source == "suite":
        return _prepare_suite(entry, lock, progress)
    if entry.source == "build":
        return build.build_kernel(source_of(entry.build, progress), entry.id, entry.config, progress=progress,
                                  patches=entry.patches)
    first = (_fetch_url(entry.url, locked_url_sha256(entry, lock), progress) if entry.source == "url"
             else _local_file(entry, entry.path))
    files = [first] + [_fetch_url(more, None, progress) if more.startswith(URL_SCHEMES)
                       else _local_file(entry, Path(more)) for more in entry.more]
    return _prepare_files(entry, files, progress)


def _local_file(entry: KernelEntry, path: Path) -> tuple[Path, str]:
    if not path.is_file():
        raise LabError(f"kernel {entry.id}: {path} does not exist (from {entry.origin}). "
                       "Fix: point it at a .deb or a vmlinuz file")
    return path, sha256_file(path)


def cached(entry: KernelEntry, lock: Mapping[str, dict]) -> KernelArtifacts | None:
    """The artifacts if they are already in the cache, found without network or apt."""
    try:
        if entry.source == "suite":
            packages = locked_packages(entry, lock)
            return trees.load(entry.id, _debs_key(p.sha256 for p in packages)) if packages else None
        if entry.source == "build":
            source = debian_source_cached(entry.build) if is_debian_source(entry.build) else entry.build
            return build.cached(source, entry.id, entry.config, entry.patches) if source else None
        files = []
        for index, source in enumerate((entry.url or str(entry.path),) + entry.more):
            if source.startswith(URL_SCHEMES):
                file = _url_cache_path(source)
                sha = (locked_url_sha256(entry, lock) if index == 0 else None) or _read_sidecar(file)
            else:
                file = Path(source)
                sha = sha256_file(file) if file.is_file() else None
            if not file.exists() or not sha:
                return None
            files.append((file, sha))
        return trees.load(entry.id, _files_key(files, entry.modules))
    except LabError:
        pass
    return None


def fetch_suite_packages(suite: str, glob: str, progress: Progress = print,
                         keep: Callable[[str], bool] = lambda name: True
                         ) -> list[tuple[LockedPackage, Path]]:
    """Resolve ``glob`` (and its exact-version dependencies) in ``suite`` and download the debs
    whose name ``keep`` accepts, each checked against the archive's SHA-256: for companions of a
    kernel, such as its headers."""
    apt = PrivateApt()
    apt.update(progress)
    return [(package, _fetch_deb(package, progress))
            for package in apt.resolve(suite, glob, progress) if keep(package.name)]


DEBIAN_SOURCE = "debian:"


def is_debian_source(source: Path | str) -> bool:
    return str(source).startswith(DEBIAN_SOURCE)


def source_of(source: Path | str, progress: Progress = print) -> Path:
    """A build's SRC: a path, or ``debian:PACKAGE`` (e.g. ``debian:linux-source-6.12``): the
    source tarball of Debian's package, fetched from the newest suite that has it."""
    return debian_source(str(source), progress) if is_debian_source(source) else Path(source)


def debian_source(spec: str, progress: Progress = print) -> Path:
    """Fetch Debian's ``linux-source-X.Y`` package (the highest version any of SUITES has, checked
    against the archive's SHA-256) and extract its ``usr/src/linux-source-X.Y.tar.*`` once."""
    name = spec[len(DEBIAN_SOURCE):]
    if not re.fullmatch(r"linux-source-[0-9][0-9.]*", name):
        raise LabError(f"{spec}: name a Debian kernel source package, e.g. debian:linux-source-6.12")
    apt = PrivateApt()
    apt.update(progress)
    found = []
    for suite in SUITES:
        try:
            found += [p for p in apt.resolve(suite, name, lambda line: None) if p.name == name]
        except LabError:
            continue  # not in this suite
    if not found:
        raise LabError(f"no suite of {', '.join(SUITES)} has {name}. Fix: `apt-cache policy "
                       f"'linux-source-*'` on a Debian machine lists them; or give a tarball path")
    package = max(found, key=lambda p: _version_key(p.version))
    progress(f"{spec}: {package.name} {package.version} from {package.suite}")
    deb = _fetch_deb(package, progress)
    unpacked = cache_dir("kernels", "debian-sources") / package.sha256[:16]
    with file_lock(unpacked.with_name(unpacked.name + ".lock")):
        if not unpacked.exists():
            with atomic_dir(unpacked) as tmp:
                done = subprocess.run(f"dpkg-deb --fsys-tarfile {shlex.quote(str(deb))} | "
                                      f"tar -x -C {shlex.quote(str(tmp))} --wildcards './usr/src/{name}.tar.*'",
                                      shell=True, capture_output=True, text=True)
                if done.returncode != 0:
                    raise LabError(f"extracting the source tarball from {deb.name} failed: "
                                   f"{done.stderr.strip()[-300:]}")
    tarballs = sorted((unpacked / "usr" / "src").glob(f"{name}.tar.*"))
    if not tarballs:
        raise LabError(f"{deb.name} holds no usr/src/{name}.tar.*: not a kernel source package")
    atomic_write(cache_dir("kernels", "debian-sources") / f"{name}.last", str(tarballs[0]))
    return tarballs[0]


def debian_source_cached(spec: Path | str) -> Path | None:
    """The tarball the last ``debian_source(spec)`` gave, without apt or network."""
    last = cache_dir("kernels", "debian-sources") / f"{str(spec)[len(DEBIAN_SOURCE):]}.last"
    tarball = Path(last.read_text()) if last.exists() else None
    return tarball if tarball and tarball.exists() else None


def _version_key(version: str) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"[^0-9A-Za-z]+", version)]


def lock_kernels(catalog: Catalog, ids: list[str] | None = None, progress: Progress = print,
                 lock_path: Path = LOCK_PATH) -> list[LabError]:
    """Resolve suite and URL entries afresh and write the lock; returns the per-entry failures."""
    entries = [catalog.get(i) for i in ids] if ids else list(catalog.entries)
    lock = read_lock(lock_path)
    if not ids:  # a full lock drops ids that left the catalog or became local sources
        lock = {k: v for k, v in lock.items()
                if (e := catalog.find(k)) and e.source in ("suite", "url")}
    failures: list[LabError] = []
    apt = PrivateApt()
    for entry in entries:
        try:
            if entry.source == "suite":
                apt.update(progress, max_age=0)  # once per run: update() stamps the lists
                packages = apt.resolve(entry.suite, entry.package, progress)
                lock[entry.id] = lock_record(entry, packages=packages)
                progress(f"{entry.id}: " + ", ".join(f"{p.name} {p.version}" for p in packages))
            elif entry.source == "url":
                file, sha = _fetch_url(entry.url, None, progress, force=True)
                lock[entry.id] = lock_record(entry, url_sha256=sha, url_size=file.stat().st_size)
                progress(f"{entry.id}: {entry.url} sha256 {sha}")
            else:
                progress(f"{entry.id}: {entry.source} source ({entry.describe()}), nothing to lock")
        except LabError as exc:
            failures.append(exc)
            progress(f"{entry.id}: FAILED: {exc}")
    write_lock(lock, lock_path)
    return failures


# --- Debian suites through a private apt configuration -----------------------------------------

class PrivateApt:
    """apt-get/apt-cache confined to ``<cache>/kernels/apt``: the host's apt is left alone."""

    def __init__(self, root: Path | None = None):
        self.root = root or cache_dir("kernels", "apt")
        self.sources = self.root / "sources.list"
        self.lists = self.root / "lists"
        self.stamp = self.lists / ".updated"
        self._updated_this_run = False

    def _options(self) -> list[str]:
        settings = {
            "Dir::Etc::sourcelist": self.sources,
            "Dir::Etc::sourceparts": "-",
            "Dir::Etc::preferences": "/dev/null",
            "Dir::Etc::preferencesparts": "-",
            "Dir::State::Lists": self.lists,
            "Dir::State::status": self.root / "status",  # empty: nothing counts as installed
            "Dir::Cache": self.root / "cache",
            "Dir::Cache::pkgcache": "pkgcache.bin",  # kept: apt-cache then answers in ms
            "Dir::Cache::srcpkgcache": "srcpkgcache.bin",
            "APT::Architecture": "amd64",
            "APT::Architectures": "amd64",
            "Acquire::Languages": "none",
            # apt would drop to _apt, who cannot write into a private cache under $HOME
            "APT::Sandbox::User": pwd.getpwuid(os.getuid()).pw_name,
        }
        return [arg for key, value in settings.items() for arg in ("-o", f"{key}={value}")]

    def _sources_text(self) -> str:
        return "".join(f"deb [signed-by={KEYRING}] {MIRROR} {suite} main\n" for suite in SUITES)

    def _run(self, argv: list[str]) -> subprocess.CompletedProcess:
        return subprocess.run([argv[0], *self._options(), *argv[1:]], capture_output=True,
                              text=True, env={**os.environ, "LC_ALL": "C"})

    def update(self, progress: Progress = print, max_age: float = LISTS_MAX_AGE) -> None:
        """``apt-get update`` of the private lists when they are older than ``max_age`` (or missing)."""
        if self._updated_this_run:
            return
        if not KEYRING.exists():
            raise LabError(f"{KEYRING} is missing, so apt cannot check the Debian archive. "
                           f"Fix: apt-get install debian-archive-keyring")
        sources = self._sources_text()
        (self.root / "status").touch()
        for sub in ("lists/partial", "cache/archives/partial"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        with file_lock(self.root / "update.lock"):
            fresh = (self.stamp.exists() and self.stamp.read_text() == digest_of([sources])
                     and time.time() - self.stamp.stat().st_mtime < max_age)
            if fresh:
                return
            atomic_write(self.sources, sources)
            progress(f"apt-get update (private lists: {', '.join(SUITES)})")
            started = time.monotonic()
            result = self._run(["apt-get", "update"])
            _check_update(result)
            atomic_write(self.stamp, digest_of([sources]))
            progress(f"apt-get update done in {time.monotonic() - started:.1f} s")
        self._updated_this_run = True

    def resolve(self, suite: str, glob: str, progress: Progress = print) -> list[LockedPackage]:
        """The newest package matching ``glob`` in ``suite``, then its exact-version dependencies."""
        prefix = re.split(r"[*?\[]", glob, maxsplit=1)[0]
        names = [n for n in self.names(prefix) if fnmatch.fnmatchcase(n, glob)]
        records = self._show(suite, names)
        if not records:
            raise LabError(f"no package matching {glob!r} in {suite} (apt lists under {self.lists}). "
                           f"Fix: check the pattern with `apt-cache pkgnames {prefix}` or the suite")
        newest = max(records, key=functools.cmp_to_key(_compare_records))
        resolved = [newest]
        # Parts of the same build are pinned with "(= version)": linux-binary-*, linux-modules-*.
        pending = _exact_dependencies(newest)
        while pending:
            name = pending.pop(0)
            if any(r["Package"] == name for r in resolved):
                continue
            found = self._show(suite, [name])
            if not found:
                progress(f"note: {name} (a dependency of {newest['Package']}) is not in {suite}; skipped")
                continue
            resolved.append(found[0])
            pending += _exact_dependencies(found[0])
        return [LockedPackage(name=r["Package"], version=r["Version"], suite=suite,
                              filename=r["Filename"], size=int(r["Size"]), sha256=r["SHA256"])
                for r in resolved]

    def names(self, prefix: str) -> list[str]:
        """Every package name in the private lists that starts with ``prefix``."""
        return self._apt_cache("pkgnames", prefix).split()

    def _show(self, suite: str, names: list[str]) -> list[dict[str, str]]:
        if not names:
            return []
        # name/suite selects that suite's version; names absent from the suite are left out
        result = self._run(["apt-cache", "show", *(f"{n}/{suite}" for n in names)])
        return [r for r in parse_deb822(result.stdout) if "Package" in r]

    def _apt_cache(self, *args: str) -> str:
        result = self._run(["apt-cache", *args])
        if result.returncode != 0:
            raise LabError(f"apt-cache {' '.join(args)} failed on the private lists: "
                           f"{result.stderr.strip()[-1000:]}. Fix: `sockredir-lab kernels lock` "
                           f"to refresh them")
        return result.stdout


def _check_update(result: subprocess.CompletedProcess) -> None:
    output = result.stdout + result.stderr
    unsigned = sorted(set(re.findall(r"debian (\S+) InRelease.*(?:NO_PUBKEY|EXPKEYSIG|not signed)",
                                     output)))
    if unsigned:
        raise LabError(f"apt cannot verify suite(s) {', '.join(unsigned)} with {KEYRING}. "
                       f"Fix: install a newer debian-archive-keyring (e.g. from bookworm-backports) "
                       f"or drop those kernels from images/kernels.toml")
    if "is expired" in output or "not valid yet" in output:
        raise LabError("a Debian Release file is expired or not valid yet (check the clock; a frozen "
                       "mirror needs Acquire::Check-Valid-Until \"false\" in /etc/apt/apt.conf.d)")
    if result.returncode != 0:
        raise LabError(f"apt-get update of the private kernel lists failed (exit {result.returncode}):\n"
                       f"{result.stderr.strip()[-1500:]}\nFix: check access to {MIRROR}")


def parse_deb822(text: str) -> list[dict[str, str]]:
    """Paragraphs of ``Key: value`` fields; continuation lines are appended to the value."""
    records, current, key = [], {}, None
    for line in text.splitlines():
        if not line.strip():
            if current:
                records.append(current)
            current, key = {}, None
        elif line[0] in " \t" and key:
            current[key] += "\n" + line.strip()
        elif ":" in line:
            key, value = line.split(":", 1)
            current[key] = value.strip()
    if current:
        records.append(current)
    return records


def _exact_dependencies(record: dict[str, str]) -> list[str]:
    names = []
    for group in record.get("Depends", "").split(","):
        for alternative in group.split("|"):
            match = re.match(r"\s*([a-z0-9][a-z0-9+.-]*)(?::\S+)?\s*\(\s*=\s*[^)]+\)", alternative)
            if match:
                names.append(match.group(1))
    return names


def _compare_records(a: dict[str, str], b: dict[str, str]) -> int:
    if a["Version"] == b["Version"]:
        return (a["Package"] > b["Package"]) - (a["Package"] < b["Package"])
    newer = subprocess.run(["dpkg", "--compare-versions", a["Version"], "gt", b["Version"]])
    return 1 if newer.returncode == 0 else -1


# --- downloads -----------------------------------------------------------------------------------

def _prepare_suite(entry: KernelEntry, lock: Mapping[str, dict], progress: Progress) -> KernelArtifacts:
    packages = locked_packages(entry, lock)
    if not packages:
        apt = PrivateApt()
        apt.update(progress)
        packages = apt.resolve(entry.suite, entry.package, progress)
        progress(f"note: kernel {entry.id} is not in the lock; resolved "
                 f"{packages[0].name} {packages[0].version}. Pin it: `sockredir-lab kernels lock "
                 f"--id {entry.id}`")
    key = _debs_key(p.sha256 for p in packages)
    warm = trees.load(entry.id, key)
    if warm:
        return warm
    debs = [_fetch_deb(p, progress) for p in packages]
    return trees.build(entry.id, key, progress, lambda root: _extract_debs(debs, root, progress))


def _fetch_deb(package: LockedPackage, progress: Progress) -> Path:
    dest = cache_dir("kernels", "debs") / Path(package.filename).name
    if dest.exists():
        if sha256_file(dest) == package.sha256:
            return dest
        progress(f"cached {dest.name} does not match its SHA-256 (truncated or corrupt); fetching again")
    _download(f"{MIRROR}/{package.filename}", dest, progress, expected_sha256=package.sha256,
              hint="the lock may pin a version the archive dropped: `sockredir-lab kernels lock`")
    return dest


def _fetch_url(url: str, locked_sha: str | None, progress: Progress,
               force: bool = False) -> tuple[Path, str]:
    """Download ``url`` into the cache (once); returns the file and its SHA-256."""
    dest = _url_cache_path(url)
    expected = locked_sha or _read_sidecar(dest)
    if not force and dest.exists() and expected:
        if sha256_file(dest) == expected:
            return dest, expected
        progress(f"cached {dest.name} does not match its SHA-256 (truncated or corrupt); fetching again")
    sha = _download(url, dest, progress, expected_sha256=None if force else locked_sha,
                    hint="the file changed since it was locked: `sockredir-lab kernels lock`")
    atomic_write(_sidecar(dest), sha)
    return dest, sha


def _url_cache_path(url: str) -> Path:
    name = Path(urllib.request.urlparse(url).path).name or "download"
    return cache_dir("kernels", "urls", digest_of([url])) / name


def _sidecar(file: Path) -> Path:
    return file.with_name(file.name + ".sha256")


def _read_sidecar(file: Path) -> str | None:
    sidecar = _sidecar(file)
    return sidecar.read_text().strip() if sidecar.exists() else None


def _download(url: str, dest: Path, progress: Progress, expected_sha256: str | None, hint: str) -> str:
    started = time.monotonic()
    digest, received = hashlib.sha256(), 0
    try:
        with urllib.request.urlopen(url, timeout=60) as response, atomic_file(dest) as tmp:
            total = int(response.headers.get("Content-Length") or 0)
            progress(f"downloading {url} ({_mb(total) if total else 'size unknown'})")
            with open(tmp, "wb") as out:
                while block := response.read(1 << 20):
                    out.write(block)
                    digest.update(block)
                    received += len(block)
            if total and received != total:
                raise LabError(f"download of {url} stopped at {received} of {total} bytes. Fix: retry")
            if expected_sha256 and digest.hexdigest() != expected_sha256:
                raise LabError(f"{url} has SHA-256 {digest.hexdigest()}, expected {expected_sha256}. "
                               f"Fix: {hint}")
    except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
        raise LabError(f"cannot download {url}: {exc}. Fix: check the URL and the network") from None
    seconds = time.monotonic() - started
    progress(f"downloaded {dest.name}: {_mb(received)} in {seconds:.1f} s "
             f"({received / max(seconds, 1e-3) / 1e6:.0f} MB/s)")
    return digest.hexdigest()


def _mb(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


# --- user-given files: .deb packages, a vmlinuz and its modules ----------------------------------

def _debs_key(sha256s) -> str:
    return digest_of(["debs", trees.TREE_FORMAT, *sorted(sha256s)])


def _files_key(files: list[tuple[Path, str]], modules: Path | None) -> str:
    """The tree key of user-given files: .deb files (one kernel in one or more packages), or one
    vmlinuz with its modules directory."""
    kinds = [kind_of(file) for file, _ in files]
    if all(kind == "deb" for kind in kinds):
        return _debs_key(sha for _, sha in files)
    if kinds == ["vmlinuz"]:
        sha = files[0][1]
        return digest_of(["vmlinuz", trees.TREE_FORMAT, sha, _dir_fingerprint(modules) if modules else ""])
    odd = next(file for (file, _), kind in zip(files, kinds) if kind != "deb" or len(files) > 1)
    raise LabError(f"{odd} is neither a .deb nor a bzImage vmlinuz (a kernel in several files is "
                   "several .deb packages). Fix: give kernel .deb files or one vmlinuz")


def _prepare_files(entry: KernelEntry, files: list[tuple[Path, str]], progress: Progress) -> KernelArtifacts:
    key = _files_key(files, entry.modules)
    if kind_of(files[0][0]) == "deb":
        debs = [file for file, _ in files]
        return trees.build(entry.id, key, progress, lambda root: _extract_debs(debs, root, progress))
    return trees.build(entry.id, key, progress,
                       lambda root: _install_vmlinuz(files[0][0], entry.modules, root, progress))


def kind_of(file: Path) -> str | None:
    with open(file, "rb") as handle:
        head = handle.read(0x206)
    if head.startswith(b"!<arch>\n"):
        return "deb"
    if head[0x202:0x206] == b"HdrS":  # x86 boot protocol header of a bzImage
        return "vmlinuz"
    return None


def _dir_fingerprint(directory: Path) -> list:
    if not directory.is_dir():
        raise LabError(f"modules directory {directory} does not exist. Fix: point `modules` at "
                       f"lib/modules/<release> of the kernel build")
    return [(str(p.relative_to(directory)), p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(directory.rglob("*")) if p.is_file()]


def _extract_debs(debs: list[Path], root: Path, progress: Progress) -> None:
    started = time.monotonic()
    total = sum(d.stat().st_size for d in debs)
    progress(f"extracting {len(debs)} package(s), {_mb(total)}")
    for deb in debs:
        trees.run_checked(["dpkg-deb", "-x", str(deb), str(root)], f"extracting {deb.name}")
    trees.merge_usr_lib(root)
    progress(f"extracted in {time.monotonic() - started:.1f} s")


def _install_vmlinuz(vmlinuz: Path, modules: Path | None, root: Path, progress: Progress) -> None:
    announced = bzimage.release(vmlinuz)
    release = modules.name if modules else announced
    if not release:
        raise LabError(f"{vmlinuz}: cannot read the kernel release from its header. "
                       f"Fix: give `modules` = its lib/modules/<release> directory")
    if announced and announced != release:
        raise LabError(f"{vmlinuz} is release {announced} but its modules directory is {modules} "
                       f"(release {release}). Fix: point `modules` at lib/modules/{announced}")
    (root / "boot").mkdir()
    shutil.copyfile(vmlinuz, root / "boot" / f"vmlinuz-{release}")
    target = root / "lib" / "modules" / release
    if modules:
        progress(f"copying modules from {modules}")
        shutil.copytree(modules, target, symlinks=True,
                        ignore=shutil.ignore_patterns("build", "source"))
    else:
        target.mkdir(parents=True)  # a kernel with everything built in: an empty modules.dep


