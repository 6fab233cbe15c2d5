"""``sockredir-lab conformance``: which socket behaviours differ from plain TCP under the redirect.

    sockredir-lab conformance [--kernel ID|host|all ...] [--behaviour NAME ...] [--apps] [--json FILE]
    sockredir-lab conformance --compare A B [--behaviour NAME ...] [--json FILE]

Per target, every behaviour in five situations (plain, redirected, peer_outside, passthrough, verdict), compared
with plain TCP of the same kernel in the same run: pass, fail, or xfail naming the kernel defect.
With ``--apps``, also nginx, redis and a splice(2) proxy over plain TCP and through the redirect.
Exit status 1 when any cell failed (or a target could not be measured). ``--compare A B``
(kernel ids, or ``--json`` documents of one kernel each) prints the cells whose outcome differs
between A and B, with what each saw. When B is built with kernel-fixes/ patches A lacks, it also
judges the fix: exit status 1 unless each fixed defect's xfail cells became passes and no other
cell moved (bar an intermittent defect's xfail/xpass); otherwise 0 (each side's own failures are
in its table).
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Iterator

from lab import LabError, api, per_kernel
from lab.bench.report import write_json
from lab.cli import program_options, targets
from lab.conformance import apps, behaviours, compare, defects

STATUS_MARK = {"pass": "pass", "fail": "FAIL", "xfail": "xfail", "xpass": "xpass"}


def mark(cell: behaviours.Cell) -> str:
    """A cell's status as the table shows it: a strict xpass (the defect table is out of date)
    is a failure and says so."""
    return "XPASS" if cell.status == "xpass" and cell.strict else STATUS_MARK[cell.status]


def failing(record: dict) -> bool:
    return record["status"] == "fail" or (record["status"] == "xpass" and record.get("strict", False))


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "conformance", help="socket behaviours under the redirect compared with plain TCP, per kernel",
        description="Probes FIONREAD, poll/epoll, MSG_PEEK/WAITALL, timeouts, EOF and resets, splice, "
                    "sendfile, backpressure... on connections with both ends redirected and with one "
                    "end in the map, against plain TCP of the same kernel in the same run.")
    targets.add_kernel_option(parser)
    parser.add_argument("--behaviour", dest="behaviours", action="append", choices=behaviours.BEHAVIOURS,
                        metavar="NAME", help="probe only these (repeatable; default all)")
    parser.add_argument("--apps", action="store_true",
                        help="also run nginx+curl, redis-benchmark and a splice proxy with and without the redirect")
    parser.add_argument("--json", type=Path, metavar="FILE", help="write the matrix here (after each target)")
    parser.add_argument("--compare", nargs=2, metavar=("A", "B"),
                        help="the cells that differ between two kernels (ids, measured now) or two "
                             "--json documents; with --json, the differences are written there")
    parser.add_argument("--variant", choices=("production", "guarded"), default="production",
                        help="the lab's variant to judge (default production)")
    program_options.add(parser, families=False)  # the probes are IPv4
    parser.add_argument("--program-situation", choices=behaviours.PROGRAM_SITUATIONS, default="redirected",
                        help="with --program: judge it as a redirect (redirected, default) or as a "
                             "program that only watches and passes every message on (passthrough, in "
                             "place of the lab's watching program)")
    parser.set_defaults(func=cmd_conformance)


def cmd_conformance(args) -> int:
    chosen = args.behaviours or list(behaviours.BEHAVIOURS)
    if args.compare:
        return cmd_compare(args, chosen)
    program = program_options.program_of(args)
    if args.program_situation != "redirected" and not program:
        raise LabError("--program-situation says where a --program is judged; name the program")
    if program and args.apps:
        raise LabError("--apps runs the lab's own redirect; judge a --program's behaviours without it")
    if program and args.variant != "production":
        raise LabError("--variant chooses among the lab's own builds; --program judges your object instead")
    doc = {"results": [], "apps": [], "errors": {},
           "meta": {"started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                    "release": {}}}
    for run in measure(targets.kernel_ids(args), args.settings, chosen, targets.artifacts_of(args, "conformance"),
                       args.apps, program, args.variant, args.program_situation):
        if run.result is not None:
            cells, app_records = run.result
            doc["meta"]["release"][run.kernel] = run.release
            doc["results"] += [cell.as_dict() for cell in cells]
            doc["apps"] += app_records
            print(format_table(run.kernel, run.release, cells), flush=True)
            if app_records:
                print(format_apps(app_records), flush=True)
        if run.problem:
            doc["errors"][run.kernel] = run.problem
        if args.json:
            write_json(doc, args.json)
    failed = [r for r in doc["results"] + doc["apps"] if failing(r)]
    counts = {status: sum(r["status"] == status for r in doc["results"]) for status in STATUS_MARK}
    print(f"{len(doc['results'])} cells: {counts['pass']} pass, {counts['fail']} fail, {counts['xfail']} xfail, "
          f"{counts['xpass']} xpass ({sum(r.get('strict', False) for r in doc['results'])} strict: the "
          "defect table is out of date)"
          + (f"; applications: {summary(doc['apps'])}" if doc["apps"] else "")
          + (f"; {len(doc['errors'])} target(s) not measured" if doc["errors"] else ""))
    return 1 if failed or doc["errors"] else 0


def cmd_compare(args, chosen) -> int:
    if args.kernels or args.apps:
        raise LabError("--compare A B names the two sides itself; drop --kernel and --apps")
    sides = []
    artifacts_of = targets.artifacts_of(args, "conformance-compare")
    for side in args.compare:
        if Path(side).is_file():
            sides.append(compare.read_side(Path(side)))
            continue
        run = next(measure([side], args.settings, chosen, artifacts_of, False,
                           program_options.program_of(args), args.variant, args.program_situation))
        if run.problem:  # a splat on either side is no proof of anything
            raise LabError(f"--compare: {side} could not be measured: {run.problem}")
        cells, _ = run.result
        print(format_table(side, run.release, cells), flush=True)
        sides.append((side, [cell.as_dict() for cell in cells]))
    (a_name, a_cells), (b_name, b_cells) = sides
    found = compare.differences(a_cells, b_cells)
    print(compare.format_differences(a_name, b_name, found, len({(c["behaviour"], c["situation"])
                                                                 for c in a_cells + b_cells})))
    fixed = compare.fixed_between(patches_of(a_name, args.settings), patches_of(b_name, args.settings),
                                  defects.KNOWN)
    problems = compare.judge_fix(a_cells, b_cells, found, fixed) if fixed else []
    if fixed:
        print(f"{b_name} carries the fixes for {', '.join(d.name for d in fixed)}: "
              + ("; ".join(problems) if problems else "they flipped their cells and nothing else moved"))
    if args.json:
        write_json({"a": {"kernel": a_name, "results": a_cells}, "b": {"kernel": b_name, "results": b_cells},
                    "differences": [d.as_dict() for d in found], "fixed": [d.name for d in fixed],
                    "problems": problems}, args.json)
    return 1 if problems else 0


def patches_of(kernel: str, settings) -> frozenset[str]:
    """The kernel-fixes/ patch names a catalogued kernel is built with (none for others)."""
    entry = None if kernel == api.HOST else settings.catalog().find(kernel)
    return frozenset(patch.name for patch in entry.patches) if entry else frozenset()


def summary(records: list[dict]) -> str:
    results = [r for r in records if r["transport"] != "tcp"]  # each carries its app's verdict there
    return ", ".join(f"{sum(r['status'] == status for r in results)} {status}" for status in ("pass", "fail", "xfail"))


Measured = tuple[list[behaviours.Cell], list[dict]]  # the cells, the applications' records


def measure(kernels: list[str], settings, chosen, artifacts_of, with_apps: bool, program=None,
            variant: str = "production",
            program_situation: str = "redirected") -> Iterator[per_kernel.KernelRun[Measured]]:
    def work(kernel: str, target) -> Measured:
        cells = behaviours.run(target, kernel, chosen, progress=targets.progress, program=program,
                           variant=variant, program_situation=program_situation,
                           patches=target.kernel_patches)
        return cells, run_apps(target, kernel, targets.progress, target.kernel_patches) if with_apps else []

    return per_kernel.run_each(kernels, settings, work, artifacts_of=artifacts_of)


def run_apps(target, kernel: str, progress, patches: frozenset[str] = frozenset()) -> list[dict]:
    with api.cgroup(target) as plain, api.redirected_cgroup(target) as installed, \
            api.redirected_cgroup(target, "passthrough") as watching:
        return apps.run_apps(target, plain, installed.cgroup, kernel, progress=progress,
                             passthrough_cgroup=watching.cgroup, patches=patches)


def format_apps(records: list[dict]) -> str:
    lines = ["  applications (each run against the plain-TCP run):"]
    for app in apps.APPS:
        mine = [r for r in records if r["app"] == app]
        for result in mine:
            reason = result["reason"] if result["transport"] != "tcp" or result["status"] != "pass" else ""
            lines.append(f"  {app:14} {result['transport']:12} {STATUS_MARK[result['status']]:6} "
                         f"{result['seconds'] or 0:.1f}s  {reason}".rstrip())
    return "\n".join(lines) + "\n"


def format_table(kernel: str, release: str, cells: list[behaviours.Cell]) -> str:
    """Behaviour x situation, then one line per cell that is not a pass (what was seen, why)."""
    by_key = {(c.behaviour, c.situation): c for c in cells}
    measured = list(dict.fromkeys(c.behaviour for c in cells))
    width = max(len(b) for b in measured)
    header = f"  {'behaviour':{width}}  " + "  ".join(f"{s:12}" for s in behaviours.SITUATIONS)
    lines = [f"kernel {kernel} ({release})", header.rstrip()]
    for behaviour in measured:
        lines.append((f"  {behaviour:{width}}  " + "  ".join(
            f"{mark(by_key[(behaviour, s)]):12}" for s in behaviours.SITUATIONS)).rstrip())
    for cell in cells:
        if cell.status != "pass":
            lines.append(f"  {mark(cell).upper()} {cell.behaviour} [{cell.situation}]: observed {cell.observed}, "
                         f"plain TCP {cell.expected}; {cell.reason}")
    return "\n".join(lines) + "\n"
