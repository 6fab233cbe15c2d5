"""Real peers: programs nobody here wrote (iperf3, sockperf, redis), through the redirect and without.

The workload of ``bench redirect`` is our own program; these are what a user would run. Each
measurement is one round trip to the target, driven by ``bench/peer.sh``: start the server inside
the cgroup under test on 127.0.0.1, wait until it listens, run the client, stop the server by its
PID. Server and client are both children of that shell, so both sockets belong to the cgroup: the
plain cgroup (nothing attached, transport ``tcp``) or the one carrying the redirect (``redirect``).
The two alternate measurement by measurement, so drift of a busy machine falls on both.

Figures come from the tools' machine-readable output (iperf3 ``-J``, redis-benchmark ``--csv``);
sockperf has none, and its summary lines are matched strictly. A failure is a record with
``error`` set, never retried away: under the redirect it may be the finding.
"""

from __future__ import annotations

import csv
import io
import json
import random
import re
import shlex
from dataclasses import dataclass
from typing import Callable, Sequence

from lab import BENCH_DIR, LabError, api
from lab.vm.target import CommandTimeout, RUN_DIR, Result, Target

TOOLS = ("iperf3", "sockperf", "redis")
TRANSPORTS = ("tcp", "redirect")
SCRIPT = BENCH_DIR / "peer.sh"
SCRIPT_ON_TARGET = f"{RUN_DIR}/bench/peer.sh"

# Write sizes for iperf3: the redirect skips TCP's per-segment work but adds its own per-message
# work, so it wins at large writes and loses at small ones (host: ~2.3x at 128K, ~0.6x at 1K).
IPERF3_WRITE_SIZES = ("1K", "128K")
SOCKPERF_PINGPONG_SIZE = 64
SOCKPERF_THROUGHPUT_SIZE = 1472  # sockperf's own advice for throughput
REDIS_PIPELINE = 16
# redis-benchmark runs a request count, not a duration: requests per command = rate x seconds. On a
# 2-CPU host a run then takes about half of `seconds` (1.5-2M pipelined and 100k unpipelined
# requests/s); a TCG guest is ~10x slower (the client limit allows for it).
REDIS_PIPELINED_RATE = 400_000
REDIS_UNPIPELINED_RATE = 40_000

LISTEN_WAIT = 10       # seconds a server gets to listen (a TCG guest starts redis-server in ~1 s)
CLIENT_SLACK = 60      # seconds a client gets beyond its nominal duration before it counts as hung
STOP_MARGIN = 20       # peer.sh's own limits must fire before target.run's timeout: they stop the server
FIRST_PORTS = (20000, 29000)

# Binaries each tool needs on the target, with the Debian package that brings each.
BINARIES = {
    "iperf3": {"iperf3": "iperf3"},
    "sockperf": {"sockperf": "sockperf"},
    "redis": {"redis-server": "redis-server", "redis-benchmark": "redis-tools"},
}

Progress = Callable[[str], None]


class PeerOutputError(LabError):
    """A tool's output does not hold the figure it should."""


@dataclass(frozen=True)
class Reading:
    value: float
    bytes: int | None = None  # payload the receiver got, when the tool says (iperf3)


@dataclass(frozen=True)
class Measurement:
    """One server/client run; it yields one record per entry of ``details``."""

    tool: str
    metric: str
    unit: str
    run: str                       # what was run, in short: the same for both transports
    details: tuple[str, ...]       # per record: ``run``, or ``run: COMMAND`` for redis
    server: str                    # shell commands; peer.sh sets $PORT and $WORKDIR
    client: str
    read: Callable[[str], dict[str, Reading]]   # client stdout -> detail -> reading
    seconds: float                 # nominal client duration


# ----------------------------------------------------------------------------- parsers

def parse_iperf3_json(text: str) -> Reading:
    """Receiver's rate (bytes/s) and bytes from ``iperf3 -J``. iperf3 exits 0 even when it could
    not connect; the JSON's ``error`` says so."""
    try:
        doc = json.loads(text)
    except ValueError:
        raise PeerOutputError(f"iperf3 -J output is not JSON: {_tail(text)}") from None
    if not isinstance(doc, dict):
        raise PeerOutputError(f"iperf3 -J output is not a JSON object: {_tail(text)}")
    if doc.get("error"):
        raise PeerOutputError(f"iperf3: {doc['error']}")
    try:
        received = doc["end"]["sum_received"]
        return Reading(float(received["bits_per_second"]) / 8, int(received["bytes"]))
    except (KeyError, TypeError, ValueError):
        raise PeerOutputError(f"iperf3 -J output has no end.sum_received figures: {_tail(text)}") from None


SOCKPERF_SUMMARY = {
    # sockperf's "latency" is half the round trip; its MBps are MiB per second.
    "latency": (re.compile(r"^sockperf: Summary: Latency is (\d+(?:\.\d+)?) usec\s*$", re.M), 1.0),
    "throughput": (re.compile(r"^sockperf: Summary: BandWidth is (\d+(?:\.\d+)?) MBps \(", re.M), 2.0 ** 20),
}
SOCKPERF_ERROR = re.compile(r"^sockperf: ERROR: (.*)$", re.M)


def parse_sockperf(text: str, metric: str) -> float:
    """``latency`` in microseconds or ``throughput`` in bytes/s from sockperf's summary line.
    sockperf exits 0 even when it could not connect: its ERROR line is the reason then."""
    pattern, scale = SOCKPERF_SUMMARY[metric]
    found = pattern.findall(text)
    if len(found) != 1:
        errors = SOCKPERF_ERROR.findall(text)
        why = f"sockperf: {errors[0].strip()}" if errors else f"output ends: {_tail(text)}"
        raise PeerOutputError(f"no sockperf {metric} summary (expected one line matching "
                              f"{pattern.pattern!r}, found {len(found)}); {why}")
    return float(found[0]) * scale


def parse_redis_csv(text: str) -> dict[str, float]:
    """Requests per second by test name (``SET``, ``GET``) from ``redis-benchmark --csv``."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith('"test","rps"')), None)
    if start is None:
        raise PeerOutputError(f'redis-benchmark --csv output has no "test","rps" header: {_tail(text)}')
    rates = {}
    for row in csv.reader(io.StringIO("\n".join(lines[start + 1:]))):
        if not row:
            continue
        try:
            rates[row[0]] = float(row[1])
        except (IndexError, ValueError):
            raise PeerOutputError(f"redis-benchmark --csv row {row!r} has no requests/s figure") from None
    if not rates:
        raise PeerOutputError(f"redis-benchmark --csv output has a header but no results: {_tail(text)}")
    return rates


def _tail(text: str, lines: int = 5) -> str:
    kept = [line.strip() for line in text.strip().splitlines()[-lines:] if line.strip()]
    return " | ".join(kept)[-600:] or "(empty)"


# ----------------------------------------------------------------------------- what is measured

def _command(argv: Sequence[str], port_option: str) -> str:
    # peer.sh picks the port; the command takes it from $PORT, which must stay unquoted-expandable.
    return f'{shlex.join(argv)} {port_option} "$PORT"'


def whole_seconds(seconds: float) -> int:
    # iperf3 and sockperf truncate -t to whole seconds, and `iperf3 -t 0` would never end.
    return max(1, round(seconds))


def iperf3_measurements(seconds: float) -> list[Measurement]:
    # One direction only: `iperf3 --bidir` fails with ENOMEM under the redirect.
    seconds = whole_seconds(seconds)
    server = _command(["iperf3", "-s", "-1", "-B", "127.0.0.1"], "-p")
    result = []
    for size in IPERF3_WRITE_SIZES:
        detail = f"iperf3 -l {size} -t {seconds}"
        client = _command(["iperf3", "-c", "127.0.0.1", "-t", str(seconds), "-l", size, "-J"], "-p")
        result.append(Measurement("iperf3", "throughput", "bytes/s", detail, (detail,), server, client,
                                  lambda out, detail=detail: {detail: parse_iperf3_json(out)}, seconds))
    return result


def sockperf_measurements(seconds: float) -> list[Measurement]:
    seconds = whole_seconds(seconds)
    server = _command(["sockperf", "server", "--tcp", "-i", "127.0.0.1"], "-p")
    runs = (("sockperf-pingpong", "ping-pong", "latency", "us", SOCKPERF_PINGPONG_SIZE),
            ("sockperf-throughput", "throughput", "throughput", "bytes/s", SOCKPERF_THROUGHPUT_SIZE))
    result = []
    for tool, mode, metric, unit, size in runs:
        detail = f"sockperf {mode} --tcp -m {size} -t {seconds}"
        client = _command(["sockperf", mode, "--tcp", "-i", "127.0.0.1", "-m", str(size),
                           "-t", str(seconds)], "-p")
        result.append(Measurement(tool, metric, unit, detail, (detail,), server, client,
                                  lambda out, detail=detail, metric=metric:
                                  {detail: Reading(parse_sockperf(out, metric))}, seconds))
    return result


# No persistence: the server must not write snapshots (or leave them) during a measurement. Also the
# server of lab/conformance/apps.py's redis check.
REDIS_SERVER = _command(["redis-server", "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                         "--protected-mode", "no"], "--port") + ' --dir "$WORKDIR"'


def redis_measurements(seconds: float) -> list[Measurement]:
    server = REDIS_SERVER
    pipelined = max(1000, int(REDIS_PIPELINED_RATE * seconds))
    unpipelined = max(1000, int(REDIS_UNPIPELINED_RATE * seconds))
    runs = ((("set", "get"), ["-P", str(REDIS_PIPELINE), "-n", str(pipelined)]),
            (("get",), ["-n", str(unpipelined)]))
    result = []
    for commands, options in runs:
        tests = ",".join(commands)
        run = f"redis-benchmark -t {tests} {' '.join(options)}"
        details = {f"{run}: {command.upper()}": command.upper() for command in commands}
        client = _command(["redis-benchmark", "-h", "127.0.0.1", "-t", tests, *options, "--csv"], "-p")
        result.append(Measurement("redis-benchmark", "requests", "requests/s", run, tuple(details),
                                  server, client, lambda out, details=details: _redis_readings(out, details),
                                  seconds))
    return result


def _redis_readings(text: str, details: dict[str, str]) -> dict[str, Reading]:
    rates = parse_redis_csv(text)
    missing = [test for test in details.values() if test not in rates]
    if missing:
        raise PeerOutputError(f"redis-benchmark --csv has no row for {', '.join(missing)} "
                              f"(rows: {', '.join(rates)})")
    return {detail: Reading(rates[test]) for detail, test in details.items()}


MEASUREMENTS = {"iperf3": iperf3_measurements, "sockperf": sockperf_measurements,
                "redis": redis_measurements}


# ----------------------------------------------------------------------------- running

def run_peers(target: Target, plain_cgroup: str, redirect_cgroup: str, kernel_label: str,
              seconds: float = 2.0, tools: Sequence[str] = TOOLS, progress: Progress = print) -> list[dict]:
    """Records of every measurement of ``tools`` on ``target``, plain (``tcp``, in
    ``plain_cgroup``) and through the redirect the caller installed on ``redirect_cgroup``.

    ``seconds`` per measurement: iperf3 and sockperf run whole seconds (at least 1); redis-benchmark
    runs a request count scaled by it. A record: kernel, tool, transport (tcp | redirect), metric,
    value, unit, detail (what was run; the same for both transports), bytes (what the receiver got,
    when the tool says: iperf3) and error (one line; value None then)."""
    unknown = [tool for tool in tools if tool not in TOOLS]
    if unknown:
        raise LabError(f"unknown peer tool(s) {', '.join(unknown)}; choose from {', '.join(TOOLS)}")
    install_peer_script(target)
    cgroups = {"tcp": plain_cgroup, "redirect": redirect_cgroup}
    records = []
    for tool in tools:
        missing = missing_binary(target, tool)
        for measurement in MEASUREMENTS[tool](seconds):
            for transport in TRANSPORTS:
                if missing:
                    records += _records(kernel_label, measurement, transport, error=missing)
                    continue
                records += measure(target, measurement, transport, cgroups[transport], kernel_label,
                                   progress)
    return records


def missing_binary(target: Target, tool: str) -> str | None:
    """Why ``tool`` cannot run on ``target`` (a binary is not installed), or None."""
    return missing_package(target, BINARIES[tool])


def missing_package(target: Target, binaries: dict[str, str]) -> str | None:
    """Why one of ``binaries`` (binary -> the Debian package that brings it) is not on ``target``."""
    for binary, package in binaries.items():
        if not target.run(["command", "-v", binary]).ok:
            named = binary if binary == package else f"{binary} (Debian package {package})"
            return (f"{named} is not installed on {target.name}; add {package} to images/rootfs.toml "
                    "(guests) or scripts/debian-packages.txt (host)")
    return None


def measure(target: Target, measurement: Measurement, transport: str, cgroup: str, kernel_label: str,
            progress: Progress = print) -> list[dict]:
    """One server/client run inside ``cgroup``: its records. A failure of the tool is a record with
    its error, never raised; a lost target or an unusable cgroup raises (LabError)."""
    client_limit = int(measurement.seconds + CLIENT_SLACK)
    try:
        result = run_peer_script(target, measurement.tool, measurement.server, measurement.client,
                                 client_limit, cgroup)
        readings = _readings(measurement, result)
    except (PeerOutputError, CommandTimeout) as exc:  # a timeout here: peer.sh's own limits failed
        error = f"{measurement.run} over {transport} on {target.name}: {exc}".replace("\n", " | ")
        progress(f"peers: {error}")
        return _records(kernel_label, measurement, transport, error=error)
    for detail, reading in readings.items():
        progress(f"peers: {detail} over {transport}: {reading.value:.4g} {measurement.unit}")
    return _records(kernel_label, measurement, transport, readings=readings)


def run_peer_script(target: Target, name: str, server: str, client: str, client_limit: int,
                    cgroup: str) -> Result:
    """One bench/peer.sh run inside ``cgroup`` (copied to the target by ``install_peer_script``):
    ``server`` in the background, ``client`` within ``client_limit`` seconds. CommandTimeout only
    when peer.sh's own limits failed."""
    argv = ["sh", SCRIPT_ON_TARGET, name, str(random.randrange(*FIRST_PORTS)), str(LISTEN_WAIT),
            str(client_limit), server, client]
    return api.run_in(target, argv, cgroup=cgroup, timeout=LISTEN_WAIT + client_limit + STOP_MARGIN)


def install_peer_script(target: Target) -> None:
    target.put(SCRIPT, SCRIPT_ON_TARGET)


def _readings(measurement: Measurement, result: Result) -> dict[str, Reading]:
    """The figures of a run, or PeerOutputError with a one-line reason."""
    stderr = result.stderr.splitlines()
    ours = [line.removeprefix("peer.sh: ") for line in stderr if line.startswith("peer.sh: ")]
    if result.rc in (124, 125):  # peer.sh's own verdicts: a hung client, a server that did not listen
        raise PeerOutputError(" | ".join(ours) or f"peer.sh exit {result.rc}")
    if result.rc != 0:
        tool_says = [line.strip() for line in stderr if line.strip() and not line.startswith("peer.sh: ")]
        if tool_says:
            raise PeerOutputError(f"exit {result.rc}: {tool_says[-1]}" + "".join(f" | {o}" for o in ours))
        measurement.read(result.stdout)  # the tool's own error report (e.g. iperf3's JSON "error")
        raise PeerOutputError(f"exit {result.rc} without a message: {_tail(result.stdout)}")
    return measurement.read(result.stdout)


def _records(kernel_label: str, measurement: Measurement, transport: str,
             readings: dict[str, Reading] | None = None, error: str | None = None) -> list[dict]:
    records = []
    for detail in measurement.details:
        reading = (readings or {}).get(detail)
        records.append({
            "kernel": kernel_label, "tool": measurement.tool, "transport": transport,
            "metric": measurement.metric, "unit": measurement.unit, "detail": detail,
            "value": reading.value if reading is not None else None,
            "bytes": reading.bytes if reading is not None else None,
            "error": error,
        })
    return records
