"""The same-host scenario suite on kernels: boot each, run the scenario checks, print the table.

``run_suite`` boots a guest per kernel (or uses the host), runs the chosen scenarios of
``lab.scenario.definitions`` in one ``Env`` per kernel (the per-kernel loop, its splat scan and its error
boundary are ``lab.per_kernel``'s), and
``format_table`` prints the kernel x scenario matrix with each scenario's figures or failures.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from lab import api, per_kernel
from lab.cache import atomic_write
from lab.kernel.catalog import test_id_of
from lab.bpf.mutants import Mutant
from lab.bpf.program import UserProgram
from lab.scenario.env import Env
from lab.scenario.checks import Verdict
from lab.scenario.definitions import run_check

DEFAULT_KERNEL = api.DEFAULT_KERNEL


@dataclass
class KernelReport:
    kernel: str
    release: str = ""
    verdicts: list[Verdict] = field(default_factory=list)
    error: str | None = None          # the kernel could not be run at all
    unavailable: str | None = None    # not provided (e.g. 5.15 without a .deb)
    splats: list[str] = field(default_factory=list)
    seconds: float = 0.0
    accepted_splats: list[tuple[str, str]] = field(default_factory=list)  # (line, why it is accepted)

    @classmethod
    def of(cls, run: per_kernel.KernelRun[list[Verdict]]) -> "KernelReport":
        return cls(run.kernel, run.release, run.result or [], run.error, run.unavailable, run.splats,
                   run.seconds, run.accepted_splats)

    @property
    def failed(self) -> bool:
        return bool(self.error or self.splats or any(v.status == "fail" for v in self.verdicts))

    def as_dict(self) -> dict:
        return {"kernel": self.kernel, "release": self.release, "error": self.error,
                "unavailable": self.unavailable, "splats": self.splats,
                "accepted_splats": [{"line": line, "reason": why} for line, why in self.accepted_splats],
                "seconds": round(self.seconds, 1), "verdicts": [v.as_dict() for v in self.verdicts]}


def run_checks(env: Env, scenario_ids: list[str], progress: Callable[[str], None]) -> list[Verdict]:
    verdicts = []
    for scenario_id in scenario_ids:
        verdict = run_check(env, scenario_id)
        progress(f"  {scenario_id:<18} {verdict.status:<5} {verdict.seconds:5.1f}s  "
                 f"{verdict.reason or verdict.summary()}")
        for failure in verdict.failures:
            progress(f"      FAIL: {failure}")
        verdicts.append(verdict)
    return verdicts


def run_suite(kernel_ids: list[str], scenario_ids: list[str], artifacts: Path,
              mutant: Mutant | None = None, settings: api.Settings | None = None,
              program: UserProgram | None = None, switches: int | None = None) -> list[KernelReport]:
    """Each kernel in turn; suite.json is rewritten after each, so a run cut short keeps what it
    measured."""
    settings = settings or api.Settings(progress=print)
    reports = []
    for report in _reports(kernel_ids, scenario_ids, lambda kernel: artifacts / test_id_of(kernel),
                           mutant, settings, program, switches):
        reports.append(report)
        atomic_write(artifacts / "suite.json", json.dumps([r.as_dict() for r in reports], indent=1))
    return reports


def _reports(kernel_ids, scenario_ids, artifacts_of, mutant, settings, program, switches) -> Iterator[KernelReport]:
    def work(kernel: str, target) -> list[Verdict]:
        settings.progress(f"kernel {kernel}: {len(scenario_ids)} scenarios")
        with Env(target, artifacts=artifacts_of(kernel) / "scenarios", mutant=mutant,
                 program=program, progress=settings.progress, switches=switches) as env:
            return run_checks(env, scenario_ids, settings.progress)

    for run in per_kernel.run_each(kernel_ids, settings, work, artifacts_of=artifacts_of):
        yield KernelReport.of(run)


def status_cell(report: KernelReport, scenario_id: str) -> str:
    if report.unavailable:
        return "n/a"
    if report.error:
        return "ERROR"
    verdict = next((v for v in report.verdicts if v.scenario == scenario_id), None)
    if verdict is None:
        return "-"
    return {"pass": "pass", "fail": "FAIL", "xfail": "xfail", "gated": "gated"}[verdict.status]


def format_table(reports: list[KernelReport], scenario_ids: list[str]) -> str:
    """The kernel x scenario matrix, then per kernel each scenario's key figures or reason."""
    width = max(len(s) for s in [*scenario_ids, "scenario"]) + 2
    header = "scenario".ljust(width) + "".join(r.kernel.ljust(8) for r in reports)
    lines = [header, "-" * len(header)]
    for scenario_id in scenario_ids:
        lines.append(scenario_id.ljust(width) + "".join(status_cell(r, s).ljust(8)
                                                         for r, s in ((r, scenario_id) for r in reports)))
    for report in reports:
        lines.append("")
        title = f"kernel {report.kernel}"
        if report.release:
            title += f" ({report.release}, {report.seconds:.0f}s)"
        lines.append(title)
        if report.unavailable:
            lines.append(f"  not run: {report.unavailable}")
        if report.error:
            lines.append(f"  ERROR: {report.error}")
        for verdict in report.verdicts:
            detail = verdict.reason if verdict.status in ("gated", "xfail") else verdict.summary()
            lines.append(f"  {verdict.scenario.ljust(width)}{status_cell(report, verdict.scenario):<6} {detail}")
            lines += [f"  {'':{width}}      FAIL: {failure}" for failure in verdict.failures]
        lines += [f"  kernel splat in dmesg: {splat}" for splat in report.splats[:10]]
        lines += [f"  accepted splat: {line} ({why})" for line, why in report.accepted_splats[:10]]
    return "\n".join(lines)
