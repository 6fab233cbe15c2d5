"""Outcomes from the lab's own suite runs: ``suite.json`` of ``sockredir-lab main`` / ``suite``
(``lab.scenario.suite``), so a report can put scenario verdicts beside pytest's results.

Each kernel of a suite.json gives one row per scenario (pass / fail / xfail; a gated scenario, which
the kernel cannot run, is a skip with its reason) and one ``kernel run`` row: an error when the
kernel could not be run at all, a skip when it was not provided, a failure when its dmesg had a
kernel splat. The file's modification time is the run's time (suite.json is rewritten after each
kernel), so a newer JUnit or suite run of the same cell wins.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

from lab import LabError
from lab.kernel.catalog import test_id_of
from lab.matrix.junit import Outcome

MODULE = "sockredir-lab suite"
KERNEL_ROW = "kernel run"
STATUS_OF = {"pass": "pass", "fail": "fail", "xfail": "xfail", "gated": "skip"}


def parse(path: Path) -> list[Outcome]:
    """Every verdict of one suite.json (a LabError names a file that is not one)."""
    try:
        kernels = json.loads(path.read_text())
        stamp = datetime.fromtimestamp(path.stat().st_mtime).astimezone().isoformat()
    except (OSError, ValueError) as exc:
        raise LabError(f"{path}: not a readable suite.json ({exc})") from None
    if not isinstance(kernels, list) or not all(isinstance(k, dict) and "kernel" in k for k in kernels):
        raise LabError(f"{path}: not a suite.json of sockredir-lab (a list of kernel reports)")
    outcomes = []
    for report in kernels:
        kernel = str(report["kernel"])
        scenarios = path.parent / test_id_of(kernel) / "scenarios"

        def outcome(test: str, status: str, reason: str, seconds: float, artifacts: Path) -> Outcome:
            return Outcome(module=MODULE, test=test, kernel=kernel, status=status, reason=reason,
                           seconds=seconds, artifacts=str(artifacts) if artifacts.exists() else "",
                           run=str(path), timestamp=stamp)

        status, reason = _kernel_status(report)
        outcomes.append(outcome(KERNEL_ROW, status, reason, float(report.get("seconds") or 0),
                                scenarios.parent))
        for verdict in report.get("verdicts", []):
            status = STATUS_OF.get(verdict.get("status"), "error")
            reason = ("; ".join(verdict.get("failures") or []) if status == "fail"
                      else verdict.get("reason") or "")
            outcomes.append(outcome(verdict["scenario"], status, reason,
                                    float(verdict.get("seconds") or 0), scenarios))
    return outcomes


def _kernel_status(report: dict) -> tuple[str, str]:
    if report.get("error"):
        return "error", report["error"]
    if report.get("unavailable"):
        return "skip", report["unavailable"]
    if report.get("splats"):
        return "fail", f"kernel splat in dmesg: {report['splats'][0]}"
    return "pass", ""
