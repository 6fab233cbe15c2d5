"""The bench's workload program (``bench/sockbench.c``): built once on the host, run on targets.

It is linked statically so that one binary runs unchanged on the host and in every guest (the
guest image has no compiler), and it is cached by the source and the compiler that built it.
"""

from __future__ import annotations

import functools
import subprocess
import weakref

from lab import BENCH_DIR, LabError
from lab.vm.target import RUN_DIR, Target
from lab.cache import atomic_file, cache_dir, digest_of

SOURCE = BENCH_DIR / "sockbench.c"
CC = "gcc"
CFLAGS = ("-O2", "-Wall", "-Werror", "-static")
ON_TARGET = f"{RUN_DIR}/bench/sockbench"

# target -> the binary path already copied there this session
_copied: "weakref.WeakKeyDictionary[Target, str]" = weakref.WeakKeyDictionary()


@functools.lru_cache(maxsize=1)
def compiler_version() -> str:
    try:
        out = subprocess.run([CC, "--version"], capture_output=True, text=True, check=True)
    except FileNotFoundError:
        raise LabError(f"{CC} is not installed; install it with `apt-get install gcc libc6-dev` "
                       "(scripts/install-deps does)") from None
    return out.stdout.splitlines()[0]


def build():
    """The static sockbench binary in the cache (built when the source or compiler changed)."""
    key = digest_of([compiler_version(), *CFLAGS, SOURCE])
    binary = cache_dir("bench") / f"sockbench-{key}"
    if not binary.exists():
        with atomic_file(binary) as tmp:
            proc = subprocess.run([CC, *CFLAGS, "-o", str(tmp), str(SOURCE)], capture_output=True, text=True)
            if proc.returncode != 0:
                raise LabError(f"building {SOURCE} failed:\n{proc.stderr.strip()[-2000:]}\n"
                               "a static build needs libc6-dev (glibc's libc.a)")
            tmp.chmod(0o755)
    return binary


def staged(target: Target) -> str:
    """Copy the binary to ``target`` unless this session already did; its path there."""
    binary = build()
    if _copied.get(target) != binary.name:
        target.make_dirs(ON_TARGET.rsplit("/", 1)[0])
        target.put(binary, ON_TARGET)
        target.run(["chmod", "755", ON_TARGET], check=True)
        _copied[target] = binary.name
    return ON_TARGET
