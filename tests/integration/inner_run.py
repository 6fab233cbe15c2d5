"""Inner pytest runs: the repository's own tests run as a user runs them, in a pytest subprocess of
their own (another kernel source, another catalog), with the outcomes read back from its JUnit XML;
and pytester runs of a user's project, which share the lab's cache (share_lab_cache)."""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

from lab.cache import cache_root

REPO = Path(__file__).resolve().parents[2]
INNER_TIMEOUT = 1800
# Read at import, before pytester gives a test a HOME of its own: cache_root() read there would be
# an empty cache, where the inner run fetches the kernel and builds the image again (about a minute).
LAB_CACHE = cache_root()


def share_lab_cache(monkeypatch) -> None:
    """Let this test's pytester runs use the lab's cache (kernels, image, snapshots)."""
    monkeypatch.setenv("SOCKREDIR_CACHE", str(LAB_CACHE))


def run_inner(args: list[str], tmp_path: Path, env: dict[str, str] | None = None) -> tuple[dict, str]:
    """``pytest --no-host ARGS`` from the repository's top; {outcome: count} and the output."""
    junit = tmp_path / "inner.xml"
    done = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rs",
                           "--no-host", f"--junitxml={junit}", f"--artifacts={tmp_path / 'artifacts'}",
                           *args], cwd=REPO, env={**os.environ, **(env or {})},
                          capture_output=True, text=True, timeout=INNER_TIMEOUT)
    output = done.stdout + done.stderr
    assert junit.exists(), f"the inner run wrote no report (exit {done.returncode}):\n{output[-4000:]}"
    counts = {"passed": 0, "failed": 0, "error": 0, "skipped": 0}
    for case in ElementTree.parse(junit).getroot().iter("testcase"):
        kinds = {child.tag for child in case}
        outcome = ("failed" if "failure" in kinds else "error" if "error" in kinds
                   else "skipped" if "skipped" in kinds else "passed")
        counts[outcome] += 1
    return counts, output
