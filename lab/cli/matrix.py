"""``sockredir-lab matrix`` (the kernel matrix on this machine) and ``sockredir-lab report``
(merge test runs into one kernel x test report).

    sockredir-lab matrix [--kernel ID|host ...] [-j N] [--out DIR] [-- PYTEST_ARGS...]
    sockredir-lab report DIR_OR_XML... [--out DIR]

``matrix`` runs each kernel's tests of the working directory's pytest project in a pytest run of its
own, N at once (default: the guests that fit, ``lab.vm.capacity``), then writes the report into
DIR. ``report`` reads every JUnit XML file given or found under the directories (runs of different
kernels, days or machines, e.g. CI jobs' downloaded artifacts) and writes report.md, report.html
and report.json (``lab.matrix.report``). Both exit 1 when a cell failed or errored.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from lab import LabError, api
from lab.cli import targets
from lab.matrix import report as matrix_report
from lab.matrix import run as matrix_run
from lab.vm import capacity


def register(subparsers) -> None:
    matrix = subparsers.add_parser(
        "matrix", help="each kernel's tests in a pytest run of its own, N at once, then the report",
        description="Runs `pytest --kernel ID` for each kernel in the working directory's project, "
                    "N guests at once, with live progress, then merges the runs into report.md/html/json.")
    matrix.add_argument("--kernel", dest="kernels", action="append", metavar="ID|host",
                        help="a catalog kernel id or host (repeatable; default: every available "
                             "catalogued kernel and the host)")
    matrix.add_argument("-j", "--jobs", type=int, default=None, metavar="N",
                        help="guests at once (default: the guests that fit in this machine's CPUs "
                             "and memory); the host's run goes beside them")
    matrix.add_argument("--out", type=Path, default=None, metavar="DIR",
                        help="runs and report (default: artifacts/matrix-<time>)")
    matrix.add_argument("pytest_args", nargs="*", metavar="PYTEST_ARGS",
                        help="after `--`: passed to each pytest run (a -k is combined with the kernel's)")
    matrix.set_defaults(func=cmd_matrix)
    report = subparsers.add_parser(
        "report", help="merge JUnit XML and suite.json of any number of runs into a kernel x test report",
        description="Merges pytest JUnit XML files and the suite's suite.json files (given, or found "
                    "under the directories given) into report.md, report.html and report.json: rows "
                    "are tests (and suite scenarios), columns kernels.")
    report.add_argument("paths", nargs="+", type=Path, metavar="DIR_OR_FILE")
    report.add_argument("--out", type=Path, default=Path("."), metavar="DIR",
                        help="where the report files go (default: the working directory)")
    report.set_defaults(func=cmd_report)


def cmd_report(args) -> int:
    merged = matrix_report.collect(args.paths)
    written = matrix_report.write(merged, args.out)
    totals = merged.totals()
    print(f"{len(merged.runs)} run(s), {len(merged.kernels)} kernel column(s): "
          + ", ".join(f"{n} {status}" for status, n in totals.items()))
    for path in written.values():
        print(f"  {path}")
    return 1 if merged.failed else 0


def cmd_matrix(args) -> int:
    kernels = targets.kernel_ids(args, default=["all"])
    fits = capacity.this_machine()
    jobs = args.jobs or fits.guests
    if jobs < 1:
        raise LabError("-j must be at least 1")
    out = (args.out or Path("artifacts") / time.strftime("matrix-%Y%m%d-%H%M%S")).resolve()

    def say(message: str) -> None:
        print(f"[matrix {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    guest_cpus = fits.guest_cpus(min(jobs, sum(1 for kernel in kernels if kernel != api.HOST)))
    say(f"{len(kernels)} kernel(s): {', '.join(kernels)}; {jobs} at once "
        f"({fits.explain() if not args.jobs else 'as asked'}), {guest_cpus} vCPU(s) each "
        f"(-- --guest-cpus N to choose); runs in {out}")
    started = time.monotonic()
    runs = matrix_run.run_matrix(matrix_run.plan(kernels, out, args.pytest_args, guest_cpus), jobs, say)
    say(f"all runs ended in {time.monotonic() - started:.0f}s")
    for run in runs:
        print(f"{run.kernel:>8}: {run.state()}")
    missing = [run.kernel for run in runs if not run.junit.exists()]
    for kernel in missing:
        print(f"{kernel:>8}: its pytest run wrote no JUnit XML (see {out / kernel / 'pytest.log'})")
    merged = matrix_report.collect([out])
    written = matrix_report.write(merged, out)
    print(f"report: {written['md']}, {written['html']}, {written['json']}")
    for run in runs:
        if run.returncode == 5:
            print(f"{run.kernel:>8}: no test selected (a -k that excludes everything?)")
    return 1 if merged.failed or missing or any(run.returncode != 0 for run in runs) else 0
