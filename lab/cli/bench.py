"""``sockredir-lab bench``: measurements, printed as figures (never pass/fail thresholds).

    sockredir-lab bench boot [--kernel ID ...] [--runs N]     cold boot and snapshot restore to the
                                                              first command, side by side
    sockredir-lab bench redirect [--kernel ID|host ...] [--sizes 1,64,...] [--modes rr,stream]
                                 [--seconds S] [--repeats N] [--json FILE] [--plot DIR]
        plain TCP vs the redirect vs AF_UNIX per message size, mode and CPU placement, plus real
        peers (iperf3, sockperf, redis-benchmark) with and without the redirect
"""

from __future__ import annotations

import dataclasses
import datetime
import platform
import statistics
import tempfile
import time
from pathlib import Path

from lab import LabError, api, per_kernel
from lab.bench import transports as bench
from lab.bench import report
from lab.cache import cache_dir
from lab.cli import targets

PEER_TOOLS = ("iperf3", "sockperf", "redis")


def register(subparsers) -> None:
    parser = subparsers.add_parser("bench", help="measurements: guest boot times, the redirect against TCP")
    sub = parser.add_subparsers(dest="bench_command", required=True)

    boot = sub.add_parser("boot", help="cold boot and restore from a snapshot, seconds to the "
                                       "first command's result, per kernel (--cold-boot: cold only)")
    boot.add_argument("--kernel", dest="kernels", action="append", metavar="ID",
                      help="kernel id (repeatable; default: every available catalog kernel)")
    boot.add_argument("--runs", type=int, default=3, help="boots per kernel (default 3)")
    boot.set_defaults(func=cmd_bench_boot)

    speed = sub.add_parser(
        "redirect", help="plain TCP vs the redirect vs AF_UNIX, per message size, mode and CPU placement",
        description="Measures, on each target, plain loopback TCP, TCP through the production "
                    "redirect and AF_UNIX side by side, interleaved and repeated, and real peers "
                    "with and without the redirect. Guests under TCG give ratios, not absolute figures.")
    targets.add_kernel_option(speed)
    speed.add_argument("--sizes", default=",".join(report.format_size(s) for s in bench.DEFAULT_SIZES),
                       help="message sizes, K/M suffixes (default %(default)s)")
    speed.add_argument("--modes", default=",".join(bench.MODES), help="rr and/or stream (default %(default)s)")
    speed.add_argument("--pinning", default=",".join(bench.PINNINGS),
                       help="same-cpu and/or two-cpus (default %(default)s)")
    speed.add_argument("--seconds", type=float, default=bench.Options.seconds,
                       help="seconds per run (default %(default)s)")
    speed.add_argument("--repeats", type=int, default=bench.Options.repeats,
                       help="interleaved rounds; figures are medians over them (default %(default)s)")
    speed.add_argument("--peers", default=",".join(PEER_TOOLS),
                       help="real peers to run: iperf3, sockperf, redis, or none (default %(default)s)")
    speed.add_argument("--peer-seconds", type=float, default=bench.Options.peer_seconds,
                       help="seconds per peer measurement (default %(default)s)")
    speed.add_argument("--policy-check", action="store_true",
                       help="also measure TCP to a service port the redirect's port policy excludes, "
                            "from the redirect's cgroup (column excl/TCP: should be 1.0x)")
    speed.add_argument("--variant", choices=("production", "guarded"), default="production",
                       help="guarded: also measure the guarded variant, in its own cgroup, in the same "
                            "rounds (columns guard and guard/TCP); the production redirect is always measured")
    speed.add_argument("--no-bpf-stats", action="store_true",
                       help="skip the pass that measures the BPF programs' run time (bpf_stats)")
    speed.add_argument("--json", type=Path, metavar="FILE", help="write every figure here (rewritten after each target)")
    speed.add_argument("--plot", type=Path, metavar="DIR",
                       help="write PNG plots here: one per target, and one comparing kernels")
    speed.set_defaults(func=cmd_bench_redirect)


# ----------------------------------------------------------------------------- bench redirect

def options_from(args) -> bench.Options:
    peers = [] if args.peers.strip() == "none" else [p.strip() for p in args.peers.split(",") if p.strip()]
    unknown = [p for p in peers if p not in PEER_TOOLS]
    if unknown:
        raise LabError(f"unknown peer(s) {unknown}; choose from {', '.join(PEER_TOOLS)} or none")
    options = bench.Options(sizes=report.parse_sizes(args.sizes), modes=_words(args.modes),
                            pinnings=_words(args.pinning),
                            transports=bench.DEFAULT_TRANSPORTS + (("excluded",) if args.policy_check else ())
                            + (("guarded",) if args.variant == "guarded" else ()),
                            seconds=args.seconds, repeats=args.repeats,
                            bpf_stats=not args.no_bpf_stats, peers=peers, peer_seconds=args.peer_seconds)
    options.check()
    return options


def _words(text: str) -> list[str]:
    return [word.strip() for word in text.split(",") if word.strip()]


def new_document(options: bench.Options) -> dict:
    return {"results": [], "peers": [], "bpf_stats": {}, "errors": {},
            "meta": {"host": platform.node(), "host_kernel": platform.release(),
                     "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                     "seconds": options.seconds, "repeats": options.repeats, "accel": {},
                     "release": {}, "cpus": {}, "notes": {}}}


def cmd_bench_redirect(args) -> int:
    options = options_from(args)
    doc = new_document(options)

    def work(kernel: str, target) -> bench.TargetRun:
        return bench.bench_target(target, kernel, options, targets.progress)

    for run in per_kernel.run_each(targets.kernel_ids(args), args.settings, work,
                                   artifacts_of=targets.artifacts_of(args, "bench")):
        if run.result is not None:
            record(doc, run)
            print_target(doc, run.kernel, run.seconds)
        if run.problem:  # the rest of the run goes on; the document and the exit status say what failed
            doc["errors"][run.kernel] = run.problem
        if args.json:
            report.write_json(doc, args.json)
    if args.plot:
        write_plots(doc, args.plot)
    if args.json:
        print(f"figures: {args.json}")
    return 1 if doc["errors"] else 0


def record(doc: dict, run: per_kernel.KernelRun) -> None:
    outcome, kernel = run.result, run.kernel
    doc["results"] += outcome.results
    doc["peers"] += outcome.peers
    doc["bpf_stats"][kernel] = outcome.bpf_stats
    doc["meta"]["accel"][kernel] = run.accel
    doc["meta"]["release"][kernel] = run.release
    doc["meta"]["cpus"][kernel] = len(outcome.cpus)
    doc["meta"]["notes"][kernel] = outcome.notes


def print_target(doc: dict, kernel: str, seconds: float) -> None:
    print(report.target_table(doc, kernel))
    for line in report.summary_lines(doc, kernel):
        print(f"  {line}")
    if doc["bpf_stats"].get(kernel):
        print(report.bpf_stats_table(doc, kernel))
    if any(peer["kernel"] == kernel for peer in doc["peers"]):
        print(report.peers_table(doc, kernel))
    print(f"({kernel}: {seconds:.0f} s)\n", flush=True)


def write_plots(doc: dict, out_dir: Path) -> None:
    for kernel in dict.fromkeys(cell["kernel"] for cell in doc["results"]):
        print(f"plot: {report.plot_target(doc, kernel, out_dir)}")
    compared = report.plot_kernels(doc, out_dir)
    if compared:
        print(f"plot: {compared}")


# ----------------------------------------------------------------------------- bench boot

def cmd_bench_boot(args) -> int:
    """Per kernel: cold boots, then restores from the kernel's snapshot (saved by a cold boot
    first if there is none), each timed from entering the guest to the first command's answer."""
    if args.runs < 1:
        raise LabError("--runs must be at least 1")
    settings = args.settings
    cold_settings = dataclasses.replace(settings, cold_boot=True)
    ids = [kernel for kernel in targets.kernel_ids(args, default=["all"]) if kernel != api.HOST]  # guests boot
    image = api.guest_image(settings)
    rows: list[BootRow] = []
    for kernel_id in ids:
        kernel = api.prepare_kernel(kernel_id, settings)
        ways = [("cold", cold_settings)] if settings.cold_boot else [("cold", cold_settings),
                                                                      ("restore", settings)]
        for way, way_settings in ways:
            if way == "restore":
                _boot_once(kernel, way_settings, image, way)  # saves the snapshot if there is none yet
            for run in range(1, args.runs + 1):
                row = _boot_once(kernel, way_settings, image, way)
                rows.append(row)
                print(f"{kernel_id} {way} run {run}: {'restored' if row.restored else 'ready'} "
                      f"{row.ready:.2f}s, first command {row.first_command:.2f}s", flush=True)
    _print_summary(rows)
    return 0


@dataclasses.dataclass(frozen=True)
class BootRow:
    kernel: str
    way: str            # what was asked: cold or restore
    restored: bool      # what happened (a restore that found its snapshot unusable boots cold)
    accel: str
    ready: float        # QEMU start -> ready line (cold) or -> running again (restored)
    first_command: float


def _boot_once(kernel, settings, image, way: str) -> BootRow:
    with tempfile.TemporaryDirectory(prefix=f"bench-{kernel.id}-", dir=cache_dir("run")) as tmp:
        started = time.monotonic()
        with api.guest(kernel, settings, Path(tmp), image=image) as guest:
            guest.target.run(["true"], timeout=60, check=True)
            first_command = time.monotonic() - started
            return BootRow(kernel.id, way, guest.restored, guest.accel.name, guest.boot_seconds,
                           first_command)


def _print_summary(rows: list[BootRow]) -> None:
    print("\nseconds from entering the guest to its first command's answer (median, min, max), "
          "ready = QEMU start to the ready line, or to running again for a restore")
    print(f"{'kernel':8} {'accel':5} {'way':8} {'runs':>4} {'ready':>6} {'first command':>14} "
          f"{'min':>6} {'max':>6}")
    for kernel_id in dict.fromkeys(row.kernel for row in rows):
        for way in dict.fromkeys(row.way for row in rows if row.kernel == kernel_id):
            mine = [row for row in rows if row.kernel == kernel_id and row.way == way]
            first = [row.first_command for row in mine]
            label = way if all(row.restored == (way == "restore") for row in mine) else f"{way}*"
            print(f"{kernel_id:8} {mine[0].accel:5} {label:8} {len(mine):>4} "
                  f"{statistics.median(row.ready for row in mine):>6.2f} "
                  f"{statistics.median(first):>14.2f} {min(first):>6.2f} {max(first):>6.2f}")
    if any(row.restored != (row.way == "restore") for row in rows):
        print("* some restores booted cold: their snapshot could not be used (see the messages above)")
