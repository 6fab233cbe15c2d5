"""The same-host scenario suite on kernels: boot each, run the scenario checks, print the table.

``run_suite`` boots a guest per kernel (or uses the host), runs the chosen scenarios of
``lab.scenario.definitions`` in one ``Env`` per kernel (the per-kernel loop, its splat scan and its error
boundary are ``lab.per_kernel``'s), and
``format_table`` prints the kernel x scenario matrix with each scenario's figures or failures.
"""

from __future__ import annotations

import json
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


# One kernel's run of the suite: per_kernel's record, its result the verdicts in scenario order.
SuiteRun = per_kernel.KernelRun[list[Verdict]]


def verdicts_of(run: SuiteRun) -> list[Verdict]:
    return run.result or []


def failed(run: SuiteRun) -> bool:
    """A kernel that could not be run to the end, a splat, or a failed scenario (a kernel that is
    not provided is not a failure: it says why it was not run)."""
    return bool(run.error or run.splats or any(v.status == "fail" for v in verdicts_of(run)))


def as_dict(run: SuiteRun) -> dict:
    """One kernel's entry of suite.json."""
    return {**run.as_dict(), "verdicts": [v.as_dict() for v in verdicts_of(run)]}


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
              program: UserProgram | None = None, switches: int | None = None) -> list[SuiteRun]:
    """Each kernel in turn; suite.json is rewritten after each, so a run cut short keeps what it
    measured."""
    settings = settings or api.Settings(progress=print)
    runs = []
    for run in _runs(kernel_ids, scenario_ids, lambda kernel: artifacts / test_id_of(kernel),
                     mutant, settings, program, switches):
        runs.append(run)
        atomic_write(artifacts / "suite.json", json.dumps([as_dict(r) for r in runs], indent=1))
    return runs


def _runs(kernel_ids, scenario_ids, artifacts_of, mutant, settings, program, switches) -> Iterator[SuiteRun]:
    def work(kernel: str, target) -> list[Verdict]:
        settings.progress(f"kernel {kernel}: {len(scenario_ids)} scenarios")
        with Env(target, artifacts=artifacts_of(kernel) / "scenarios", mutant=mutant,
                 program=program, progress=settings.progress, switches=switches) as env:
            return run_checks(env, scenario_ids, settings.progress)

    return per_kernel.run_each(kernel_ids, settings, work, artifacts_of=artifacts_of)


def status_cell(run: SuiteRun, scenario_id: str) -> str:
    if run.unavailable:
        return "n/a"
    if run.error:
        return "ERROR"
    verdict = next((v for v in verdicts_of(run) if v.scenario == scenario_id), None)
    if verdict is None:
        return "-"
    return {"pass": "pass", "fail": "FAIL", "xfail": "xfail", "gated": "gated"}[verdict.status]


def format_table(runs: list[SuiteRun], scenario_ids: list[str]) -> str:
    """The kernel x scenario matrix, then per kernel each scenario's key figures or reason."""
    width = max(len(s) for s in [*scenario_ids, "scenario"]) + 2
    header = "scenario".ljust(width) + "".join(r.kernel.ljust(8) for r in runs)
    lines = [header, "-" * len(header)]
    for scenario_id in scenario_ids:
        lines.append(scenario_id.ljust(width) + "".join(status_cell(run, scenario_id).ljust(8) for run in runs))
    for run in runs:
        lines.append("")
        title = f"kernel {run.kernel}"
        if run.release:
            title += f" ({run.release}, {run.seconds:.0f}s)"
        lines.append(title)
        if run.unavailable:
            lines.append(f"  not run: {run.unavailable}")
        if run.error:
            lines.append(f"  ERROR: {run.error}")
        for verdict in verdicts_of(run):
            detail = verdict.reason if verdict.status in ("gated", "xfail") else verdict.summary()
            lines.append(f"  {verdict.scenario.ljust(width)}{status_cell(run, verdict.scenario):<6} {detail}")
            lines += [f"  {'':{width}}      FAIL: {failure}" for failure in verdict.failures]
        lines += [f"  kernel splat in dmesg: {splat}" for splat in run.splats[:10]]
        lines += [f"  accepted splat: {line} ({why})" for line, why in run.accepted_splats[:10]]
    return "\n".join(lines)
