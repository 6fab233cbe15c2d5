"""The same-host scenario suite: every scenario on a target, checked with numbers, as a table.

One scenario check = one run of a program of ``scenarios/`` with two rounds in fresh network
namespaces: ``baseline`` (no redirect) and ``redirect`` (both sides in a cgroup carrying the
redirect), with tracing around the data phase. The check then asserts numbers:

- the data: every byte intact (SHA-256), EOFs seen, no error;
- the map: exactly two entries per open connection, matching the sockets' addresses, none after
  close (decoded from the map dumps the scenario took at fixed points);
- the bypass: loopback packets, Tcp OutSegs and the TCP/IP tracepoints during the redirected data
  phase are at most ``BYPASS_RATIO`` of the baseline's (plus the handshake/FIN packets a scenario
  necessarily sends), and the baseline counted enough for the comparison to mean something;
- positive evidence: the program's counters account for the bytes exactly, and the kprobe on
  ``tcp_bpf_sendmsg`` fired (where the kernel has kprobes) and never in the baseline.

``Env`` holds a target and the redirect installations the checks share; ``Env.check(id)`` runs
one scenario and returns a ``Verdict`` (pass / fail / gated with the reason, failures, figures).
pytest (tests/integration/test_scenarios.py) and ``sockredir-lab suite`` both use it, so both
judge the same way. ``run_suite`` boots guests and prints the kernel x scenario table.
"""

from __future__ import annotations

import contextlib
import json
import random
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from lab import LabError, cgroups, keys, redirect, trace
from lab import bpf as bpf_build
from lab.scenario import plain, run_scenario
from lab.target import Target

BYPASS_RATIO = 0.01   # redirected count <= 1% of the baseline's (+ protocol packets, see below)
MIN_BASELINE = 50     # a baseline below this cannot show a 1% ratio: the data size is too small
# Packets TCP itself must still send for each connection under the redirect: the handshake
# (SYN, SYN-ACK, ACK) and the teardown (FIN, ACK each way). Only the payload is redirected.
HANDSHAKE_PACKETS, TEARDOWN_PACKETS = 3, 4
BROKEN_DEFINE = "SOCKREDIR_TEST_WRONG_PORT_ORDER"
MiB = 1 << 20


# ----------------------------------------------------------------------------- sizes

@dataclass(frozen=True)
class Scale:
    """Data sizes: modest in TCG guests (slow), larger on the host."""

    bulk_bytes: int
    echo_trips: int
    small_writes: int
    sendfile_bytes: int
    conns: int
    churn_conns: int
    halfclose_bytes: int
    netns_bytes: int
    datagrams: int
    slow_cap: int
    timeout: int


GUEST_SCALE = Scale(bulk_bytes=4 * MiB, echo_trips=200, small_writes=1000, sendfile_bytes=4 * MiB,
                    conns=500, churn_conns=500, halfclose_bytes=2 * MiB, netns_bytes=2 * MiB,
                    datagrams=200, slow_cap=64 * MiB, timeout=150)
HOST_SCALE = Scale(bulk_bytes=32 * MiB, echo_trips=5000, small_writes=4000, sendfile_bytes=32 * MiB,
                   conns=1000, churn_conns=3000, halfclose_bytes=8 * MiB, netns_bytes=8 * MiB,
                   datagrams=1000, slow_cap=256 * MiB, timeout=90)


# ----------------------------------------------------------------------------- verdicts

class Stop(Exception):
    """Ends a check early (the scenario failed to run); the verdict already says why."""


@dataclass
class Verdict:
    scenario: str
    status: str = "pass"              # pass | warn | fail | gated
    reason: str | None = None         # why gated
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    figures: dict[str, object] = field(default_factory=dict)
    seconds: float = 0.0

    def expect(self, ok: bool, message: str) -> bool:
        if not ok:
            self.failures.append(message)
            self.status = "fail"
        return ok

    def warn(self, message: str) -> None:
        """Something an application would notice that did not break the data (see docs)."""
        self.warnings.append(message)
        if self.status == "pass":
            self.status = "warn"

    def equal(self, what: str, got, want) -> bool:
        return self.expect(got == want, f"{what}: got {got}, expected {want}")

    def figure(self, name: str, value) -> None:
        self.figures[name] = value

    def note(self, text: str) -> None:
        self.notes.append(text)

    def summary(self) -> str:
        return ", ".join(f"{k} {v}" for k, v in self.figures.items())

    def as_dict(self) -> dict:
        return {"scenario": self.scenario, "status": self.status, "reason": self.reason,
                "failures": self.failures, "warnings": self.warnings, "notes": self.notes,
                "figures": self.figures,
                "seconds": round(self.seconds, 1)}


# ----------------------------------------------------------------------------- views of a result

class RoundView:
    """One round of a scenario result, with the map snapshots decoded."""

    def __init__(self, name: str, data: dict):
        self.name, self.data = name, data

    @property
    def results(self) -> dict:
        return self.data.get("results", {})

    @property
    def sockets(self) -> dict:
        return self.data.get("sockets", {})

    def phase(self, label: str = "data") -> dict:
        return self.data["phases"][label]

    def entries(self, label: str) -> list[dict]:
        return keys.decode_sockhash_dump(self.data["snapshots"][label]["sockhash"])

    def counters(self, label: str) -> dict[str, int]:
        return keys.decode_counters(self.data["snapshots"][label]["counters"])

    def counters_delta(self, first: str = "start", last: str = "closed") -> dict[str, int]:
        before, after = self.counters(first), self.counters(last)
        return {name: after[name] - before[name] for name in after}


def socket_tuple(description: dict) -> tuple:
    return (plain(description["sockname"]), plain(description["peername"]))


def entry_tuples(entries: list[dict]) -> set:
    return {(tuple(e["local"]), tuple(e["remote"])) for e in entries}


# ----------------------------------------------------------------------------- installations

@dataclass
class Installed:
    cgroup: str
    installation: redirect.Installation
    map_pin: str
    counters_pin: str | None
    removed: bool = False


def install_build(target: Target, cgroup: str, variant: str, max_entries: int | None,
                  extra_defines: tuple[str, ...]) -> redirect.Installation:
    """Like redirect.install, plus extra -D defines (the test-only broken build)."""
    if not extra_defines:
        return redirect.install(target, cgroup, variant, max_entries)
    spec = redirect.SOURCES[variant]
    defines = list(spec.defines) + list(extra_defines)
    if max_entries is not None:
        defines.append(f"SOCKREDIR_MAX_ENTRIES={max_entries}")
    obj = bpf_build.build(spec.source, defines)
    pin_dir = redirect.new_pin_dir(target, cgroup)
    try:
        programs = redirect.load(target, obj, pin_dir)
        maps = redirect.attach(target, cgroup, pin_dir, programs)
    except BaseException:
        redirect.uninstall(target, cgroup)
        raise
    return redirect.Installation(cgroup, variant, variant, pin_dir, programs, maps, None, max_entries)


class Env:
    """A target, its trace support, data sizes and the redirect installations the checks share.

    Installations are made on first use, each on a fresh cgroup, and removed by ``close``.
    ``broken=True`` builds every production/netns installation with the test-only define that
    breaks the key's byte order: the checks must then fail.
    """

    def __init__(self, target: Target, scale: Scale | None = None, artifacts: Path | None = None,
                 broken: bool = False, progress: Callable[[str], None] = lambda message: None):
        self.target = target
        self.scale = scale or (HOST_SCALE if target.name == "host" else GUEST_SCALE)
        self.artifacts = artifacts
        self.broken = broken
        self.progress = progress
        self._installed: dict[tuple, Installed] = {}
        self._stack = contextlib.ExitStack()
        self._tracing: trace.Session | None = None
        # One loopback name prefix and one server port for every run: the trace filters select
        # them. Each round has its own network namespace, so reusing the port is safe.
        self.tag = trace.new_tag()
        self.port = random.randrange(20000, 30000)

    def __enter__(self) -> "Env":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._installed.clear()
        self._stack.close()

    @property
    def trace(self) -> trace.Support:
        return trace.support(self.target)

    @property
    def tracing(self) -> trace.Session:
        if self._tracing is None:
            self._tracing = self._stack.enter_context(trace.Session(self.target, self.tag, self.port))
        return self._tracing

    def installed(self, variant: str = "production", max_entries: int | None = None,
                  shared: bool = True) -> Installed:
        key = (variant, max_entries)
        if shared and key in self._installed and not self._installed[key].removed:
            return self._installed[key]
        cgroup = self._stack.enter_context(cgroups.dedicated(self.target))
        self._stack.callback(redirect.uninstall, self.target, cgroup)  # runs before the rmdir
        extra = (BROKEN_DEFINE,) if self.broken and variant != "seed" else ()
        installation = install_build(self.target, cgroup, variant, max_entries, extra)
        maps = redirect.pinned_maps(self.target, installation.pin_dir)
        pins = {info["type"]: f"{installation.pin_dir}/maps/{name}" for name, info in maps.items()}
        done = Installed(cgroup, installation, pins["sockhash"], pins.get("percpu_array"))
        if shared:
            self._installed[key] = done
        return done

    def run(self, label: str, program: str, args: list, installed: Installed | None,
            rounds: tuple[str, ...] = ("baseline", "redirect"), **options) -> dict:
        """Run a scenario program with tracing; save its JSON as an artifact; fail on errors."""
        started = time.monotonic()
        result = run_scenario(
            self.target, program, [str(a) for a in args], installed.cgroup if installed else None,
            rounds=rounds, map_pin=installed.map_pin if installed else None,
            counters_pin=installed.counters_pin if installed else None, tag=self.tag, port=self.port,
            trace=self.tracing, timeout=self.scale.timeout, **options)
        result["lab_seconds"] = round(time.monotonic() - started, 3)
        if self.artifacts is not None:
            self.artifacts.mkdir(parents=True, exist_ok=True)
            (self.artifacts / f"{label}.json").write_text(json.dumps(result, indent=1))
        return result

    def check(self, scenario_id: str) -> Verdict:
        scenario = SCENARIOS[scenario_id]
        verdict = Verdict(scenario_id)
        reason = scenario.gate(self) if scenario.gate else None
        reason = reason or redirect.sockmap_missing(self.target)
        if reason:
            verdict.status, verdict.reason = "gated", reason
            return verdict
        started = time.monotonic()
        try:
            scenario.check(self, verdict)
        except Stop:
            pass
        except LabError as exc:
            verdict.expect(False, f"the lab could not run it: {exc}")
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            # A result without the expected shape: a bug in a scenario or a check. Keep going so
            # the other scenarios still run and the table still prints.
            verdict.expect(False, f"internal error judging the result: {type(exc).__name__}: {exc} "
                                  f"(see {self.artifacts or 'the scenario JSON'})")
        verdict.seconds = time.monotonic() - started
        if self.artifacts is not None:
            (self.artifacts / f"{scenario_id}.verdict.json").write_text(json.dumps(verdict.as_dict(), indent=1))
        return verdict


def rounds_of(verdict: Verdict, result: dict) -> dict[str, RoundView]:
    """The rounds of a result; a scenario error ends the check with that error as the failure."""
    views = {name: RoundView(name, data) for name, data in result["rounds"].items()}
    if result.get("error"):
        verdict.expect(False, f"scenario error: {result['error'][:1000]}")
        raise Stop()
    for view in views.values():
        eagain = sum(report.get("eagain", 0) for report in view.results.values() if isinstance(report, dict))
        if eagain:
            verdict.warn(f"{view.name}: blocking recv()/send() failed with EAGAIN {eagain} times "
                         "(retried; an application would have seen an error)")
            verdict.figure(f"{view.name} spurious EAGAIN", eagain)
    return views


# ----------------------------------------------------------------------------- reusable checks

def check_transfer(v: Verdict, label: str, sender: str, a: dict, receiver: str, b: dict, nbytes: int) -> None:
    """a's bytes arrived at b, all of them, unchanged."""
    v.expect(a.get("error") is None, f"{label}: {sender} error {a.get('error')}")
    v.equal(f"{label}: bytes {sender} sent", a["sent"], nbytes)
    v.equal(f"{label}: bytes {receiver} received from {sender}", b["received"], nbytes)
    v.expect(a["sent_sha256"] == b["received_sha256"],
             f"{label}: what {receiver} received differs from what {sender} sent (SHA-256)")


def check_both_ways(v: Verdict, view: RoundView, nbytes: int, a: str = "client", b: str = "server") -> None:
    results = view.results
    check_transfer(v, view.name, a, results[a], b, results[b], nbytes)
    check_transfer(v, view.name, b, results[b], a, results[a], nbytes)


def check_entries(v: Verdict, view: RoundView, label: str, sockets: list[dict]) -> list[dict]:
    """The map holds exactly one entry per given socket, keyed by that socket's addresses."""
    entries = view.entries(label)
    wanted = {socket_tuple(s) for s in sockets}
    v.equal(f"map entries {label}", len(entries), len(wanted))
    got = entry_tuples(entries)
    v.expect(got == wanted, f"map keys {label} do not match the sockets: missing "
                            f"{sorted(wanted - got)[:4]}, unexpected {sorted(got - wanted)[:4]}")
    return entries


def check_no_entries(v: Verdict, view: RoundView, label: str = "closed") -> None:
    entries = view.entries(label)
    v.expect(not entries, f"{len(entries)} map entries left {label}: {entries[:4]}")


def check_counters(v: Verdict, delta: dict[str, int], **expected: int) -> None:
    for name, want in expected.items():
        v.equal(f"program counter {name}", delta[name], want)


def bypass_pairs(env: Env, base: dict, red: dict) -> list[tuple[str, int, int, bool]]:
    """(name, baseline, redirected, is a packet count) of the data phase."""
    pairs = [("lo packets", base["counters"]["lo_tx_packets"], red["counters"]["lo_tx_packets"], True),
             ("Tcp OutSegs", base["counters"]["tcp_out_segs"], red["counters"]["tcp_out_segs"], True)]
    for event in trace.BYPASS_EVENTS:
        if event in env.trace.events:
            pairs.append((event, base["trace"][event], red["trace"][event], event != "tcp/tcp_sendmsg_locked"))
    return pairs


def check_bypass(v: Verdict, env: Env, base_view: RoundView, red_view: RoundView,
                 protocol_packets: int = 0, label: str = "data") -> None:
    """The redirected data phase cost the TCP/IP stack at most BYPASS_RATIO of the baseline.

    ``protocol_packets``: packets TCP must still send in the phase (handshakes, FINs).
    """
    base, red = base_view.phase(label), red_view.phase(label)
    for name, before, after, is_packets in bypass_pairs(env, base, red):
        allowed = BYPASS_RATIO * before + (protocol_packets if is_packets else 0)
        primary = name in ("lo packets", "Tcp OutSegs")
        if before < MIN_BASELINE:
            message = (f"{name}: the baseline counted only {before} (< {MIN_BASELINE}) in the data "
                       f"phase, too few to show a {BYPASS_RATIO:.0%} ratio")
            if primary:
                v.expect(False, message + "; raise the data size")
            else:
                v.note(message + "; not compared")
            continue
        v.expect(after <= allowed,
                 f"{name} in the data phase: {after} with the redirect, more than {allowed:.1f} "
                 f"({BYPASS_RATIO:.0%} of the baseline's {before}"
                 f"{f' + {protocol_packets} handshake/FIN packets' if is_packets and protocol_packets else ''})"
                 f": the payload went through the TCP/IP stack")
    lo = base["counters"]["lo_tx_packets"], red["counters"]["lo_tx_packets"]
    v.figure("lo pkts", f"{lo[1]}/{lo[0]}")
    for event in ("net/net_dev_xmit", "tcp/tcp_probe", "tcp/tcp_sendmsg_locked"):
        if event in env.trace.events:
            v.figure(event.split("/")[1], f"{red['trace'][event]}/{base['trace'][event]}")


def check_kprobe(v: Verdict, env: Env, base_view: RoundView, red_view: RoundView, at_least: int,
                 label: str = "data", required: bool = True) -> None:
    """The kprobe on tcp_bpf_sendmsg: silent without the redirect, firing with it."""
    if not env.trace.kprobe:
        v.note(f"kprobe {trace.KPROBE_FUNCTION} not traced: {env.trace.missing.get(trace.KPROBE_EVENT)}")
        v.figure("kprobe", "n/a")
        return
    before = base_view.phase(label)["trace"][trace.KPROBE_EVENT]
    after = red_view.phase(label)["trace"][trace.KPROBE_EVENT]
    v.figure("kprobe", after)
    v.equal(f"kprobe {trace.KPROBE_FUNCTION} hits without the redirect", before, 0)
    if required:
        v.expect(after >= at_least, f"kprobe {trace.KPROBE_FUNCTION} fired {after} times with the "
                                    f"redirect, expected at least {at_least} (one per sendmsg)")


def rate(value: float) -> str:
    return f"{value / MiB:.1f}"


# ----------------------------------------------------------------------------- the scenarios

@dataclass(frozen=True)
class Scenario:
    id: str
    summary: str
    check: Callable[[Env, Verdict], None]
    gate: Callable[[Env], str | None] | None = None


def ipv6_gate(env: Env) -> str | None:
    if not env.target.run(["test", "-e", "/proc/net/if_inet6"]).ok:
        return f"kernel {env.target.kernel_release} has no IPv6 (/proc/net/if_inet6 is missing)"
    return None


def netns_gate(env: Env) -> str | None:
    if not redirect.netns_supported(env.target):
        return (f"bpf_get_netns_cookie is not available to sock_ops and sk_msg programs on "
                f"{env.target.kernel_release} (bpftool feature probe): the netns variant cannot load")
    return None


INSERTED = {"ipv4": {"inserted_v4": 2}, "ipv6": {"inserted_v6": 2},
            "v4mapped": {"inserted_v4": 1, "inserted_v4mapped": 1}}


def echo_check(family: str):
    def check(env: Env, v: Verdict) -> None:
        trips, size = env.scale.echo_trips, 64
        inst = env.installed()
        rounds = rounds_of(v, env.run(v.scenario, "echo", ["--family", family, "--trips", trips,
                                                           "--size", size], inst))
        base, red = rounds["baseline"], rounds["redirect"]
        for view in (base, red):
            v.equal(f"{view.name}: intact round trips", view.results["client"]["intact_trips"], trips)
        check_entries(v, red, "connected", [red.sockets["client"], red.sockets["server"]])
        check_no_entries(v, red)
        delta = red.counters_delta()
        inserted = {name: INSERTED[family].get(name, 0) for name in ("inserted_v4", "inserted_v6", "inserted_v4mapped")}
        check_counters(v, delta, **inserted, insert_failed=0, bytes_redirected=2 * trips * size,
                       msgs_missed=0)
        check_bypass(v, env, base, red)
        check_kprobe(v, env, base, red, at_least=trips)
        speeds = [view.results["client"]["trips_per_second"] for view in (base, red)]
        v.figure("round trips/s", f"{speeds[1]:.0f} vs {speeds[0]:.0f}")
    return check


def bulk_like(env: Env, v: Verdict, args: list, writes_exact: bool) -> tuple[RoundView, RoundView]:
    inst = env.installed()
    rounds = rounds_of(v, env.run(v.scenario, "bulk", args, inst))
    base, red = rounds["baseline"], rounds["redirect"]
    nbytes = red.data["bytes_per_side"]
    for view in (base, red):
        check_both_ways(v, view, nbytes)
    sockets = [red.sockets["client"], red.sockets["server"]]
    check_entries(v, red, "connected", sockets)
    check_entries(v, red, "open", sockets)
    check_no_entries(v, red)
    delta = red.counters_delta()
    check_counters(v, delta, inserted_v4=2, bytes_redirected=2 * nbytes, msgs_missed=0, bytes_missed=0)
    if writes_exact:  # a write of at most 4 KiB is one sk_msg verdict
        check_counters(v, delta, msgs_redirected=2 * red.data["writes_per_side"])
    check_bypass(v, env, base, red)
    sends = red.results["client"]["sends"] + red.results["server"]["sends"]
    check_kprobe(v, env, base, red, at_least=sends)
    return base, red


def bulk_check(env: Env, v: Verdict) -> None:
    base, red = bulk_like(env, v, ["--bytes", env.scale.bulk_bytes], writes_exact=False)
    nbytes = red.data["bytes_per_side"]
    speeds = [2 * nbytes / view.phase()["seconds"] for view in (base, red)]
    v.figure("MiB/s", f"{rate(speeds[1])} vs {rate(speeds[0])}")
    v.figure("bytes", f"2x{nbytes // MiB} MiB")


def smallwrites_check(env: Env, v: Verdict) -> None:
    base, red = bulk_like(env, v, ["--writes", "small", "--small-writes", env.scale.small_writes],
                          writes_exact=True)
    v.figure("writes", f"2x{red.data['writes_per_side']} of 1..4096 B")


def sendfile_check(mode: str):
    def check(env: Env, v: Verdict) -> None:
        nbytes = env.scale.sendfile_bytes
        inst = env.installed()
        rounds = rounds_of(v, env.run(v.scenario, "sendfile", ["--mode", mode, "--bytes", nbytes], inst))
        base, red = rounds["baseline"], rounds["redirect"]
        for view in (base, red):
            client, server = view.results["client"], view.results["server"]
            v.equal(f"{view.name}: bytes received", server["received"], nbytes)
            v.expect(client["sent_sha256"] == server["received_sha256"],
                     f"{view.name}: the received file differs from the sent one (SHA-256)")
        check_entries(v, red, "connected", [red.sockets["client"], red.sockets["server"]])
        check_no_entries(v, red)
        check_counters(v, red.counters_delta(), bytes_redirected=nbytes, msgs_missed=0, bytes_missed=0)
        check_bypass(v, env, base, red)
        # sendfile/splice reach tcp_bpf_sendmsg only where the kernel splices through sendmsg
        # (MSG_SPLICE_PAGES, 6.5+); older kernels use tcp_bpf_sendpage: shown, not required.
        check_kprobe(v, env, base, red, at_least=1, required=False)
        v.figure("bytes", f"{nbytes // MiB} MiB in {red.results['client']['calls']} {mode} calls")
    return check


def pair_up(clients: list[dict], servers: list[dict]) -> list[tuple[dict, dict]]:
    by_peer = {socket_tuple(s)[1]: s for s in servers}
    return [(c, by_peer.get(socket_tuple(c)[0])) for c in clients]


def concurrent_check(env: Env, v: Verdict) -> None:
    conns, size = env.scale.conns, 1024
    inst = env.installed()
    rounds = rounds_of(v, env.run(v.scenario, "concurrent", ["--conns", conns, "--size", size], inst))
    base, red = rounds["baseline"], rounds["redirect"]
    for view in (base, red):
        v.equal(f"{view.name}: connections intact", view.results["client"]["intact_conns"], conns)
    sockets = red.sockets["client"]["sockets"] + red.sockets["server"]["sockets"]
    check_entries(v, red, "connected", sockets)
    check_entries(v, red, "open", sockets)
    check_no_entries(v, red)
    check_counters(v, red.counters_delta(), inserted_v4=2 * conns, insert_failed=0,
                   bytes_redirected=2 * conns * size, msgs_missed=0)
    check_bypass(v, env, base, red)
    check_kprobe(v, env, base, red, at_least=2 * conns)
    v.figure("entries", f"{len(red.entries('connected'))} for {conns} conns")


def churn_check(env: Env, v: Verdict) -> None:
    conns, size = env.scale.churn_conns, 100
    inst = env.installed()
    rounds = rounds_of(v, env.run(v.scenario, "churn", ["--conns", conns, "--size", size], inst))
    base, red = rounds["baseline"], rounds["redirect"]
    for view in (base, red):
        v.equal(f"{view.name}: connections intact", view.results["client"]["intact_conns"], conns)
        v.equal(f"{view.name}: clean EOFs at the server", view.results["server"]["clean_eofs"], conns)
    check_no_entries(v, red)
    delta = red.counters_delta()
    check_counters(v, delta, inserted_v4=2 * conns, insert_failed=0)
    v.equal("program counters: bytes redirected + passed to TCP",
            delta["bytes_redirected"] + delta["bytes_missed"], 2 * conns * size)
    v.expect(delta["bytes_redirected"] > 0, "no byte was redirected")
    # The data phase holds every connection's handshake and teardown: those stay TCP.
    check_bypass(v, env, base, red, protocol_packets=conns * (HANDSHAKE_PACKETS + TEARDOWN_PACKETS))
    check_kprobe(v, env, base, red, at_least=conns)
    speeds = [view.results["client"]["conns_per_second"] for view in (base, red)]
    v.figure("conns/s", f"{speeds[1]:.0f} vs {speeds[0]:.0f}")
    v.figure("missed msgs", delta["msgs_missed"])


def halfclose_check(env: Env, v: Verdict) -> None:
    nbytes, reply = env.scale.halfclose_bytes, 64 * 1024
    inst = env.installed()
    rounds = rounds_of(v, env.run(v.scenario, "halfclose", ["--bytes", nbytes, "--reply", reply], inst))
    base, red = rounds["baseline"], rounds["redirect"]
    for view in (base, red):
        client, server = view.results["client"], view.results["server"]
        v.expect(server["eof_seen"], f"{view.name}: the server never saw the client's EOF ({server['error']})")
        v.expect(client["eof_seen"], f"{view.name}: the client never saw the server's EOF ({client['error']})")
        check_transfer(v, view.name, "client", client, "server", server, nbytes)
        check_transfer(v, view.name, "server", server, "client", client, reply)
    check_entries(v, red, "connected", [red.sockets["client"], red.sockets["server"]])
    check_no_entries(v, red)
    check_counters(v, red.counters_delta(), bytes_redirected=nbytes + reply, msgs_missed=0)
    check_bypass(v, env, base, red, protocol_packets=TEARDOWN_PACKETS)
    check_kprobe(v, env, base, red, at_least=2)
    v.figure("EOF", "both ways")


def outside_check(outside: str):
    inside = "client" if outside == "server" else "server"

    def check(env: Env, v: Verdict) -> None:
        nbytes = env.scale.bulk_bytes // 4
        inst = env.installed()
        rounds = rounds_of(v, env.run(v.scenario, "bulk", ["--bytes", nbytes, f"--{outside}-cgroup", "none"], inst))
        base, red = rounds["baseline"], rounds["redirect"]
        for view in (base, red):
            check_both_ways(v, view, nbytes)  # in particular no EACCES from an SK_DROP verdict
        check_entries(v, red, "connected", [red.sockets[inside]])
        check_no_entries(v, red)
        # The inside socket is in the map and runs the verdict on each send, which misses (its
        # peer is not in the map) and passes the bytes on to TCP.
        check_counters(v, red.counters_delta(), inserted_v4=1, msgs_redirected=0, bytes_redirected=0,
                       bytes_missed=nbytes)
        before, after = base.phase()["counters"]["tcp_out_segs"], red.phase()["counters"]["tcp_out_segs"]
        v.expect(after >= before / 2, f"Tcp OutSegs {after} with one side outside, baseline {before}: "
                                      "the transfer should have used TCP like the baseline")
        v.figure("Tcp OutSegs", f"{after}/{before} (TCP, as expected)")
    return check


def netns2_check(variant: str):
    def check(env: Env, v: Verdict) -> None:
        nbytes = env.scale.netns_bytes
        inst = env.installed(variant)
        rounds = ("baseline", "redirect") if variant == "netns" else ("redirect",)
        result = env.run(v.scenario, "netns2", ["--bytes", nbytes], inst, rounds=rounds)
        views = rounds_of(v, result)
        red = views["redirect"]
        for name in ("netns0", "netns1"):
            sides = red.results[name]
            label = f"{name}"
            check_transfer(v, label, "client", sides["client"], "server", sides["server"], nbytes)
            check_transfer(v, label, "server", sides["server"], "client", sides["client"], nbytes)
        inodes = {red.sockets[name]["netns_inode"] for name in ("netns0", "netns1")}
        v.equal("distinct network namespaces", len(inodes), 2)
        ns0 = [red.sockets["netns0"]["client"], red.sockets["netns0"]["server"]]
        ns1 = [red.sockets["netns1"]["client"], red.sockets["netns1"]["server"]]
        v.equal("same addresses and ports in both namespaces",
                {socket_tuple(s) for s in ns0}, {socket_tuple(s) for s in ns1})
        entries = red.entries("connected")
        if variant == "netns":
            v.equal("map entries for 4 sockets in 2 namespaces", len(entries), 4)
            cookies = {e.get("netns") for e in entries}
            v.expect(len(cookies) == 2 and None not in cookies,
                     f"netns cookies in the keys: {cookies}, expected two different ones")
            check_counters(v, red.counters_delta(), inserted_v4=4, insert_failed=0,
                           bytes_redirected=4 * nbytes, msgs_missed=0)
            check_bypass(v, env, views["baseline"], red)
            v.figure("entries", f"4 for 4 sockets, {len(cookies)} netns cookies")
        else:
            # The key has no namespace: namespace 1's sockets collide with namespace 0's and are
            # refused (BPF_NOEXIST), so namespace 1 talks plain TCP, and nothing crosses.
            v.equal("map entries (collision: namespace 1's keys equal namespace 0's)", len(entries), 2)
            v.equal("the entries are namespace 0's sockets", entry_tuples(entries), {socket_tuple(s) for s in ns0})
            if inst.counters_pin:
                check_counters(v, red.counters_delta(), inserted_v4=2, insert_failed=2,
                               bytes_redirected=2 * nbytes, msgs_missed=0)
            v.figure("entries", "2 for 4 sockets (key collision shown)")
        check_no_entries(v, red)
        v.figure("crossed bytes", 0 if not v.failures else "see failures")
    return check


def fullmap_check(env: Env, v: Verdict) -> None:
    max_entries, conns, size = 4, 4, 64 * 1024
    inst = env.installed(max_entries=max_entries)
    rounds = rounds_of(v, env.run(v.scenario, "concurrent", ["--conns", conns, "--size", size], inst))
    base, red = rounds["baseline"], rounds["redirect"]
    for view in (base, red):
        v.equal(f"{view.name}: connections intact", view.results["client"]["intact_conns"], conns)
    entries = red.entries("connected")
    v.equal("map entries (max_entries)", len(entries), max_entries)
    in_map = entry_tuples(entries)
    pairs = pair_up(red.sockets["client"]["sockets"], red.sockets["server"]["sockets"])
    both = sum(1 for c, s in pairs if s and socket_tuple(c) in in_map and socket_tuple(s) in in_map)
    one = sum(1 for c, s in pairs if s and (socket_tuple(c) in in_map) != (socket_tuple(s) in in_map))
    check_no_entries(v, red)
    check_counters(v, red.counters_delta(), insert_failed=2 * conns - max_entries,
                   bytes_redirected=2 * size * both, bytes_missed=size * one)
    v.expect(red.phase()["counters"]["tcp_out_segs"] > 0,
             "no TCP segment: the connections that did not fit in the map should have used TCP")
    v.figure("conns", f"{both} redirected, {conns - both} over TCP, 0 lost")


def detach_check(env: Env, v: Verdict) -> None:
    nbytes = env.scale.bulk_bytes
    inst = env.installed(shared=False)
    pins = redirect.pinned_programs(env.target, inst.installation.pin_dir)
    sockops = next(p for p in pins.values() if p.type == "sock_ops")
    skmsg = next(p for p in pins.values() if p.type == "sk_msg")
    # What `sockredir-lab redirect uninstall` does, run by the client when half its bytes are out.
    commands = [["bpftool", "cgroup", "detach", inst.cgroup, "sock_ops", "pinned", sockops.pin],
                ["bpftool", "prog", "detach", "pinned", skmsg.pin, "msg_verdict", "pinned", inst.map_pin],
                ["rm", "-rf", inst.installation.pin_dir]]
    commands_file = f"{redirect.RUN_DIR}/detach-{trace.new_tag()}.json"
    env.target.put_text(json.dumps(commands), commands_file)
    try:
        result = env.run(v.scenario, "bulk", ["--bytes", nbytes, "--midway-exec", commands_file], inst)
    finally:
        inst.removed = True
        env.target.run(["rm", "-f", commands_file])
    rounds = rounds_of(v, result)
    base, red = rounds["baseline"], rounds["redirect"]
    for view in (base, red):
        check_both_ways(v, view, nbytes)
    check_entries(v, red, "connected", [red.sockets["client"], red.sockets["server"]])
    hook = red.results["client"]["hook"]
    v.expect(hook is not None, "the client never ran the detach commands")
    if hook:
        for command in hook["commands"]:
            v.equal(f"exit code of {' '.join(command['argv'][:4])}", command["rc"], 0)
        end = red.results["client"]["counters_end"]
        after = end["tcp_out_segs"] - hook["counters_after"]["tcp_out_segs"]
        # A socket keeps its psock (and the programs it holds) until it closes: the established
        # connection stays redirected after the uninstall; only new connections are plain TCP.
        v.figure("TCP segs after detach", after)
    freed = wait_until_gone(env.target, inst.installation.maps.values())
    v.expect(not freed, f"maps {freed} still exist after every socket closed: the uninstall leaked them")
    v.figure("maps freed after close", "yes" if not freed else f"no: {freed}")


def wait_until_gone(target: Target, map_ids, seconds: float = 5.0) -> list[int]:
    """Map ids still present after ``seconds`` (a map is freed after an RCU grace period)."""
    deadline = time.monotonic() + seconds
    left = list(map_ids)
    while left and time.monotonic() < deadline:
        left = [i for i in left if target.run(["bpftool", "map", "show", "id", str(i)]).ok]
        if left:
            time.sleep(0.2)
    return left


def untouched_check(env: Env, v: Verdict) -> None:
    datagrams = env.scale.datagrams
    inst = env.installed()
    rounds = rounds_of(v, env.run(v.scenario, "untouched", ["--datagrams", datagrams], inst))
    base, red = rounds["baseline"], rounds["redirect"]
    for view in (base, red):
        client = view.results["client"]
        v.equal(f"{view.name}: UDP datagrams intact", client["intact_datagrams"], datagrams)
        v.expect(client["unix_intact"], f"{view.name}: AF_UNIX bytes differ")
        v.equal(f"{view.name}: UDP datagrams out", view.phase()["counters"]["udp_out_datagrams"], 2 * datagrams)
        v.equal(f"{view.name}: lo packets (UDP only)", view.phase()["counters"]["lo_tx_packets"], 2 * datagrams)
    v.equal("map entries while UDP and AF_UNIX sockets are open", len(red.entries("connected")), 0)
    delta = red.counters_delta()
    v.expect(not any(delta.values()), f"program counters moved: {delta}")
    v.figure("UDP lo pkts", f"{red.phase()['counters']['lo_tx_packets']}/{base.phase()['counters']['lo_tx_packets']}")


def slowreader_check(env: Env, v: Verdict) -> None:
    cap = env.scale.slow_cap
    inst = env.installed()
    rounds = rounds_of(v, env.run(v.scenario, "slowreader", ["--cap", cap], inst))
    base, red = rounds["baseline"], rounds["redirect"]
    for view in (base, red):
        client, server = view.results["client"], view.results["server"]
        v.equal(f"{view.name}: bytes drained", server["received"], client["queued"])
        v.expect(client["sent_sha256"] == server["received_sha256"], f"{view.name}: drained bytes differ (SHA-256)")
    check_entries(v, red, "connected", [red.sockets["client"], red.sockets["server"]])
    check_no_entries(v, red)
    client = red.results["client"]
    queued = client["queued"]
    delta = red.counters_delta()
    check_counters(v, delta, msgs_missed=0)
    # The verdict counts a message before the redirect enqueues it: a send that then fails
    # (ENOMEM) is counted although its bytes were not queued. At most the failing write (and a
    # retry of it) on top of what was queued.
    extra = delta["bytes_redirected"] - queued
    if client["stopped_by"] in ("cap", "EAGAIN"):
        v.equal("program counter bytes_redirected (bytes queued)", delta["bytes_redirected"], queued)
    else:
        v.expect(0 <= extra <= 2 * SLOW_CHUNK,
                 f"program counter bytes_redirected {delta['bytes_redirected']} vs {queued} queued: "
                 f"more than the failed write of {SLOW_CHUNK} bytes (and one retry) apart")
        v.note(f"the verdict counted {extra} bytes of writes that then failed with {client['stopped_by']}")
    for view in (base, red):
        sender = view.results["client"]
        v.figure(f"{view.name} queued", f"{sender['queued'] / MiB:.1f} MiB ({sender['stopped_by']}, "
                                         f"MemAvailable -{sender['mem_available_drop_kib'] // 1024} MiB)")
    if client["stopped_by"] != "EAGAIN":
        tcp_mem = env.target.run(["cat", "/proc/sys/net/ipv4/tcp_mem"]).stdout.split()
        limit = f"{int(tcp_mem[2]) * 4096 // MiB} MiB" if len(tcp_mem) == 3 else "unknown"
        v.warn(f"no backpressure under the redirect: the sender queued {queued / MiB:.0f} MiB into a "
               f"reader that reads nothing and stopped by {client['stopped_by']} (plain TCP: EAGAIN "
               f"after {base.results['client']['queued'] / MiB:.1f} MiB; net.ipv4.tcp_mem max {limit})")


SLOW_CHUNK = 64 * 1024  # scenarios/slowreader.py CHUNK


SCENARIOS: dict[str, Scenario] = {s.id: s for s in [
    Scenario("echo-ipv4", "ping-pong of 64-byte messages over IPv4", echo_check("ipv4")),
    Scenario("echo-ipv6", "the same over IPv6 (::1)", echo_check("ipv6"), ipv6_gate),
    Scenario("echo-v4mapped", "an IPv4 client and a dual-stack IPv6 server (::ffff:127.0.0.1)",
             echo_check("v4mapped"), ipv6_gate),
    Scenario("bulk", "bulk transfer both ways at once, 64 KiB writes, SHA-256", bulk_check),
    Scenario("smallwrites", "writes of 1 B to 4 KiB both ways", smallwrites_check),
    Scenario("sendfile", "a file sent with sendfile()", sendfile_check("sendfile")),
    Scenario("splice", "a file sent with splice() through a pipe", sendfile_check("splice")),
    Scenario("concurrent", "hundreds of connections open at once", concurrent_check),
    Scenario("churn", "thousands of connect/transfer/close in a row", churn_check),
    Scenario("halfclose", "shutdown(SHUT_WR) each way, EOF seen by the peer", halfclose_check),
    Scenario("outside-server", "the server outside the cgroup: plain TCP, no error", outside_check("server")),
    Scenario("outside-client", "the client outside the cgroup: plain TCP, no error", outside_check("client")),
    Scenario("netns2-seed", "two namespaces, same addresses and ports, seed key", netns2_check("seed")),
    Scenario("netns2-production", "the same with the production key", netns2_check("production")),
    Scenario("netns2-netns", "the same with the netns cookie in the key", netns2_check("netns"), netns_gate),
    Scenario("fullmap", "max_entries=4 with 4 connections: the rest fall back to TCP", fullmap_check),
    Scenario("detach", "the redirect removed in the middle of a stream", detach_check),
    Scenario("untouched", "UDP and AF_UNIX in the cgroup: not touched", untouched_check),
    Scenario("slowreader", "a reader that does not read: how much can be queued", slowreader_check),
]}


def select(names: list[str] | None) -> list[str]:
    """Scenario ids from names; a name selects the ids equal to it or starting with ``name-``."""
    if not names:
        return list(SCENARIOS)
    chosen = []
    for name in names:
        matching = [sid for sid in SCENARIOS if sid == name or sid.startswith(name + "-")]
        if not matching:
            raise LabError(f"no scenario {name!r}; the scenarios are {', '.join(SCENARIOS)}")
        chosen += [sid for sid in matching if sid not in chosen]
    return chosen


# ----------------------------------------------------------------------------- the whole suite

DEFAULT_KERNEL = "6.1"
HOST_ID = "host"
SPLAT_RE = re.compile(r"\b(BUG:|WARNING:|Oops|KASAN|UBSAN|general protection fault|Call Trace:)")


@dataclass
class KernelReport:
    kernel: str
    release: str = ""
    verdicts: list[Verdict] = field(default_factory=list)
    error: str | None = None          # the kernel could not be run at all
    unavailable: str | None = None    # not provided (e.g. 5.15 without a .deb)
    splats: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def failed(self) -> bool:
        return bool(self.error or self.splats or any(v.status == "fail" for v in self.verdicts))

    def as_dict(self) -> dict:
        return {"kernel": self.kernel, "release": self.release, "error": self.error,
                "unavailable": self.unavailable, "splats": self.splats, "seconds": round(self.seconds, 1),
                "verdicts": [v.as_dict() for v in self.verdicts]}


def run_checks(env: Env, scenario_ids: list[str], progress: Callable[[str], None]) -> list[Verdict]:
    verdicts = []
    for scenario_id in scenario_ids:
        verdict = env.check(scenario_id)
        progress(f"  {scenario_id:<18} {verdict.status:<5} {verdict.seconds:5.1f}s  "
                 f"{verdict.reason or verdict.summary()}")
        for failure in verdict.failures:
            progress(f"      FAIL: {failure}")
        for warning in verdict.warnings:
            progress(f"      warning: {warning}")
        verdicts.append(verdict)
    return verdicts


@contextlib.contextmanager
def booted_target(kernel_id: str, workdir: Path, progress: Callable[[str], None]):
    """The host (``host``) or a freshly booted guest of a catalogued kernel, as a Target."""
    if kernel_id == HOST_ID:
        import os

        from lab.target import LocalTarget

        if os.geteuid() != 0:
            raise LabError("the host target needs root (BPF, cgroups, network namespaces); run as root")
        yield LocalTarget()
        return
    from lab import image, kernels
    from lab.catalog import Catalog
    from lab.guest import Guest

    catalog = Catalog.load()
    entry = catalog.find(kernel_id)
    if entry is None:
        raise LabError(f"kernel {kernel_id!r} is not in the catalog (known: {', '.join(catalog.ids)}, "
                       f"and {HOST_ID})")
    artifacts = kernels.prepare(entry, progress=progress)
    guest_image = image.ensure_image(progress=progress)
    workdir.mkdir(parents=True, exist_ok=True)
    with Guest(artifacts, guest_image, workdir, progress=progress) as guest:
        progress(f"kernel {kernel_id}: guest ready in {guest.boot_seconds:.1f}s")
        yield guest.target


def run_kernel(kernel_id: str, scenario_ids: list[str], artifacts: Path, broken: bool,
               progress: Callable[[str], None]) -> KernelReport:
    from lab.kernels import KernelUnavailable

    report = KernelReport(kernel_id)
    started = time.monotonic()
    try:
        with booted_target(kernel_id, artifacts / "guest", progress) as target:
            report.release = target.kernel_release
            progress(f"kernel {kernel_id} ({report.release}): {len(scenario_ids)} scenarios")
            if target.name != HOST_ID:
                target.run(["dmesg", "-c"], timeout=30)  # the boot's messages are not ours
            with Env(target, artifacts=artifacts / "scenarios", broken=broken, progress=progress) as env:
                report.verdicts = run_checks(env, scenario_ids, progress)
            if target.name != HOST_ID:
                dmesg = target.run(["dmesg"], timeout=30).stdout
                (artifacts / "dmesg.txt").write_text(dmesg)
                report.splats = [line for line in dmesg.splitlines() if SPLAT_RE.search(line)]
    except KernelUnavailable as exc:
        report.unavailable = str(exc)
    except LabError as exc:
        report.error = str(exc)
    report.seconds = time.monotonic() - started
    return report


def run_suite(kernel_ids: list[str], scenario_ids: list[str], artifacts: Path, broken: bool = False,
              progress: Callable[[str], None] = print) -> list[KernelReport]:
    reports = []
    for kernel_id in kernel_ids:
        report = run_kernel(kernel_id, scenario_ids, artifacts / f"kernel_{kernel_id.replace('.', '_')}",
                            broken, progress)
        reports.append(report)
    (artifacts / "suite.json").write_text(json.dumps([r.as_dict() for r in reports], indent=1))
    return reports


def status_cell(report: KernelReport, scenario_id: str) -> str:
    if report.unavailable:
        return "n/a"
    if report.error:
        return "ERROR"
    verdict = next((v for v in report.verdicts if v.scenario == scenario_id), None)
    if verdict is None:
        return "-"
    return {"pass": "pass", "warn": "warn", "fail": "FAIL", "gated": "gated"}[verdict.status]


def format_table(reports: list[KernelReport], scenario_ids: list[str]) -> str:
    """The kernel x scenario matrix, then per kernel each scenario's key figures or reason."""
    width = max(len(s) for s in scenario_ids) + 2
    header = "scenario".ljust(width) + "".join(r.kernel.ljust(8) for r in reports)
    lines = [header, "-" * len(header)]
    for scenario_id in scenario_ids:
        lines.append(scenario_id.ljust(width) + "".join(status_cell(r, s).ljust(8)
                                                         for r, s in ((r, scenario_id) for r in reports)))
    for report in reports:
        lines.append("")
        title = f"kernel {report.kernel}"
        if report.release:
            title += f" ({report.release}, {report.seconds:.0f}s)"
        lines.append(title)
        if report.unavailable:
            lines.append(f"  not run: {report.unavailable}")
        if report.error:
            lines.append(f"  ERROR: {report.error}")
        for verdict in report.verdicts:
            detail = verdict.reason if verdict.status == "gated" else verdict.summary()
            lines.append(f"  {verdict.scenario.ljust(width)}{status_cell(report, verdict.scenario):<6} {detail}")
            lines += [f"  {'':{width}}      FAIL: {failure}" for failure in verdict.failures]
            lines += [f"  {'':{width}}      warning: {warning}" for warning in verdict.warnings]
        lines += [f"  kernel splat in dmesg: {splat}" for splat in report.splats[:10]]
    return "\n".join(lines)
