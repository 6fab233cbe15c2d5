"""``sockredir-lab suite`` (the scenario suite on chosen kernels) and ``sockredir-lab main``.

``main`` is what the README's ``./run main`` calls: the suite on the default kernel's guest.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from lab import LabError
from lab.bpf import mutants
from lab.cli import program_options
from lab.scenario import definitions as scenario_checks
from lab.scenario import suite


def register(sub) -> None:
    parser = sub.add_parser("suite", help="run the same-host scenarios on kernels; print a kernel x scenario table")
    add_options(parser, kernels_default=[suite.DEFAULT_KERNEL])
    parser.add_argument("--scenario", action="append", default=[], metavar="NAME",
                        help=f"scenario (repeatable; a prefix like 'echo' selects echo-*); default: all of "
                             f"{', '.join(scenario_checks.SCENARIOS)}")
    parser.add_argument("--switches", type=int, metavar="N",
                        help="the switching scenario's proof size: at least N path switches, with the "
                             "bytes that takes (10000: the full proof, minutes on the host, long in a "
                             "TCG guest; default 20 in a guest, 200 on the host)")
    parser.set_defaults(func=run)
    main = sub.add_parser("main", help=f"the suite on the default kernel ({suite.DEFAULT_KERNEL}): what ./run main does")
    add_options(main, kernels_default=[suite.DEFAULT_KERNEL])
    main.set_defaults(func=run, scenario=[])


def add_options(parser, kernels_default: list[str]) -> None:
    parser.add_argument("--kernel", action="append", default=[], metavar="ID",
                        help=f"kernel id from images/kernels.toml, or 'host' (repeatable; default "
                             f"{', '.join(kernels_default)})")
    parser.add_argument("--artifacts", type=Path, default=None,
                        help="where scenario JSON, verdicts and dmesg go "
                             "(default ./artifacts/suite-<time>, in the working directory)")
    program_options.add(parser)
    parser.add_argument("--mutant", metavar="NAME",
                        help="install a deliberately broken build of the redirect (bpf/mutants/NAME.patch, "
                             "e.g. wrong_port_order) instead of the real one: the checks must fail")
    parser.set_defaults(kernels_default=kernels_default)


def run(args) -> int:
    kernels = args.kernel or args.kernels_default
    scenario_ids = scenario_checks.select(args.scenario)
    # Relative to the working directory, not to the package: an installed copy has no checkout to write into.
    artifacts = (args.artifacts or Path("artifacts") / time.strftime("suite-%Y%m%d-%H%M%S")).resolve()
    artifacts.mkdir(parents=True, exist_ok=True)

    def progress(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    args.settings.progress = progress
    mutant = mutants.by_name(args.mutant) if args.mutant else None
    if args.program and mutant:
        raise LabError("--program and --mutant exclude each other: a mutant is a broken build "
                       "of the lab's own redirect")
    program = program_options.program_of(args)
    if getattr(args, "switches", None) is not None and args.switches < 1:
        raise LabError(f"--switches {args.switches}: at least one switch")
    runs = suite.run_suite(kernels, scenario_ids, artifacts, mutant=mutant, program=program,
                           settings=args.settings, switches=getattr(args, "switches", None))
    print(suite.format_table(runs, scenario_ids))
    print(f"\nartifacts: {artifacts}")
    return 1 if any(suite.failed(run) for run in runs) else 0
