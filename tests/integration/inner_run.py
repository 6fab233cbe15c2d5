"""The repository's own tests run as a user runs them, in a pytest subprocess of their own (another
kernel source, another catalog), with the outcomes read back from its JUnit XML."""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
INNER_TIMEOUT = 1800


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
