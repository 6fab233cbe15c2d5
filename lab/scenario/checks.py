"""The reusable checks of a scenario result: a Verdict, views of the rounds, and the checks on them.

A scenario program's JSON has a round per setting (``baseline`` without the redirect, ``redirect``
in a cgroup carrying it), each with its results, sockets, phases and map snapshots. ``RoundView``
decodes a round; the checks assert numbers on it into a ``Verdict``:

- the data: every byte intact (SHA-256), EOFs seen, no error;
- the map: exactly two entries per open connection, matching the sockets' addresses, none after
  close (decoded from the map dumps the scenario took at fixed points);
- the bypass: loopback packets, Tcp OutSegs and the TCP/IP tracepoints during the redirected data
  phase are at most ``BYPASS_RATIO`` of the baseline's (plus the handshake/FIN packets a scenario
  necessarily sends), and the baseline counted enough for the comparison to mean something;
- positive evidence: the program's counters account for the bytes exactly, and the kprobe on
  ``tcp_bpf_sendmsg`` fired (where the kernel has kprobes) and never in the baseline.

Nothing here runs anything: the scenarios that use these checks are in ``lab.scenario.definitions``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from lab.bpf import keys
from lab.scenario import trace
from lab.scenario.runner import cookie_mismatches, entry_tuples, socket_tuple

BYPASS_RATIO = 0.01   # redirected count <= 1% of the baseline's (+ protocol packets: check_bypass)
MIN_BASELINE = 50     # a baseline below this cannot show a 1% ratio: the data size is too small
MiB = 1 << 20


class Traced(Protocol):
    """What the bypass and kprobe checks read from an Env: the target's trace support."""

    @property
    def trace(self) -> trace.Support: ...


# ----------------------------------------------------------------------------- verdicts

class Stop(Exception):
    """Ends a check early (the scenario failed to run); the verdict already says why."""


# What a failure is about: a kernel defect may explain some kinds in some rounds only
# (lab.scenario.xfail): "error" (what a program saw: an exception, an errno), "data" (bytes,
# checksums, EOFs and the program's byte counters: what a data run cut short changes), "check"
# (everything else: map entries, the bypass, the path per socket, inserts, the kprobe).
KINDS = ("error", "data", "check")


class Failure(str):
    """One failure of a verdict: its text (it is a ``str`` everywhere a failure is printed or
    saved), the round it was seen in (``baseline``/``redirect``/None for the whole scenario),
    the side it concerns (``client``/``server``) when one, its kind (KINDS), and the known kernel
    defect whose exact symptom it is, when the check that saw it could tell (lab.scenario.xfail)."""

    round: str | None
    role: str | None
    kind: str
    defect: str | None
    by_program: bool   # rests on the program's own counters, not on what a user or the kernel sees

    def __new__(cls, text: str, round: str | None = None, kind: str = "check", role: str | None = None,
                defect: str | None = None, by_program: bool = False):
        if kind not in KINDS:
            raise ValueError(f"failure kind {kind!r}; the kinds are {KINDS}")
        failure = super().__new__(cls, text)
        failure.round, failure.kind, failure.role, failure.defect = round, kind, role, defect
        failure.by_program = by_program
        return failure


@dataclass
class Verdict:
    scenario: str
    status: str = "pass"              # pass | fail | xfail (a named kernel defect) | gated
    reason: str | None = None         # why gated, or the defect an xfail names
    failures: list[Failure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    figures: dict[str, object] = field(default_factory=dict)
    seconds: float = 0.0

    def expect(self, ok: bool, message: str, round: str | None = None, kind: str = "check",
               role: str | None = None, defect: str | None = None, by_program: bool = False) -> bool:
        if not ok:
            self.failures.append(Failure(message, round, kind, role, defect, by_program))
            self.status = "fail"
        return ok

    def equal(self, what: str, got, want, round: str | None = None, kind: str = "check") -> bool:
        return self.expect(got == want, f"{what}: got {got}, expected {want}", round, kind)

    def figure(self, name: str, value) -> None:
        self.figures[name] = value

    def note(self, text: str) -> None:
        self.notes.append(text)

    def summary(self) -> str:
        return ", ".join(f"{k} {v}" for k, v in self.figures.items())

    def as_dict(self) -> dict:
        return {"scenario": self.scenario, "status": self.status, "reason": self.reason,
                "failures": self.failures, "notes": self.notes,
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

    def counters_delta(self, first: str = "start", last: str = "closed") -> dict[str, int] | None:
        """What the lab's own program counters grew by; None for a program without them (one the
        lab did not write: it is judged by the kernel-side evidence alone)."""
        if "counters" not in self.data.get("snapshots", {}).get(first, {}):
            return None
        return keys.counters_delta(self.counters(first), self.counters(last))



def rounds_of(verdict: Verdict, result: dict) -> dict[str, RoundView]:
    """The rounds of a result; a scenario error ends the check with that error as the failure."""
    views = {name: RoundView(name, data) for name, data in result["rounds"].items()}
    if result.get("error"):
        failed = [name for name, data in result["rounds"].items() if data.get("error")]
        verdict.expect(False, f"scenario error: {result['error'][:1000]}",
                       round=failed[0] if len(failed) == 1 else None, kind="error")
        raise Stop()
    return views


# ----------------------------------------------------------------------------- reusable checks

def check_transfer(v: Verdict, label: str, sender: str, a: dict, receiver: str, b: dict, nbytes: int,
                   round: str | None = None) -> None:
    """a's bytes arrived at b, all of them, unchanged (``label`` names the round unless ``round``
    does)."""
    round = round or label
    v.expect(a.get("error") is None, f"{label}: {sender} error {a.get('error')}", round, "error", sender)
    v.equal(f"{label}: bytes {sender} sent", a["sent"], nbytes, round, "data")
    v.equal(f"{label}: bytes {receiver} received from {sender}", b["received"], nbytes, round, "data")
    v.expect(a["sent_sha256"] == b["received_sha256"],
             f"{label}: what {receiver} received differs from what {sender} sent (SHA-256)", round, "data")


def check_both_ways(v: Verdict, view: RoundView, nbytes: int, a: str = "client", b: str = "server") -> None:
    results = view.results
    check_transfer(v, view.name, a, results[a], b, results[b], nbytes)
    check_transfer(v, view.name, b, results[b], a, results[a], nbytes)


def check_entries(v: Verdict, view: RoundView, label: str, sockets: list[dict]) -> list[dict]:
    """The map holds exactly one entry per given socket, keyed by that socket's addresses."""
    entries = view.entries(label)
    wanted = {socket_tuple(s) for s in sockets}
    v.equal(f"map entries {label}", len(entries), len(wanted))
    if any(e["layout"] == "unknown" for e in entries):
        check_entries_by_cookie(v, entries, sockets, label)
        return entries
    got = entry_tuples(entries)
    v.expect(got == wanted, f"map keys {label} do not match the sockets: missing "
                            f"{sorted(wanted - got)[:4]}, unexpected {sorted(got - wanted)[:4]}")
    mismatches = cookie_mismatches(entries, sockets)
    if mismatches is None:
        v.note(f"map values {label} not readable (4-byte values): which socket sits under which "
               "key is judged by the data only")
    else:
        v.expect(not mismatches, f"map {label}: {'; '.join(mismatches[:4])}")
    return entries


def check_payload_path(v: Verdict, base: RoundView, red: RoundView, roles=("client", "server"),
                       over_tcp: tuple[str, ...] = ()) -> None:
    """Per connection side, from TCP itself (``tcpi_data_segs_out``, what any redirect program
    leaves behind, ours or not): in the baseline every side's payload crossed TCP/IP (so the
    measure can see it), in the redirected round none did, except the sides in ``over_tcp``
    (a peer outside the map), which must have."""
    sent = {}
    for role in roles:
        before, after = base.results[role]["data_segs_out"], red.results[role]["data_segs_out"]
        v.expect(before > 0, f"baseline: the {role}'s payload took no TCP data segment, so this "
                             "measure cannot tell a redirected connection from another")
        if role in over_tcp:
            v.expect(after > 0, f"redirect: the {role}'s payload should have crossed TCP (its peer "
                                f"is outside the map), but it sent no data segment")
        else:
            v.equal(f"redirect: TCP data segments carrying the {role}'s payload (not redirected)",
                    after, 0)
        sent[role] = (before, after)
    v.figure("data segs", "/".join(f"{sent[r][1]}" for r in roles) + " vs "
             + "/".join(f"{sent[r][0]}" for r in roles))


def check_connections_redirected(v: Verdict, base: RoundView, red: RoundView, conns: int,
                                 redirected: dict[str, list[bool]] | None = None,
                                 redirect_roles: tuple[str, ...] = ("client", "server")) -> None:
    """Connections whose payload crossed TCP/IP, counted per socket from ``tcpi_data_segs_out``:
    every one in the baseline, none in the redirected round (or exactly the sockets
    ``redirected`` marks False: those that did not fit in the map). The redirected round is judged
    for ``redirect_roles`` only: a caller that judges a role itself (``handshake_race``) leaves it
    out."""
    for role in ("client", "server"):
        base_over = over_tcp(base.results[role])
        v.equal(f"baseline: {role} sockets whose payload took TCP (the measure sees them)", base_over, conns)
        if role not in redirect_roles:
            continue
        if redirected is None:
            v.equal(f"redirect: {role} sockets whose payload took TCP (not redirected)",
                    over_tcp(red.results[role]), 0)
        else:
            per_socket = red.results[role]["data_segs_out"]
            wrong = [i for i, (segs, direct) in enumerate(zip(per_socket, redirected[role]))
                     if (segs == 0) != direct]
            v.expect(not wrong, f"redirect: {role} sockets {wrong[:8]} took the wrong path (TCP data "
                                f"segments {[per_socket[i] for i in wrong[:8]]}; redirected ones have none)")
    v.figure("conns over TCP", f"{over_tcp(red.results['client'])}/{conns}")


def handshake_race(v: Verdict, red: RoundView, conns: int) -> int:
    """Client connections whose first message beat the server's end into the map, measured by TCP.

    A client sends as soon as connect() returns, but the server's end enters the map only when it
    is established (sockops PASSIVE_ESTABLISHED_CB, as the final ACK is processed). On SMP that
    ACK can wait in the listener's backlog while the server thread holds the listener in accept(),
    so a first message can find no peer and take TCP: intact, counted by the program as missed
    (seen: 1 of 1000 connections in about 1 run of 20 under TCG). No share of the connections is
    allowed for it: each such connection must show the race's exact shape, its one message in one
    TCP data segment here, and its server's reply redirected (the caller checks that every server
    socket sent none: a connection left out of the map answers over TCP too). The caller also
    checks the program's counters against this count message for message."""
    client = red.results["client"]
    raced = over_tcp(client)
    shapes = client.get("over_tcp", [])
    v.expect(len(shapes) == min(raced, 100), f"redirect: the scenario listed {len(shapes)} of the {raced} "
                                             "client connections that took TCP")
    wrong = [(index, segs) for index, segs in shapes if segs != 1]
    v.expect(not wrong, f"redirect: client connections {wrong[:8]} (index, TCP data segments) sent more "
                        "than their first message over TCP: not the handshake race; they were not redirected")
    if raced:
        v.note(f"{raced} client connection(s) sent their message before the server's end was "
               "established (handshake race): one TCP data segment each, intact")
    return raced


def over_tcp(result: dict) -> int:
    if "conns_over_tcp" in result:
        return result["conns_over_tcp"]
    return sum(segs > 0 for segs in result["data_segs_out"])


def check_entries_by_cookie(v: Verdict, entries: list[dict], sockets: list[dict], label: str) -> None:
    """Keys of a layout the lab cannot decode: the map must hold exactly the scenario's sockets,
    told by the cookies in its values (when the values can be read at all)."""
    cookies = [e.get("cookie") for e in entries]
    if None in cookies:
        v.note(f"map {label}: keys of an unknown layout and values not readable: judged by the "
               "number of entries and the data only")
        return
    wanted = sorted(s["cookie"] for s in sockets)
    v.expect(sorted(cookies) == wanted, f"map {label} (keys of an unknown layout) holds sockets "
                                        f"{sorted(cookies)[:4]}, expected the scenario's {wanted[:4]}")
    v.note(f"map {label}: keys of an unknown layout, compared by socket cookie")


def check_no_entries(v: Verdict, view: RoundView, label: str = "closed") -> None:
    entries = view.entries(label)
    v.expect(not entries, f"{len(entries)} map entries left {label}: {entries[:4]}")


# The program's counters that count bytes and messages: a data run cut short changes them.
DATA_COUNTERS = ("bytes_redirected", "msgs_redirected", "bytes_missed", "msgs_missed")


def check_counters(v: Verdict, delta: dict[str, int] | None, **expected: int) -> None:
    """The lab's program counters of the redirect round grew by exactly ``expected``."""
    if delta is None:
        if not any("no lab counters" in note for note in v.notes):
            v.note("the program has no lab counters: judged by the map, TCP's own data segments, "
                   "packet and tracepoint counts, the kprobe and the bytes")
        return
    for name, want in expected.items():
        v.expect(delta[name] == want, f"program counter {name}: got {delta[name]}, expected {want}",
                 "redirect", "data" if name in DATA_COUNTERS else "check", by_program=True)


def bypass_pairs(env: Traced, base: dict, red: dict) -> list[tuple[str, int, int, bool]]:
    """(name, baseline, redirected, is a packet count) of the data phase."""
    pairs = [("lo packets", base["counters"]["lo_tx_packets"], red["counters"]["lo_tx_packets"], True),
             ("Tcp OutSegs", base["counters"]["tcp_out_segs"], red["counters"]["tcp_out_segs"], True)]
    for event in trace.BYPASS_EVENTS:
        if event in env.trace.events:
            pairs.append((event, base["trace"][event], red["trace"][event], event != "tcp/tcp_sendmsg_locked"))
    return pairs


def check_bypass(v: Verdict, env: Traced, base_view: RoundView, red_view: RoundView,
                 protocol_packets: int = 0, label: str = "data", min_baseline: int = MIN_BASELINE) -> None:
    """The redirected data phase cost the TCP/IP stack at most BYPASS_RATIO of the baseline.

    ``protocol_packets``: packets TCP must still send in the phase (handshakes, FINs). TCP's
    retransmissions in the phase (Tcp RetransSegs) are allowed in the packet counts on top: a FIN
    sent again because a TCG guest stalled past the retransmission timeout (seen once: 5 loopback
    packets for 4 FIN/ACKs, Tcp OutSegs 4) is not payload; payload that crossed the stack shows in
    its first transmission, in Tcp OutSegs (which counts no retransmission) and in TCP's data
    segments (check_payload_path).

    ``min_baseline``: the fewest the baseline must count for the ratio to mean something; a phase
    whose plain TCP sends only a handful by nature (a reader that never reads closes the window
    after a few packets) passes 1: its redirected count must then be 0 plus the allowances.
    """
    base, red = base_view.phase(label), red_view.phase(label)
    retransmitted = red["counters"].get("tcp_retrans_segs", 0)
    for name, before, after, is_packets in bypass_pairs(env, base, red):
        control = protocol_packets + (retransmitted if name != "Tcp OutSegs" else 0)
        allowed = BYPASS_RATIO * before + (control if is_packets else 0)
        primary = name in ("lo packets", "Tcp OutSegs")
        if before < min_baseline:
            message = (f"{name}: the baseline counted only {before} (< {min_baseline}) in the data "
                       f"phase, too few to show a {BYPASS_RATIO:.0%} ratio")
            if primary:
                v.expect(False, message + "; raise the data size")
            else:
                v.note(message + "; not compared")
            continue
        extra = ""
        if is_packets and protocol_packets:
            extra += f" + {protocol_packets} handshake/FIN packets"
        if is_packets and control > protocol_packets:
            extra += f" + {retransmitted} retransmitted"
        v.expect(after <= allowed,
                 f"{name} in the data phase: {after} with the redirect, more than {allowed:.1f} "
                 f"({BYPASS_RATIO:.0%} of the baseline's {before}{extra})"
                 f": the payload went through the TCP/IP stack")
    lo = base["counters"]["lo_tx_packets"], red["counters"]["lo_tx_packets"]
    v.figure("lo pkts", f"{lo[1]}/{lo[0]}")
    if retransmitted:
        v.figure("retransmitted", retransmitted)
    for event in ("net/net_dev_xmit", "tcp/tcp_probe", "tcp/tcp_sendmsg_locked"):
        if event in env.trace.events:
            v.figure(event.split("/")[1], f"{red['trace'][event]}/{base['trace'][event]}")


def check_kprobe(v: Verdict, env: Traced, base_view: RoundView, red_view: RoundView, at_least: int,
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
