"""``sockredir-lab mutants``: every deliberately broken redirect against the suite's checks.

    sockredir-lab mutants [--kernel ID|host|all ...] [--mutant NAME ...] [--json FILE] [--markdown]

Per target and mutant (``bpf/mutants/*.patch``): killed (by which scenario, with the first failed
check), survived, rejected by the verifier (killed only where the mutant records that), or error.
Exit status 1 when a mutant survived or could not be judged.
"""

from __future__ import annotations

import datetime
import sys
from pathlib import Path

from lab import per_kernel
from lab.bench.report import write_json
from lab.bpf import mutants
from lab.cli import targets
from lab.scenario import mutant_runs


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "mutants", help="every deliberately broken redirect (bpf/mutants) against the suite's checks",
        description="Installs each mutant of the production redirect in place of the real one and "
                    "runs the scenarios until one fails: a mutant that passes them all is a hole in "
                    "the checks.")
    targets.add_kernel_option(parser)
    parser.add_argument("--mutant", dest="names", action="append", metavar="NAME",
                        help="only this mutant (repeatable; default every one)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="write the results here (after each target)")
    parser.add_argument("--markdown", action="store_true",
                        help="print the table in Markdown (as docs/scenarios.md shows it)")
    parser.set_defaults(func=cmd_mutants)


def cmd_mutants(args) -> int:
    chosen = [mutants.by_name(name) for name in args.names] if args.names else mutants.load_mutants()
    kernels = targets.kernel_ids(args)
    doc = {"results": [], "errors": {},
           "meta": {"started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}}
    results: list[mutant_runs.MutantResult] = []

    def progress(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    def work(kernel: str, target) -> None:
        progress(f"== {kernel}: {len(chosen)} mutants")
        controls: dict = {}
        for mutant in chosen:  # into results at once: a guest lost later keeps these
            results.append(mutant_runs.run_mutant(target, kernel, mutant, progress, controls))

    for run in per_kernel.run_each(kernels, args.settings, work, artifacts_of=targets.artifacts_of(args, "mutants")):
        if run.problem:
            doc["errors"][run.kernel] = run.problem
        doc["results"] = [r.as_dict() for r in results]
        if args.json:
            write_json(doc, args.json)
    table = mutant_runs.format_markdown if args.markdown else mutant_runs.format_table
    print(table(results, kernels))
    bad = [r for r in results if not r.killed and r.status != "n/a"]
    print(f"{len(results)} runs: {sum(r.killed for r in results)} killed, "
          f"{sum(r.status == 'survived' for r in results)} survived, "
          f"{sum(r.status == 'n/a' for r in results)} n/a, "
          f"{sum(r.status == 'error' for r in results)} errors"
          + (f"; {len(doc['errors'])} target(s) not measured" if doc["errors"] else ""))
    for r in bad:
        print(f"  {r.mutant} on {r.kernel}: {r.status}: {r.check or 'every scenario passed'}")
    return 1 if bad or doc["errors"] else 0
