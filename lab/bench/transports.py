"""``sockredir-lab bench redirect``: is the redirect faster than plain TCP, and how close to AF_UNIX?

On one target, for every message size, mode and CPU placement, three transports are measured by
the same program (``bench/sockbench.c``) in the same run:

    tcp        plain loopback TCP, from a cgroup with nothing attached
    redirect   loopback TCP from a cgroup where the project's loader installed the production redirect
    unix       AF_UNIX stream sockets (the physical limit the redirect can approach)
    guarded    (with ``--variant guarded``) loopback TCP from a cgroup with the guarded variant: a
               message over TCP where the peer holds its queue's worth unread (bpf/README.md)
    excluded   (with ``--policy-check``) loopback TCP from the redirect's cgroup to a service port
               the redirect's port policy excludes: what a service kept on TCP by the policy gets
               while the redirect is installed (should equal plain TCP)

Runs are interleaved (every transport of a cell back to back, the transport order rotated from
round to round) and repeated; a cell's figures are the medians over its rounds, with the spread.
The redirect's own counters must account for every byte of the redirect runs (for the guarded
variant: its redirected bytes plus the bytes its guard sent over TCP), else the figures would
describe something else and the bench fails.

CPU placement: ``same-cpu`` pins client and server to one CPU (the redirect's sender and reader
then take turns), ``two-cpus`` pins them to two different CPUs.
"""

from __future__ import annotations

import contextlib
import json
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

from lab import LabError, api
from lab.bench import workload
from lab.bpf import bpftool, keys, redirect
from lab.vm.target import Target

TRANSPORTS = ("tcp", "redirect", "unix", "excluded", "guarded")
DEFAULT_TRANSPORTS = ("tcp", "redirect", "unix")
# The server port of the `excluded` runs, which the redirect's policy excludes; below Linux's
# default ephemeral range (32768-60999), so the other runs' servers never get it by chance.
EXCLUDED_PORT = 29999
MODES = ("rr", "stream")
PINNINGS = ("same-cpu", "two-cpus")
DEFAULT_SIZES = (1, 64, 256, 1 << 10, 4 << 10, 16 << 10, 64 << 10, 256 << 10, 1 << 20)


@dataclass(frozen=True)
class Point:
    mode: str
    size: int
    pinning: str
    transport: str


@dataclass
class Options:
    sizes: Sequence[int] = DEFAULT_SIZES
    modes: Sequence[str] = MODES
    transports: Sequence[str] = DEFAULT_TRANSPORTS
    pinnings: Sequence[str] = PINNINGS
    seconds: float = 0.2
    repeats: int = 3
    bpf_stats: bool = True
    peers: Sequence[str] = ()
    peer_seconds: float = 2.0

    def check(self) -> None:
        for name, chosen, known in (("mode", self.modes, MODES), ("pinning", self.pinnings, PINNINGS),
                                    ("transport", self.transports, TRANSPORTS)):
            unknown = [item for item in chosen if item not in known]
            if unknown or not chosen:
                raise LabError(f"unknown or no {name} {unknown}; choose from {', '.join(known)}")
        if not self.sizes:
            raise LabError("no message sizes to measure")
        if not 0.01 <= self.seconds <= 60:
            raise LabError(f"--seconds {self.seconds}: use 0.01 to 60 seconds per run")
        if self.repeats < 1:
            raise LabError(f"--repeats {self.repeats}: at least one round is needed")
        if not {"tcp", "redirect"} <= set(self.transports):
            raise LabError("the bench compares against plain TCP and the redirect: keep both transports")

    def port_policy(self):
        """The redirect's policy for this bench: all, or all but the `excluded` runs' port."""
        from lab.bpf.policy import PortPolicy
        if "excluded" in self.transports:
            return PortPolicy("except", frozenset({EXCLUDED_PORT}))
        return None


@dataclass
class TargetRun:
    """What one target produced: result cells, peers, BPF program statistics."""
    kernel: str
    results: list[dict] = field(default_factory=list)
    peers: list[dict] = field(default_factory=list)
    bpf_stats: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    cpus: list[int] = field(default_factory=list)      # the CPUs the target let the bench use


# ----------------------------------------------------------------------------- the plan

def cells(options: Options, pinnings: Sequence[str]) -> list[Point]:
    return [Point(mode, size, pinning, transport) for mode in options.modes for size in options.sizes
            for pinning in pinnings for transport in options.transports]


def round_order(all_cells: list[Point], round_index: int) -> list[Point]:
    """The cells of one round: transports of a cell back to back, their order rotated per round
    so that none always runs first (a warm cache or a frequency ramp would favour it)."""
    shift = round_index % len(TRANSPORTS)
    rotated = TRANSPORTS[shift:] + TRANSPORTS[:shift]
    return sorted(all_cells, key=lambda c: (MODES.index(c.mode), c.size, c.pinning, rotated.index(c.transport)))


def plan_line(run_id: str, cell: Point, cgroup: str, cpus: tuple[int, int], seconds: float) -> str:
    wire = "unix" if cell.transport == "unix" else "tcp"
    port = EXCLUDED_PORT if cell.transport == "excluded" else 0
    client_cpu, server_cpu = (cpus[0], cpus[0]) if cell.pinning == "same-cpu" else cpus
    return f"{run_id} {cgroup} {wire} {cell.mode} {cell.size} {client_cpu} {server_cpu} {seconds} {port}"


def usable_cpus(target: Target) -> list[int]:
    """The CPUs the target lets us run on (affinity, not just the count)."""
    out = target.run(["python3", "-c", "import os; print(*sorted(os.sched_getaffinity(0)))"], check=True)
    return [int(cpu) for cpu in out.stdout.split()]


def pinnings_for(options: Options, cpus: list[int]) -> tuple[list[str], list[str]]:
    """(pinnings measured, notes on those left out)."""
    if len(cpus) >= 2:
        return list(options.pinnings), []
    kept = [p for p in options.pinnings if p != "two-cpus"]
    notes = ["two-cpus left out: the target offers one CPU"] if "two-cpus" in options.pinnings else []
    return kept, notes


# ----------------------------------------------------------------------------- running

def run_rounds(target: Target, options: Options, pinnings: list[str], cgroups_by_transport: dict[str, str],
               cpus: tuple[int, int], progress: Callable[[str], None]) -> dict[Point, list[dict]]:
    all_cells = cells(options, pinnings)
    runs: dict[Point, list[dict]] = {cell: [] for cell in all_cells}
    for round_index in range(options.repeats):
        order = round_order(all_cells, round_index)
        lines = [plan_line(f"r{round_index}c{i}", cell, cgroups_by_transport[cell.transport], cpus, options.seconds)
                 for i, cell in enumerate(order)]
        started = time.monotonic()
        outputs = run_plan(target, lines, options.seconds)
        for i, cell in enumerate(order):
            runs[cell].append(outputs.get(f"r{round_index}c{i}") or {"error": "no result printed"})
        progress(f"{target.name}: round {round_index + 1}/{options.repeats}: {len(lines)} runs in "
                 f"{time.monotonic() - started:.0f} s")
    return runs


def run_plan(target: Target, lines: list[str], seconds: float) -> dict[str, dict]:
    """sockbench's results by run id for a plan. One process runs it all: no SSH round trip or
    interpreter sits between two runs."""
    result = target.run([workload.staged(target)], input="\n".join(lines) + "\n",
                        timeout=60 + len(lines) * (seconds * 4 + 2))
    return parse_outputs(result.stdout, len(lines), target.name, result.stderr)


def parse_outputs(stdout: str, expected: int, where: str, stderr: str = "") -> dict[str, dict]:
    """sockbench's JSON lines by run id; a LabError when it died before printing them all."""
    outputs = {}
    for line in stdout.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            raise LabError(f"sockbench on {where} printed a line that is not JSON: {line[:200]!r}") from None
        outputs[record["id"]] = record
    if len(outputs) < expected:
        raise LabError(f"sockbench on {where} stopped after {len(outputs)} of {expected} runs: "
                       f"{stderr.strip()[-500:] or 'no message (killed? out of memory?)'}")
    return outputs


def summarise(cell: Point, kernel: str, runs: list[dict]) -> dict:
    good = [run for run in runs if "error" not in run]
    errors = [run["error"] for run in runs if "error" in run]

    def median(name: str) -> float | None:
        values = [run[name] for run in good if run.get(name) is not None]
        return statistics.median(values) if values else None

    rates = [run["rate"] for run in good]
    return {"kernel": kernel, "transport": cell.transport, "mode": cell.mode, "size": cell.size,
            "pinning": cell.pinning, "unit": "round trips/s" if cell.mode == "rr" else "bytes/s",
            "rate": median("rate"), "rate_min": min(rates, default=None), "rate_max": max(rates, default=None),
            "runs": len(good),
            "p50_us": median("p50_us") if cell.mode == "rr" else None,
            "p99_us": median("p99_us") if cell.mode == "rr" else None,
            "cpu_ns_per_byte": median("cpu_ns_per_byte"), "errors": errors}


def redirected_bytes(runs: dict[Point, list[dict]], transport: str = "redirect") -> int:
    """Payload bytes the runs of ``transport`` moved (both directions for rr): every one must have
    gone through its sk_msg program, and no byte of the other runs."""
    return sum(run.get("bytes", 0) for cell, cell_runs in runs.items() if cell.transport == transport
               for run in cell_runs if "error" not in run)


def check_redirect_carried(before: dict, after: dict, expected_bytes: int, where: str) -> None:
    """``before``/``after``: ``redirect status`` readings; the guarded variant's guard counters
    (bytes it sent over TCP) count as carried by its program."""
    delta = keys.counters_delta(before["counters"], after["counters"])
    guard = keys.counters_delta(before["guard"], after["guard"]) if before.get("guard") else {}
    moved, missed = delta["bytes_redirected"], delta["msgs_missed"]
    over_tcp = keys.guard_tcp_bytes(guard)
    # Exact: more would mean runs of another transport (e.g. `excluded`) went through the redirect.
    if missed or moved + over_tcp != expected_bytes:
        raise LabError(f"the {after['variant']} redirect did not carry its runs on {where}: {moved} bytes "
                       f"redirected, {over_tcp} sent over TCP by its guard, {missed} messages missed, "
                       f"{expected_bytes} bytes sent; the figures would not describe the redirect "
                       "(see `redirect status`)")


# ----------------------------------------------------------------------------- BPF program cost

def program_stats(target: Target, prog_ids: dict[str, int]) -> dict[str, dict]:
    stats = {}
    for name, prog_id in prog_ids.items():
        info = bpftool.bpftool_json(target, ["prog", "show", "id", str(prog_id)])
        stats[name] = {"run_cnt": info.get("run_cnt", 0), "run_time_ns": info.get("run_time_ns", 0)}
    return stats


def measure_bpf_stats(target: Target, options: Options, installation: redirect.Installation,
                      cgroup: str, cpus: tuple[int, int]) -> dict[str, dict]:
    """Average run time of the sockops and sk_msg programs over one redirect run per size and
    mode, with kernel.bpf_stats_enabled on only for this pass (it costs two clock reads per
    program run, which would tax the redirect's figures) and restored afterwards."""
    previous = target.run(["sysctl", "-n", "kernel.bpf_stats_enabled"], check=True).stdout.strip()
    target.run(["sysctl", "-q", "-w", "kernel.bpf_stats_enabled=1"], check=True)
    try:
        before = program_stats(target, installation.prog_ids)
        lines = [plan_line(f"s{i}", Point(mode, size, "same-cpu", "redirect"), cgroup, cpus, options.seconds)
                 for i, (mode, size) in enumerate((m, s) for m in options.modes for s in options.sizes)]
        run_plan(target, lines, options.seconds)
        after = program_stats(target, installation.prog_ids)
    finally:
        target.run(["sysctl", "-q", "-w", f"kernel.bpf_stats_enabled={previous}"])
    stats = {}
    for name in after:
        count = after[name]["run_cnt"] - before[name]["run_cnt"]
        spent = after[name]["run_time_ns"] - before[name]["run_time_ns"]
        stats[name] = {"run_cnt": count, "run_time_ns": spent, "avg_ns": spent / count if count else None}
    return stats


# ----------------------------------------------------------------------------- one target

def bench_target(target: Target, kernel: str, options: Options,
                 progress: Callable[[str], None] = print) -> TargetRun:
    options.check()
    outcome = TargetRun(kernel)
    cpus = outcome.cpus = usable_cpus(target)
    pinnings, outcome.notes = pinnings_for(options, cpus)
    pair = (cpus[0], cpus[1] if len(cpus) > 1 else cpus[0])
    with contextlib.ExitStack() as stack:
        plain = stack.enter_context(api.cgroup(target))
        installed = stack.enter_context(api.redirected_cgroup(target, port_policy=options.port_policy()))
        accelerated = installed.cgroup
        cgroups = {"tcp": plain, "redirect": accelerated, "unix": plain, "excluded": accelerated}
        if "guarded" in options.transports:
            guarded = stack.enter_context(api.redirected_cgroup(target, "guarded"))
            if guarded.variant != "guarded":
                raise LabError(f"the guarded variant is not offered on {target.name}: {guarded.fallback_reason}")
            cgroups["guarded"] = guarded.cgroup
        before = {transport: redirect.status(target, cgroups[transport])
                  for transport in ("redirect", "guarded") if transport in cgroups}
        runs = run_rounds(target, options, pinnings, cgroups, pair, progress)
        for transport, reading in before.items():
            check_redirect_carried(reading, redirect.status(target, cgroups[transport]),
                                   redirected_bytes(runs, transport), target.name)
        outcome.results = [summarise(cell, kernel, cell_runs) for cell, cell_runs in runs.items()]
        if options.bpf_stats:
            outcome.bpf_stats = measure_bpf_stats(target, options, installed, accelerated, pair)
        if options.peers:
            from lab.bench import peers
            outcome.peers = peers.run_peers(target, plain, accelerated, kernel, options.peer_seconds,
                                            options.peers, progress)
    return outcome
