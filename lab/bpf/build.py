"""Build BPF objects with clang, cached by content.

An object is built once on the host and copied to every target: the programs are CO-RE (built
against the vendored ``bpf/vmlinux.h``), so one object loads on every guest kernel. The cache key
covers everything that changes the bytes: the source, every header it includes (as listed by
``clang -M``, so libbpf-dev's headers count too), the defines, the flags and clang's version.
"""

from __future__ import annotations

import functools
import shlex
import subprocess
from pathlib import Path
from typing import Iterable

from lab import BPF_DIR, LabError
from lab.cache import atomic_file, cache_dir, digest_of

CLANG = "clang"
# -g: BTF for the maps and CO-RE relocations; __TARGET_ARCH_x86 for bpf_tracing.h users.
BASE_FLAGS = ("-O2", "-g", "-target", "bpf", "-D__TARGET_ARCH_x86")
# Debian's multiarch include dir holds asm/types.h for code that includes <linux/...> headers.
INCLUDE_DIRS = (BPF_DIR, Path("/usr/include/x86_64-linux-gnu"))


def build(source: Path, defines: Iterable[str] = ()) -> Path:
    """Compile ``source`` to a BPF object in the cache and return its path.

    ``defines`` are ``NAME`` or ``NAME=VALUE`` strings, passed as ``-D``.
    """
    source = Path(source).resolve()
    if not source.is_file():
        raise LabError(f"BPF source {source} does not exist; check the path (sources live in {BPF_DIR})")
    flags = list(BASE_FLAGS) + [f"-D{d}" for d in sorted(defines)]
    flags += [f"-I{d}" for d in INCLUDE_DIRS if d.is_dir()]
    inputs = [source, *included_files(source, flags)]
    key = digest_of([clang_version(), *flags, *inputs])
    stem = source.name.removesuffix(".c").removesuffix(".bpf")
    obj = cache_dir("bpf") / f"{stem}-{key}.bpf.o"
    if not obj.exists():
        with atomic_file(obj) as tmp:
            _run_clang([*flags, "-c", str(source), "-o", str(tmp)], source)
    return obj


def included_files(source: Path, flags: list[str]) -> list[Path]:
    """Every file ``source`` includes (``clang -M``), in a stable order."""
    out = _run_clang([*flags, "-M", str(source)], source)
    # Make syntax: "target: dep dep \\\n dep"; the first dependency is the source itself.
    deps = out.replace("\\\n", " ").split(":", 1)[1].split()
    return sorted({Path(d).resolve() for d in deps} - {source})


@functools.lru_cache(maxsize=1)
def clang_version() -> str:
    try:
        out = subprocess.run([CLANG, "--version"], capture_output=True, text=True, check=True)
    except FileNotFoundError as exc:
        raise LabError("clang is not installed; install it with `apt-get install clang llvm libbpf-dev`") from exc
    return out.stdout.splitlines()[0]


def _run_clang(args: list[str], source: Path) -> str:
    cmd = [CLANG, *args]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True)
    except FileNotFoundError as exc:
        raise LabError("clang is not installed; install it with `apt-get install clang llvm libbpf-dev`") from exc
    if proc.returncode != 0:
        raise LabError(f"clang could not compile {source}:\n{proc.stderr.strip()}\n"
                       f"command: {shlex.join(cmd)}")
    return proc.stdout
