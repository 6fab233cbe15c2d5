"""The conformance matrix on one target: every behaviour of ``scenarios/conformance.py`` in five
situations, compared with plain TCP of the same kernel in the same run.

    plain          both ends in a cgroup without the redirect: the reference. Its own cell is
                   checked against what Linux TCP does (EXPECTED_PLAIN), so a probe that stopped
                   observing anything, or a kernel whose TCP changed, shows up too.
    redirected     both ends in the redirect's cgroup (both sockets in the sockhash)
    peer_outside   the observed socket in the sockhash, its peer outside
    passthrough    both ends in a cgroup where the sockets join a sockhash and an sk_msg program
                   passes every message without redirecting (the observability tools' shape)
    verdict        the same plus an sk_skb stream verdict program passing every skb

Every cell first proves its situation from the kernel's own count of the TCP data segments each
end sent (``path``, tcpi_data_segs_out: program-independent): ``redirected`` -> no end's payload
took a segment; ``peer_outside``, ``passthrough``, ``verdict`` -> every end that sent payload in
plain TCP sent it over TCP again. The lab's counters add, per situation: how many sockets went into
the map, and that the watching programs ran (bpf/sockredir_watch.h) and redirected nothing. A cell
whose situation was not what it claims fails ("not redirected"), whatever it observed.

Then a cell is ``pass`` when the situation's observation equals plain TCP's; otherwise it is
``xfail`` if the difference is a known kernel defect's exact symptom (``lab.conformance.defects``,
which names it and the versions it affects), else ``fail``. A cell that equals plain TCP where the
defect table lists a defect for this kernel is an ``xpass``: strict (a failure: the table is out of
date) unless every listed defect is intermittent. Nothing is retried and nothing is a warning.
"""

from __future__ import annotations

import json
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

from lab import LabError, api
from lab.bpf import keys, redirect
from lab.bpf.program import UserProgram
from lab.conformance import defects
from lab.vm.staging import ensure_with_shared
from lab.vm.target import Target

SITUATIONS = ("plain", "redirected", "peer_outside", "passthrough", "verdict")
# Situations whose traffic must take TCP: the peer outside the map, or a program that only watches.
OVER_TCP = ("peer_outside", "passthrough", "verdict")
# Where a program the lab did not write can be judged: as a redirect, or as one that only watches.
PROGRAM_SITUATIONS = ("redirected", "passthrough")

# What Linux TCP does on loopback, as the probes observe it (checked on the plain situation).
EXPECTED_PLAIN = {
    "fionread": {"fionread": 1024},
    "fionread_after_partial_read": {"fionread": 924},
    "siocoutq": {"siocoutq": 0},
    "poll_readiness": {"before": ["OUT"], "after_write": ["IN", "OUT"], "drained": ["OUT"],
                       "after_shutdown": ["IN", "OUT", "RDHUP"]},
    "select_readiness": {"before": False, "after_write": True},
    "epoll_level": {"after_write": ["IN"], "after_partial_read": ["IN"], "after_full_read": []},
    "epoll_edge": {"first_write": ["IN"], "no_new_data": [], "second_write": ["IN"]},
    "epoll_rdhup": {"after_peer_shutdown": ["IN", "RDHUP"]},
    "epoll_hup": {"after_both_shutdown": ["HUP", "IN", "RDHUP"]},
    "msg_peek": {"peeked": 1024, "peek_twice_same": True, "read": 1024, "read_equals_peek": True,
                 "intact": True},
    "msg_waitall": {"returned": 4096, "intact": True},
    "so_rcvlowat": {"readable_below_lowat": False, "readable_above_lowat": True},
    "dontwait_empty": {"result": "EAGAIN"},
    "blocking_recv": {"outcomes": {"100 bytes": 20}},
    "blocking_recv_stream": {"result": "all data"},
    "so_rcvtimeo": {"result": "EAGAIN", "waited": "on time"},
    "shutdown_eof": {"read": 1024, "intact": True, "read_after_eof": "0 bytes"},
    "close_with_unread_data": {"recv": "ECONNRESET", "send": "EPIPE"},
    "linger_zero": {"recv": "ECONNRESET"},
    "splice_from_socket": {"spliced": 1024, "intact": True},
    "splice_into_socket": {"spliced": 1024, "received": 1024, "intact": True},
    "sendfile_into_socket": {"sent": 1 << 20, "received": 1 << 20, "intact": True},
    "readv_writev": {"readv": 2048, "intact": True},
    "small_buffer_reads": {"sizes": [100] * 10 + [24], "intact": True},
    "write_larger_than_sndbuf": {"received": 1 << 20, "intact": True},
    "nonreading_peer": {"stopped_by": "EAGAIN", "queued_under_16mib": True},
    "epollout_level_after_drain": {"filled_by": "EAGAIN", "before_drain": [], "after_drain": ["OUT"]},
    "epollout_edge_after_drain": {"filled_by": "EAGAIN", "before_drain": [], "after_drain": ["OUT"],
                                  "no_new_space": []},
    "blocking_writer_woken": {"blocked_until_read": True, "completed": True, "intact": True},
    "siocoutq_drains": {"filled_by": "EAGAIN", "waiting_when_full": True, "after_drain": 0},
}
BEHAVIOURS = tuple(EXPECTED_PLAIN)
PROGRAM = "conformance.py"


@dataclass
class Cell:
    kernel: str
    behaviour: str
    situation: str
    status: str            # pass | fail | xfail | xpass
    observed: object
    expected: object
    reason: str = ""
    seconds: float | None = None
    path: dict | None = None   # TCP data segments per end (app, peer) in this situation
    strict: bool = False       # an xpass that fails (the defect always shows where listed)
    guard_tcp_bytes: int | None = None  # the guarded variant: bytes its guard sent over TCP

    def as_dict(self) -> dict:
        return asdict(self)


def observation(record: dict) -> object:
    """What a situation showed: the probe's observation, or the exception it raised."""
    return record["observed"] if record.get("error") is None else {"exception": record["error"]}


# ----------------------------------------------------------------------------- running

def run_probes(target: Target, app_cgroup: str, peer_cgroup: str, behaviours: Sequence[str],
               broken: Sequence[str] = (), guard_counters: str | None = None) -> dict[str, dict]:
    """One run of the probe program (in a fresh network namespace); records by behaviour."""
    program = ensure_with_shared(target, PROGRAM)
    command = ["unshare", "-n", "python3", "-S", program, "--app-cgroup", app_cgroup,
               "--peer-cgroup", peer_cgroup]
    if guard_counters:
        command += ["--guard-counters", guard_counters]
    command += [arg for name in behaviours for arg in ("--behaviour", name)]
    command += [arg for name in broken for arg in ("--break", name)]
    result = target.run(command, timeout=60 + 10 * len(behaviours))
    records = {}
    for line in result.stdout.splitlines():
        record = json.loads(line)
        records[record["behaviour"]] = record
    missing = [name for name in behaviours if name not in records]
    if missing:
        raise LabError(f"{PROGRAM} on {target.name} stopped before probing {', '.join(missing)} "
                       f"(exit {result.rc}): {result.stderr.strip()[-1000:]}")
    return records


def inserted(counters: dict) -> int:
    return counters["inserted_v4"] + counters["inserted_v6"] + counters["inserted_v4mapped"]


def check_situation(situation: str, before: dict, after: dict, probes: int, where: str) -> None:
    """The lab's counters (``redirect.status`` before and after the situation's probes) prove the
    situation was what it says: two sockets per connection in the map when both ends are in its
    cgroup, one when the peer is outside, none in plain; the watching programs ran (the verdict
    program too in ``verdict``) and nothing was redirected."""
    wanted = {"plain": 0, "peer_outside": probes}.get(situation, 2 * probes)
    counted = keys.counters_delta(before["counters"], after["counters"])
    problems = []
    if inserted(counted) != wanted:
        problems.append(f"the program inserted {inserted(counted)} sockets for {probes} connections, "
                        f"expected {wanted}")
    if situation in redirect.WATCHING:
        watched = keys.counters_delta(before["watch"] or {}, after["watch"] or {})
        if not watched.get("msgs_passed") or counted["msgs_redirected"]:
            problems.append(f"its sk_msg program passed {watched.get('msgs_passed', 0)} messages and "
                            f"{counted['msgs_redirected']} were redirected (expected some passed, none redirected)")
        if situation == "verdict" and not watched.get("skbs_passed"):
            problems.append("its sk_skb verdict program saw no skb")
    if problems:
        raise LabError(f"conformance on {where}, situation {situation}: {'; '.join(problems)}; the "
                       "matrix would not describe the situation it names")


def observe(target: Target, behaviours: Sequence[str], broken: Sequence[str] = (),
            progress: Callable[[str], None] = print,
            program: UserProgram | None = None, variant: str = "production",
            program_situation: str = "redirected") -> dict[str, dict[str, dict]]:
    """situation -> behaviour -> probe record, on ``target``: the lab's programs installed for the
    block, or ``program`` in their place in ``program_situation`` (``redirected``: judged as a
    redirect; ``passthrough``: as a program that only watches). The lab's counters prove each
    situation its own programs make (``check_situation``); a program the lab did not write has
    none, and each cell's path evidence (``judge``) is its proof there."""
    if program_situation not in PROGRAM_SITUATIONS:
        raise LabError(f"a program is judged in {' or '.join(PROGRAM_SITUATIONS)}, not {program_situation!r}")
    as_redirect = program if program_situation == "redirected" else None
    as_watcher = program if program_situation == "passthrough" else None
    observed: dict[str, dict[str, dict]] = {}
    with ExitStack() as stack:
        plain = stack.enter_context(api.cgroup(target))
        installed = stack.enter_context(api.redirected_cgroup(target, variant, program=as_redirect))
        if as_redirect is None and installed.variant != variant:
            raise LabError(f"the {variant} variant is not offered on {target.name}: {installed.fallback_reason}")
        accelerated = installed.cgroup
        ours = accelerated if as_redirect is None else None   # the lab's counters, when its program
        guard_pin = (f"{installed.pin_dir}/maps/{redirect.GUARD_COUNTERS_MAP}"
                     if installed.variant == "guarded" else None)
        # situation -> (the app's cgroup, the peer's, the cgroup whose lab counters prove it or None)
        places = {"plain": (plain, plain, ours),
                  "redirected": (accelerated, accelerated, ours),
                  "peer_outside": (accelerated, plain, ours)}
        for shape in redirect.WATCHING:
            theirs = as_watcher if shape == "passthrough" else None
            where = stack.enter_context(api.redirected_cgroup(target, shape, program=theirs)).cgroup
            places[shape] = (where, where, None if theirs else where)
        for situation, (app, peer, counted) in places.items():
            before = redirect.status(target, counted) if counted else None
            # The deliberate break applies where a difference is looked for, not to the reference.
            observed[situation] = run_probes(target, app, peer, behaviours,
                                             broken if situation != "plain" else (),
                                             guard_pin if app == accelerated else None)
            if before is not None:
                check_situation(situation, before, redirect.status(target, counted), len(behaviours),
                                target.name)
            progress(f"{target.name}: {situation}: {len(behaviours)} behaviours probed")
    return observed


# ----------------------------------------------------------------------------- judging

def judge(kernel: str, release: str, observed: dict[str, dict[str, dict]],
          variant: str = "production", patches: frozenset[str] = frozenset()) -> list[Cell]:
    cells = []
    for behaviour in next(iter(observed.values())):
        reference = observed["plain"][behaviour]
        for situation in (s for s in SITUATIONS if s in observed):  # plain always is
            record = observed[situation][behaviour]
            cell = Cell(kernel, behaviour, situation, "pass", observation(record), None,
                        seconds=record.get("seconds"), path=record.get("path"),
                        guard_tcp_bytes=guard_tcp_bytes(record))
            if situation == "plain":
                cell.expected = EXPECTED_PLAIN[behaviour]
                if cell.observed != cell.expected:
                    cell.status = "fail"
                    cell.reason = "plain TCP differs from what Linux TCP does: the probe or the kernel changed"
            else:
                cell.expected = observation(reference)
                compare(cell, release, reference.get("path"), variant, patches)
            cells.append(cell)
    return cells


def guard_tcp_bytes(record: dict) -> int | None:
    """Bytes the guarded variant's guard sent over TCP during a probe (None: no guard)."""
    dumps = record.get("guard_counters")
    if not dumps:
        return None
    before, after = (keys.decode_counters(dumps[when], keys.GUARD_FIELDS) for when in ("before", "after"))
    return keys.guard_tcp_bytes(keys.counters_delta(before, after))


def compare(cell: Cell, release: str, plain_path: dict | None, variant: str = "production",
            patches: frozenset[str] = frozenset()) -> None:
    """Judge a redirected or peer_outside cell against plain TCP's observation (cell.expected)."""
    wrong_path = path_error(cell.situation, cell.path, plain_path, cell.guard_tcp_bytes)
    if wrong_path:
        cell.status, cell.reason = "fail", wrong_path
        return
    if cell.observed != cell.expected:
        defect = defects.explaining(cell.behaviour, cell.situation, release, cell.observed, variant, patches)
        cell.status, cell.reason = ("xfail", defect.describe()) if defect else (
            "fail", "differs from plain TCP on the same kernel; no known kernel defect explains it")
        return
    listed = defects.listed(cell.behaviour, cell.situation, release, variant, patches)
    if listed:
        cell.status, cell.strict = "xpass", not all(d.intermittent for d in listed)
        names = ", ".join(d.name for d in listed)
        cell.reason = (f"behaves like plain TCP although the defect table lists {names} for kernel "
                       f"{release} here: " + ("the table is out of date" if cell.strict else
                                              "an intermittent defect that did not show in this run"))


def path_error(situation: str, path: dict | None, plain_path: dict | None,
               guard_tcp_bytes: int | None = None) -> str | None:
    """Why the kernel's segment counts say the cell was not the situation it names, or None.
    Under the guarded variant, TCP data segments in the redirected situation are the guard's
    doing when its counters say it sent bytes over TCP during that probe, and only then."""
    if not path or not plain_path or None in path.values():
        return (f"no evidence of the path ({path}, plain TCP {plain_path}): the probe did not "
                "report each end's TCP data segments, so the situation is unproven")
    sent = [end for end, segs in plain_path.items() if segs]
    if situation == "redirected":
        over_tcp = {end: segs for end, segs in path.items() if segs}
        if over_tcp and not guard_tcp_bytes:
            return (f"not redirected: TCP data segments {over_tcp} carried payload with both ends in "
                    f"the map (plain TCP: {plain_path}); the sk_msg program did not redirect it")
    elif situation in OVER_TCP:
        missing = [end for end in sent if not path[end]]
        if missing:
            why = ("with the peer outside the map" if situation == "peer_outside"
                   else "where the program only passes messages on")
            return (f"not the {situation} situation: the {' and '.join(missing)} end sent payload in "
                    f"plain TCP ({plain_path}) but no TCP data segment here ({path}): it did not go "
                    f"over TCP, as it must {why}")
    return None


def run(target: Target, kernel: str, behaviours: Sequence[str] = BEHAVIOURS, broken: Sequence[str] = (),
        progress: Callable[[str], None] = print, program: UserProgram | None = None,
        variant: str = "production", patches: frozenset[str] = frozenset(),
        program_situation: str = "redirected") -> list[Cell]:
    """``patches``: the file names of the patches the kernel was built with (its catalog entry),
    so that a defect one of them fixes is not listed for it. ``program`` is judged in
    ``program_situation`` (see ``observe``)."""
    unknown = [name for name in behaviours if name not in EXPECTED_PLAIN]
    if unknown:
        raise LabError(f"unknown behaviour(s) {unknown}; the behaviours are {', '.join(BEHAVIOURS)}")
    missing = redirect.sockmap_missing(target)
    if missing:
        raise LabError(f"the redirect cannot run here: {missing}")
    return judge(kernel, defects.upstream_version(target),
                 observe(target, behaviours, broken, progress, program, variant, program_situation),
                 variant, patches)

