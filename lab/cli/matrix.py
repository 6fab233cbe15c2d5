"""``sockredir-lab report DIR...``: merge test runs into one kernel x test report.

    sockredir-lab report DIR_OR_XML... [--out DIR]

Reads every JUnit XML file given or found under the directories (pytest ``--junitxml``; runs of
different kernels, days or machines, e.g. CI jobs' downloaded artifacts) and writes report.md,
report.html and report.json (``lab.matrix.report``). Exit status 1 when a cell failed or errored.
"""

from __future__ import annotations

from pathlib import Path

from lab.matrix import report as matrix_report


def register(subparsers) -> None:
    report = subparsers.add_parser(
        "report", help="merge JUnit XML of any number of runs into a kernel x test report",
        description="Merges pytest JUnit XML files (given, or found under the directories given) "
                    "into report.md, report.html and report.json: rows are tests, columns kernels.")
    report.add_argument("paths", nargs="+", type=Path, metavar="DIR_OR_XML")
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
