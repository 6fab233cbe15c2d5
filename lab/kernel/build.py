"""Kernels built from source: ``sockredir-lab kernels build SRC --id ID [--config FRAGMENT] [--patch FILE...]``.

SRC is a kernel source tree (a git checkout of 5.15, 6.6, bpf-next...) or a tarball of one (Debian's
``linux-source-6.1`` ships ``linux-source-6.1.tar.xz``). The configuration is ``make defconfig``,
merged (the kernel's own ``scripts/kconfig/merge_config.sh``) with the lab's fragment
(``images/kernel-build.config``: BPF, sockmap, BTF, virtio, ext4 built in) and then the user's, and
settled with ``olddefconfig``; an option a fragment asks for that does not survive (its
dependencies are not met) is an error that names it. The build runs out of tree (``make O=``) in
a work directory per source and id, so a rebuild after a change in a checkout is incremental, and
the source tree is never written to. Patches (git-format, applied in order with ``patch -p1``) go
into a copy of the source kept per source and id (hard links to the pristine files; ``patch``
replaces the files it changes), brought back to pristine-plus-these-patches on every build, so a
second patch set recompiles only what the two sets touch. The result is an ordinary kernel tree of the cache
(``lab.kernel.trees``) keyed by (source fingerprint, merged configuration, compiler), so it boots
like any packaged kernel and is built once.

The tools a build needs (flex, bison, pahole from dwarves for BTF, libelf and OpenSSL headers) are
Debian packages of ``scripts/debian-packages.txt``; a missing one is named with its package.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tarfile
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Sequence

from lab import IMAGES_DIR, LabError
from lab.cache import atomic_dir, atomic_write, cache_dir, digest_of, file_lock, sha256_file
from lab.kernel import config as kconfig
from lab.kernel import trees
from lab.kernel.catalog import TARBALL_SUFFIXES
from lab.kernel.trees import KernelArtifacts

LAB_FRAGMENT = IMAGES_DIR / "kernel-build.config"
FORMAT = "1"  # bump when the build's steps or the installed layout change
PROGRESS_SECONDS = 30
# command -> the Debian package that provides it
TOOLS = {"make": "make", "gcc": "gcc", "flex": "flex", "bison": "bison", "bc": "bc", "perl": "perl",
         "pahole": "dwarves"}
HEADERS = {"/usr/include/libelf.h": "libelf-dev", "/usr/include/openssl/opensslv.h": "libssl-dev"}
Progress = Callable[[str], None]


@dataclass(frozen=True)
class Requested:
    option: str   # without CONFIG_
    value: str    # "y", "m", "n" or a string value
    fragment: Path


def missing_packages() -> list[str]:
    """Debian packages whose tools or headers a kernel build needs and this machine lacks."""
    missing = [package for tool, package in TOOLS.items() if not shutil.which(tool)]
    missing += [package for header, package in HEADERS.items() if not Path(header).exists()]
    return sorted(set(missing))


def build_kernel(source: Path, kernel_id: str, user_fragment: Path | None = None,
                 jobs: int | None = None, progress: Progress = print,
                 patches: Sequence[Path] = ()) -> KernelArtifacts:
    """Build ``source`` (tree or tarball) with ``patches`` for ``kernel_id``, or return the cached
    build."""
    source = Path(source).expanduser().resolve()
    patches = _patch_files(patches)
    fragments = _fragments(user_fragment)
    missing = missing_packages()
    if missing:
        raise LabError(f"building a kernel needs {', '.join(missing)}. Fix: apt-get install "
                       f"{' '.join(missing)} (scripts/install-deps installs them)")
    tree = unpacked_source(source, progress)
    work = work_dir(source, kernel_id)
    with file_lock(work / "build.lock"):
        if patches:
            tree = patched_tree(tree, work, patches, progress)
        fingerprint = source_fingerprint(source) + _patches_digest(patches)
        config_text = configure(tree, work, fragments, progress)
        key = digest_of(["kernel-build", FORMAT, fingerprint, config_text, compiler()])
        ready = trees.load(kernel_id, key)
        if ready is None:
            started = time.monotonic()
            _make(tree, work, ["bzImage", "modules"], progress, jobs or os.cpu_count() or 1, kernel_id)
            release = _make_output(tree, work, "kernelrelease")
            progress(f"kernel build {kernel_id}: {release} built in {time.monotonic() - started:.0f} s")
            ready = trees.build(kernel_id, key, progress,
                                lambda root: _install(tree, work, release, root, progress))
        atomic_write(work / "result.json", json.dumps(
            {"fingerprint": fingerprint, "fragments": _fragments_digest(fragments), "key": key,
             "release": ready.release}) + "\n")
        return _built_with(ready, patches)


def cached(source: Path, kernel_id: str, user_fragment: Path | None = None,
           patches: Sequence[Path] = ()) -> KernelArtifacts | None:
    """The last build of ``source`` for ``kernel_id`` if the source, patches and fragments are
    unchanged (read without running make)."""
    source = Path(source).expanduser().resolve()
    record_file = work_dir(source, kernel_id) / "result.json"
    if not source.exists() or not record_file.exists() or not all(Path(p).is_file() for p in patches):
        return None
    record = json.loads(record_file.read_text())
    if (record.get("fingerprint") != source_fingerprint(source) + _patches_digest(_patch_files(patches))
            or record.get("fragments") != _fragments_digest(_fragments(user_fragment))):
        return None
    ready = trees.load(kernel_id, record["key"])
    return _built_with(ready, _patch_files(patches)) if ready else None


def _built_with(artifacts: KernelArtifacts, patches: Sequence[Path]) -> KernelArtifacts:
    return replace(artifacts, patches=frozenset(patch.name for patch in patches))


def _fragments(user_fragment: Path | None) -> list[Path]:
    fragments = [LAB_FRAGMENT]
    if user_fragment is not None:
        user_fragment = Path(user_fragment).expanduser().resolve()
        if not user_fragment.is_file():
            raise LabError(f"config fragment {user_fragment} does not exist. Fix: give a file of "
                           "CONFIG_X=y lines")
        fragments.append(user_fragment)
    return fragments


def _fragments_digest(fragments: list[Path]) -> str:
    return digest_of([sha256_file(f) for f in fragments])


def work_dir(source: Path, kernel_id: str) -> Path:
    return cache_dir("kernels", "builds", digest_of([str(source), kernel_id]))


def compiler() -> str:
    cc = os.environ.get("CC", "gcc")
    found = subprocess.run([cc, "--version"], capture_output=True, text=True)
    return found.stdout.splitlines()[0] if found.returncode == 0 and found.stdout else cc


# ---- the source --------------------------------------------------------------------------------

def source_fingerprint(source: Path) -> str:
    """What identifies the source's content: a tarball's SHA-256; a git checkout's HEAD with its
    uncommitted changes; else every file's path, size and modification time."""
    if source.is_file():
        return "tarball " + sha256_file(source)
    if (source / ".git").exists():
        head = _git(source, "rev-parse", "HEAD")
        changes = _git(source, "status", "--porcelain", "--untracked-files=all")
        diff = subprocess.run(["git", "-C", str(source), "diff", "HEAD", "--binary"],
                              capture_output=True).stdout
        return "git " + digest_of([head, changes, diff])
    listing = []
    for directory, subdirs, files in os.walk(source):
        subdirs[:] = sorted(d for d in subdirs if d != ".git")
        for name in sorted(files):
            stat = os.lstat(os.path.join(directory, name))
            listing.append((os.path.relpath(os.path.join(directory, name), source), stat.st_size,
                            stat.st_mtime_ns))
    return "tree " + digest_of([listing])


def _git(source: Path, *args: str) -> str:
    done = subprocess.run(["git", "-C", str(source), *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise LabError(f"git {' '.join(args)} in {source} failed: {done.stderr.strip()}")
    return done.stdout


def unpacked_source(source: Path, progress: Progress) -> Path:
    """The source tree itself, or a tarball unpacked once into the cache."""
    if source.is_dir():
        if not ((source / "Makefile").is_file() and (source / "Kconfig").is_file()):
            raise LabError(f"{source} is not a kernel source tree (no top-level Makefile and "
                           "Kconfig). Fix: give the top directory of a kernel checkout or tarball")
        if (source / ".config").exists() or (source / "include" / "config").exists():
            raise LabError(f"{source} was configured or built in place; builds run out of tree "
                           f"(make O=...), which the kernel refuses then. Fix: `make -C {source} "
                           "mrproper`, or give a clean copy")
        return source
    if not source.is_file() or not source.name.endswith(TARBALL_SUFFIXES):
        raise LabError(f"{source} is neither a kernel source directory nor a tarball "
                       f"({', '.join(TARBALL_SUFFIXES)}). Fix: give one of those")
    unpacked = cache_dir("kernels", "sources") / sha256_file(source)[:16]
    with file_lock(unpacked.with_name(unpacked.name + ".lock")):
        if not unpacked.exists():
            started = time.monotonic()
            progress(f"unpacking {source.name}")
            with atomic_dir(unpacked) as tmp, tarfile.open(source) as archive:
                archive.extractall(tmp, filter="tar")
            progress(f"unpacked {source.name} in {time.monotonic() - started:.0f} s")
    tops = [p for p in unpacked.iterdir() if p.is_dir()]
    tree = tops[0] if len(tops) == 1 and not (unpacked / "Makefile").exists() else unpacked
    if not (tree / "Kconfig").is_file():
        raise LabError(f"{source} does not hold a kernel source tree (no Kconfig at its top).")
    return tree


# ---- patches -----------------------------------------------------------------------------------

def _patch_files(patches: Sequence[Path]) -> list[Path]:
    files = [Path(p).expanduser().resolve() for p in patches]
    for patch in files:
        if not patch.is_file():
            raise LabError(f"patch {patch} does not exist. Fix: give git-format patch files "
                           "(git format-patch), in the order they apply")
    return files


def _patches_digest(patches: Sequence[Path]) -> str:
    return (" patches " + digest_of([sha256_file(p) for p in patches])) if patches else ""


def patched_tree(pristine: Path, work: Path, patches: Sequence[Path], progress: Progress) -> Path:
    """``pristine`` with ``patches`` applied, in a copy kept in ``work``: the files the previous
    patch set changed are copied back from pristine (with a fresh time, so make rebuilds them), then
    the patches are applied in order. A patch that does not apply is an error naming the patch and
    its failed hunks, and leaves the copy pristine."""
    tree = work / "patched"
    record = work / "patched.json"
    wanted = _patches_digest(patches)
    if not tree.exists():
        progress(f"copying {pristine.name} for patching (hard links)")
        subprocess.run(["cp", "-al", str(pristine), str(tree)], check=True)
        atomic_write(record, json.dumps({"touched": []}))
    applied = json.loads(record.read_text())
    if applied.get("patches") == wanted:
        return tree  # already pristine plus exactly these patches: nothing to touch
    _restore(tree, pristine, applied["touched"])
    atomic_write(record, json.dumps({"touched": []}))
    touched: list[str] = []
    for patch in patches:
        files = _patch_targets(patch)
        done = subprocess.run(["patch", "-p1", "--forward", "--batch", "--no-backup-if-mismatch",
                               "-r", "-", "-d", str(tree), "-i", str(patch)],
                              capture_output=True, text=True)
        touched += files
        if done.returncode != 0:
            _restore(tree, pristine, touched)
            failed = [line for line in done.stdout.splitlines()
                      if any(word in line for word in ("FAILED", "can't find", "Reversed", "ignored"))]
            raise LabError(f"patch {patch.name} does not apply to {pristine.name}: "
                           f"{'; '.join(failed) or done.stdout.strip()[-500:] or done.stderr.strip()[-500:]}. "
                           "Fix: rebase the patch on this source (the earlier patches of the list applied first)")
        progress(f"applied {patch.name} ({', '.join(files)})")
    atomic_write(record, json.dumps({"touched": sorted(set(touched)), "patches": wanted}))
    return tree


def _patch_targets(patch: Path) -> list[str]:
    """The files a git-format patch changes (its ``+++ b/...`` lines)."""
    targets = re.findall(r"^\+\+\+ b/(\S+)", patch.read_text(errors="replace"), re.M)
    if not targets:
        raise LabError(f"{patch} changes no file (no '+++ b/...' line): not a git-format patch. "
                       "Fix: make it with git format-patch or git diff")
    return targets


def _restore(tree: Path, pristine: Path, files: Sequence[str]) -> None:
    for name in files:
        original, copy = pristine / name, tree / name
        copy.unlink(missing_ok=True)
        if original.exists():  # a file a patch created has no original: it just goes
            shutil.copy2(original, copy)
            os.utime(copy)  # newer than any object built from the patched version


# ---- configuration -----------------------------------------------------------------------------

def parse_fragment(fragment: Path) -> list[Requested]:
    """The options a fragment sets: ``CONFIG_X=v`` and ``# CONFIG_X is not set`` lines."""
    requested = []
    for line in fragment.read_text().splitlines():
        line = line.strip()
        match = re.match(r"CONFIG_([A-Za-z0-9_]+)=(.*)$", line)
        unset = re.match(r"# CONFIG_([A-Za-z0-9_]+) is not set$", line)
        if match:
            requested.append(Requested(match.group(1), match.group(2).strip('"'), fragment))
        elif unset:
            requested.append(Requested(unset.group(1), "n", fragment))
        elif line and not line.startswith("#"):
            raise LabError(f"{fragment}: {line!r} is not a CONFIG_X=value line. Fix the fragment")
    return requested


def unmet(requested: list[Requested], final: dict[str, str]) -> list[str]:
    """Options whose final value is not what the last fragment that names them asked for."""
    wanted: dict[str, Requested] = {}
    for item in requested:
        wanted[item.option] = item  # a later fragment (the user's) overrides the lab's
    problems = []
    for item in wanted.values():
        got = final.get(item.option, "n")
        if got != item.value:
            shown = "not set" if got == "n" else got
            problems.append(f"CONFIG_{item.option}={item.value} ({item.fragment.name}) ended up "
                            f"{shown}")
    return problems


def configure(tree: Path, work: Path, fragments: Sequence[Path], progress: Progress) -> str:
    """defconfig + the fragments + olddefconfig in ``work``; the final .config's text."""
    progress(f"configuring {tree.name}: defconfig + {', '.join(f.name for f in fragments)}")
    _run_make(tree, work, ["defconfig"])
    merge = tree / "scripts" / "kconfig" / "merge_config.sh"
    done = subprocess.run(["sh", str(merge), "-m", "-O", str(work), str(work / ".config"),
                           *map(str, fragments)], capture_output=True, text=True, cwd=work)
    if done.returncode != 0:
        raise LabError(f"merge_config.sh failed: {done.stderr.strip()[-1500:]}")
    _run_make(tree, work, ["olddefconfig"])
    text = (work / ".config").read_text()
    requested = [item for fragment in fragments for item in parse_fragment(fragment)]
    symbols = kconfig_symbols(tree)
    absent = sorted({item.option for item in requested if item.option not in symbols})
    if absent:  # e.g. DEBUG_INFO_DWARF_TOOLCHAIN_DEFAULT, which 5.15 does not have yet
        progress(f"configuring {tree.name}: not in this kernel, left out: "
                 + ", ".join(f"CONFIG_{name}" for name in absent))
    problems = unmet([item for item in requested if item.option in symbols],
                     kconfig.parse(text, "build").values)
    if problems:
        raise LabError(f"the kernel configuration of {tree} does not keep what was asked: "
                       f"{'; '.join(problems)}. Fix: enable what those options depend on "
                       f"(`make O={work} menuconfig` shows it), or drop them from your fragment")
    return text


def kconfig_symbols(tree: Path) -> set[str]:
    """Every symbol the source tree's Kconfig files define (``config X`` / ``menuconfig X``)."""
    symbols = set()
    for directory, subdirs, files in os.walk(tree):
        subdirs[:] = [d for d in subdirs if d != ".git"]
        for name in files:
            if name.startswith("Kconfig"):
                text = Path(directory, name).read_text(errors="replace")
                symbols.update(re.findall(r"^\s*(?:menu)?config\s+([A-Za-z0-9_]+)\s*$", text, re.M))
    return symbols


def _run_make(tree: Path, work: Path, targets: list[str]) -> str:
    done = subprocess.run(["make", "-C", str(tree), f"O={work}", *targets], capture_output=True,
                          text=True, env={**os.environ, "LC_ALL": "C"})
    if done.returncode != 0:
        raise LabError(f"make {' '.join(targets)} in {tree} failed (exit {done.returncode}): "
                       f"{(done.stdout + done.stderr).strip()[-2000:]}")
    return done.stdout


def _make_output(tree: Path, work: Path, target: str) -> str:
    return _run_make(tree, work, ["-s", target]).strip().splitlines()[-1]


# ---- building and installing -------------------------------------------------------------------

def _make(tree: Path, work: Path, targets: list[str], progress: Progress, jobs: int,
          kernel_id: str) -> None:
    """The long make, its output in ``work/build.log``, a progress line every half minute."""
    log = work / "build.log"
    progress(f"kernel build {kernel_id}: make -j{jobs} {' '.join(targets)} (log: {log})")
    started = time.monotonic()
    compiled = [0]
    with open(log, "w") as out:
        proc = subprocess.Popen(["make", "-C", str(tree), f"O={work}", f"-j{jobs}", *targets],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env={**os.environ, "LC_ALL": "C"})
        stop = threading.Event()

        def report() -> None:
            while not stop.wait(PROGRESS_SECONDS):
                progress(f"kernel build {kernel_id}: {compiled[0]} files compiled, "
                         f"{time.monotonic() - started:.0f} s")

        reporter = threading.Thread(target=report, daemon=True)
        reporter.start()
        try:
            for line in proc.stdout:
                out.write(line)
                if line.lstrip().startswith("CC "):
                    compiled[0] += 1
            proc.wait()
        finally:
            stop.set()
            if proc.poll() is None:  # interrupted: the make we started ends with us
                proc.kill()
                proc.wait()
    if proc.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:])
        raise LabError(f"kernel build {kernel_id} of {tree} failed (make exit {proc.returncode}) "
                       f"after {time.monotonic() - started:.0f} s:\n{tail}\nFull log: {log}")


def _install(tree: Path, work: Path, release: str, root: Path, progress: Progress) -> None:
    """The built kernel in the tree layout: boot/vmlinuz-REL, boot/config-REL, lib/modules/REL."""
    progress(f"installing {release}: modules_install")
    # depmod runs once, on the finished tree (lab.kernel.trees)
    _run_make(tree, work, ["modules_install", f"INSTALL_MOD_PATH={root}", "INSTALL_MOD_STRIP=1",
                           "DEPMOD=true"])
    modules = root / "lib" / "modules" / release
    for link in ("build", "source"):  # they point into the work directory
        (modules / link).unlink(missing_ok=True)
    (root / "boot").mkdir(exist_ok=True)
    shutil.copyfile(work / "arch" / "x86" / "boot" / "bzImage", root / "boot" / f"vmlinuz-{release}")
    shutil.copyfile(work / ".config", root / "boot" / f"config-{release}")
