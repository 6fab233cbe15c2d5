"""``sockredir-lab verify FILE.bpf.c|FILE.o --kernel ID [--kernel ID ...|--kernel all]``.

Builds the object once (CO-RE, on the host), then for each kernel in turn boots its guest (or uses
the host for ``--kernel host``), loads every program of the object and prints what happened:
accepted, rejected by the verifier (with its key line) or refused by libbpf before the verifier,
the instruction counts, and where the full logs are. The exit status says whether the expectation
held on every kernel: 0 yes, 1 no, 2 a kernel could not be checked (unavailable, did not boot).

The expectation is ``--expect``; else, for a corpus case (``bpf/cases/NAME.bpf.c`` with its
sidecar), the corpus's expectation for that kernel; else ``accepted``.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

from lab import LabError, api, per_kernel
from lab.bpf import corpus, verify

Run = per_kernel.KernelRun[corpus.Judgement]


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "verify", help="load a BPF object on one or more kernels and report the verifier's verdict",
        description=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("file", type=Path, metavar="FILE.bpf.c|FILE.o",
                        help="a BPF C source (built with the lab's flags) or a built object")
    parser.add_argument("--kernel", action="append", required=True, metavar="ID",
                        help="kernel id from images/kernels.toml (repeatable), `all` for every "
                             "available catalogued kernel, or `host` for this machine's kernel")
    parser.add_argument("--expect", choices=verify.OUTCOMES,
                        help="the outcome that must happen on every kernel (default: the corpus's "
                             "expectation for a corpus case, else accepted)")
    parser.add_argument("--log-dir", type=Path, metavar="DIR",
                        help="where logs go (default: ./artifacts/verify/<name>-<time>, in the working directory)")
    parser.add_argument("-D", "--define", action="append", default=[], metavar="NAME[=VALUE]",
                        help="preprocessor define for a C source (repeatable)")
    parser.add_argument("--caps", metavar="CAP,CAP",
                        help="load with only these capabilities, e.g. bpf,net_admin (default: full "
                             "root, or the corpus case's)")
    parser.add_argument("--record", action="store_true",
                        help="write the outcomes into the corpus case's sidecar ([kernels] table)")
    parser.add_argument("--json", action="store_true", help="also print the verdicts as JSON")
    parser.set_defaults(func=cmd_verify)


def cmd_verify(args) -> int:
    source = args.file.resolve()
    if not source.is_file():
        raise LabError(f"{args.file} does not exist; pass a .bpf.c source or a .o object")
    case = corpus.load_case(source)
    if args.record and case is None:
        raise LabError(f"--record writes into a corpus case's sidecar, and {source.name} has none; "
                       f"put the source in bpf/cases/ with a NAME.toml (see docs/verifier.md)")
    capabilities = _capabilities(args.caps, case)
    obj = _object(source, tuple(args.define) + (case.defines if case else ()))
    args.settings.progress = _progress
    kernel_ids = per_kernel.resolve(args.kernel, args.settings)
    # Relative to the working directory, not to the package: an installed copy has no checkout to write into.
    log_root = (args.log_dir or Path("artifacts") / "verify" / (
        f"{_stem(source)}-{time.strftime('%Y%m%d-%H%M%S')}")).resolve()
    print(f"verifying {source.name} ({obj}) on {', '.join(kernel_ids)}; logs in {log_root}")

    def work(kernel: str, target) -> corpus.Judgement:
        verdict = verify.verify_object(target, obj, capabilities)
        verify.save_logs(verdict, log_root / kernel)
        return corpus.judge(verdict, kernel, case, args.expect, target)

    runs = []
    for run in per_kernel.run_each(kernel_ids, args.settings, work, artifacts_of=lambda kernel: log_root / kernel):
        runs.append(run)
        print_run(run, log_root / run.kernel)
        if args.record and run.result is not None and not run.problem:
            _record(case, run)
    print_summary(runs)
    if args.json:
        print(json.dumps([_run_dict(r, log_root) for r in runs], indent=2))
    if any(r.problem for r in runs):
        return 2
    return 0 if all(r.result.held for r in runs) else 1


def _record(case: corpus.Case, run: Run) -> None:
    if run.kernel == api.HOST:
        print("  (not recorded: the host is not a corpus kernel)")
        return
    try:
        corpus.record(case, run.kernel, run.result.verdict)
        print(f"  recorded in {case.sidecar}")
    except corpus.CorpusError as exc:  # the outcome did not show what the case is about
        run.error = str(exc)
        print(f"  {exc}")


# ----------------------------------------------------------------------------- steps

def _capabilities(caps: str | None, case: corpus.Case | None) -> tuple[str, ...] | None:
    if caps is None:
        return case.capabilities if case else None
    names = tuple(c.strip().lower().removeprefix("cap_") for c in caps.split(",") if c.strip())
    bad = [c for c in names if not re.fullmatch(r"[a-z_]+", c)]
    if bad or not names:
        raise LabError(f"--caps {caps!r}: expected capability names like bpf,net_admin")
    return names


def _object(source: Path, defines: tuple[str, ...]) -> Path:
    if source.suffix == ".o":
        if defines:
            raise LabError("--define applies to C sources; rebuild the object yourself instead")
    return api.build(source, defines)


def _stem(source: Path) -> str:
    return source.name.removesuffix(".o").removesuffix(".c").removesuffix(".bpf")


# ----------------------------------------------------------------------------- output

def _progress(message: str) -> None:
    print(f"  [{message}]", flush=True)


def print_run(run: Run, log_dir: Path) -> None:
    if run.result is None:
        print(f"== kernel {run.kernel}: NOT CHECKED\n  {run.problem}", flush=True)
        return
    verdict, expected = run.result.verdict, run.result.expected
    print(f"== kernel {run.kernel}: {verdict.kernel_release}")
    headline = {"accepted": "ACCEPTED: every program passed the verifier",
                "rejected": f"REJECTED by the verifier: {verdict.key_line}",
                "refused": f"REFUSED by libbpf before the verifier: {verdict.key_line}"}[verdict.outcome]
    print(f"  {headline}")
    if verdict.capabilities is not None:
        print(f"  (loaded with only CAP_{', CAP_'.join(c.upper() for c in verdict.capabilities)})")
    for prog in verdict.programs:
        print("  " + format_program(prog))
    state = "held" if run.result.held else "DID NOT HOLD: " + "; ".join(run.result.problems)
    print(f"  expected {expected.outcome} ({expected.source}): {state}")
    print(f"  full log: {verify.full_log_path(verdict, log_dir)}", flush=True)


def format_program(prog: verify.ProgramVerdict) -> str:
    counts = []
    if prog.processed_insns is not None:
        counts.append(f"processed {prog.processed_insns} insns")
    if prog.verified_insns is not None:
        counts.append(f"verified_insns {prog.verified_insns}")
    if prog.stats.peak_states:
        counts.append(f"peak states {prog.stats.peak_states}")
    note = " (verified alone)" if prog.solo else ""
    reason = f"  {prog.key_line}" if prog.key_line else ""
    return f"{prog.section:10} {prog.name:20} {prog.outcome:10} {', '.join(counts) or '-'}{note}{reason}"


def print_summary(runs: list[Run]) -> None:
    print("\nkernel   outcome    expected   held  key line / insns")
    for run in runs:
        if run.result is None:
            print(f"{run.kernel:8} {'-':10} {'-':10} {'-':5} not checked: {run.problem.splitlines()[0]}")
            continue
        verdict = run.result.verdict
        detail = verdict.key_line or ", ".join(f"{p.name}={p.processed_insns}" for p in verdict.programs)
        if run.problem:
            detail += f" (but: {run.problem.splitlines()[0]})"
        print(f"{run.kernel:8} {verdict.outcome:10} {run.result.expected.outcome:10} "
              f"{'yes' if run.result.held else 'NO':5} {detail}")


def _run_dict(run: Run, log_root: Path) -> dict:
    judged = run.result
    return {"kernel": run.kernel, "error": run.problem, "held": judged.held if judged else None,
            "expected": judged.expected.__dict__ if judged else None,
            "problems": judged.problems if judged else None, "log_dir": str(log_root / run.kernel),
            "verdict": judged.verdict.as_dict() if judged else None}
