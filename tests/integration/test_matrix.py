"""``sockredir-lab matrix`` on real kernels: the 6.1 guest and the host side by side, two pytest runs
at once, each with its own JUnit XML and artifacts, merged into one report whose cells agree with
the runs' JUnit XML. The selection is small (the smoke tests and one redirect test) so it costs
one guest boot; `sockredir-lab matrix` without arguments runs everything."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lab.matrix import junit

REPO = Path(__file__).resolve().parents[2]
SELECTION = ["tests/integration/test_smoke.py",
             "tests/integration/test_redirect.py::test_one_connection_two_entries_data_intact"]


@pytest.mark.skipif(os.geteuid() != 0, reason="the host column needs root")
def test_two_kernels_at_once_merge_into_one_report(tmp_path):
    out = tmp_path / "matrix"
    done = subprocess.run([sys.executable, "-m", "lab.cli", "matrix", "--kernel", "6.1", "--kernel",
                           "host", "-j", "2", "--out", str(out), "--", *SELECTION],
                          cwd=REPO, capture_output=True, text=True, timeout=900)
    print(done.stdout, done.stderr)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "6.1: started" in done.stderr and "host: started" in done.stderr
    doc = json.loads((out / "report.json").read_text())
    assert doc["kernels"] == ["6.1", "host"] and not doc["failed"]
    cells = {(row["module"], row["test"], kernel): cell["status"]
             for row in doc["rows"] for kernel, cell in row["cells"].items()}
    from_runs = {(o.module, o.test, o.kernel): o.status
                 for kernel in ("6.1", "host") for o in junit.parse(out / kernel / "junit.xml")}
    assert cells == from_runs
    smoke = {test for module, test, kernel in cells if module.endswith("test_smoke") and kernel == "6.1"}
    assert len(smoke) >= 4 and all(cells[("tests.integration.test_smoke", t, "6.1")] == "pass" for t in smoke)
    assert cells[("tests.integration.test_redirect", "test_one_connection_two_entries_data_intact[production]",
                  "host")] == "pass"
    # each cell links its artifacts: the guest test's dmesg is there
    row = next(r for r in doc["rows"] if r["test"] == "test_uname_matches_catalog")
    assert (Path(row["cells"]["6.1"]["artifacts"]) / "dmesg.txt").exists()
