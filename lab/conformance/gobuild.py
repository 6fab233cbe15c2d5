"""The Go applications of the app check (scenarios/apps/goapps), built on the host once per source
and Go version into one static binary (CGO_ENABLED=0) that every guest runs as it is: the guest image
needs no Go toolchain."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from pathlib import Path

from lab import SCENARIOS_DIR, LabError
from lab.cache import atomic_file, cache_dir, digest_of

GO_SOURCE = SCENARIOS_DIR / "apps" / "goapps"
BUILD_SECONDS = 600


@functools.lru_cache(maxsize=1)
def go_version() -> str:
    go = shutil.which("go")
    if go is None:
        raise LabError("go is not installed on this host; the Go applications are built with Debian's "
                       "golang-go (scripts/debian-packages.txt): run ./scripts/install-deps")
    return subprocess.run([go, "version"], capture_output=True, text=True, check=True).stdout.strip()


def goapps_binary() -> Path:
    """The built binary in the cache (built now when its source or the Go version changed)."""
    sources = sorted(path for path in GO_SOURCE.iterdir() if path.suffix in (".go", ".mod"))
    binary = cache_dir("goapps", digest_of([go_version(), *sources])) / "goapps"
    if not binary.exists():
        with atomic_file(binary) as tmp:
            done = subprocess.run(["go", "build", "-trimpath", "-o", str(tmp), "."], cwd=GO_SOURCE,
                                  capture_output=True, text=True, timeout=BUILD_SECONDS,
                                  env={**os.environ, "CGO_ENABLED": "0", "GOFLAGS": "-mod=mod"})
            if done.returncode != 0:
                raise LabError(f"go build of {GO_SOURCE} failed:\n{done.stderr.strip()[-2000:]}")
            tmp.chmod(0o755)
    return binary
