"""Known kernel defects of redirected (sockmap-held) TCP sockets: a difference from plain TCP that
one of these explains is an ``xfail`` naming it; any other difference is a failure.

Each entry names the upstream fix, report, or the upstream commit whose code carries the defect
(``604326b41a6f "bpf, sockmap: convert to generic sk_msg interface"``, v4.20, introduced
``tcp_bpf_recvmsg``: upstream fixes to that path cite it in their Fixes: tags), the kernel versions
it affects (stable series by patch level where a fix was backported), and the symptom it explains:
an entry only covers the difference it describes, so another failure of the same behaviour is still
a failure. Research notes with the sources: docs/compatibility.md.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable

Version = tuple[int, int, int]
TCP_BPF_ORIGIN = ('604326b41a6f "bpf, sockmap: convert to generic sk_msg interface" (v4.20) '
                  "introduced tcp_bpf_recvmsg")


@dataclass(frozen=True)
class Defect:
    name: str
    behaviours: tuple[str, ...]
    situations: tuple[str, ...]
    symptom: str
    matches: Callable[[object], bool]          # the observation this defect explains
    reference: str
    introduced: Version = (4, 20, 0)
    fixed: Version | None = None               # mainline release with the fix
    stable_introduced: dict = field(default_factory=dict)   # (major, minor) -> first patch level
    stable_fixed: dict = field(default_factory=dict)        # (major, minor) -> patch level of the backport
    # Shows in some runs only (a race): where the kernel is affected and a run behaves like plain
    # TCP, the cell is a non-strict xpass (reported, not failed); a defect that always shows
    # makes such a cell a strict xpass, a failure saying the table is out of date.
    intermittent: bool = False
    # The lab's variants whose program keeps the symptom from an application (the guarded
    # variant's backpressure): under them the defect is not listed, so showing it is a failure.
    worked_around_by: tuple[str, ...] = ()
    # The project's patch that fixes it (kernel-fixes/NAME): a kernel built with it is not affected.
    fix_patch: str | None = None

    def affects(self, version: Version) -> bool:
        series = version[:2]
        first = series + (self.stable_introduced[series],) if series in self.stable_introduced else self.introduced
        fix = series + (self.stable_fixed[series],) if series in self.stable_fixed else self.fixed
        return first <= version and (fix is None or version < fix)

    def describe(self) -> str:
        fixed = f"fixed in {_v(self.fixed)}" if self.fixed else "not fixed upstream"
        stable = (" (stable: " + ", ".join(f"{_v(s + (p,))}" for s, p in sorted(self.stable_fixed.items())) + ")"
                  if self.stable_fixed else "")
        return f"kernel defect {self.name}: {self.symptom}; {self.reference}; {fixed}{stable}"


def _v(version) -> str:
    return ".".join(str(part) for part in version).removesuffix(".0")


def _keys(observed) -> set | None:
    return set(observed) if isinstance(observed, dict) else None


def _blocking_recv_eagain(seen) -> bool:
    """blocking_recv: every call returned its 100 bytes or failed with EAGAIN, at least one
    failed; blocking_recv_stream: the read ended with EAGAIN. A short read, another errno, an
    exception or a hang is not this defect."""
    if _keys(seen) == {"result"}:
        return seen["result"] == "EAGAIN"
    if _keys(seen) != {"outcomes"} or not isinstance(seen["outcomes"], dict):
        return False
    outcomes = seen["outcomes"]
    return (set(outcomes) <= {"100 bytes", "EAGAIN"} and outcomes.get("EAGAIN", 0) >= 1
            and sum(outcomes.values()) == 20)


def _waitall_short(seen) -> bool:
    """msg_waitall: recv(4096, MSG_WAITALL) returned part of the 4096 bytes, not all of them."""
    return (_keys(seen) == {"returned", "intact"} and isinstance(seen["returned"], int)
            and 0 < seen["returned"] < 4096 and seen["intact"] is False)


# What the write-readiness probes see of a sender that is never pushed back (scenarios/conformance.py).
NO_BACKPRESSURE_WRITES = {
    "epollout_level_after_drain": {"filled_by": "cap", "before_drain": ["OUT"], "after_drain": ["OUT"]},
    "epollout_edge_after_drain": {"filled_by": "cap", "before_drain": ["OUT"], "after_drain": [],
                                  "no_new_space": []},
    "blocking_writer_woken": {"blocked_until_read": False, "completed": True, "intact": True},
    "siocoutq_drains": {"filled_by": "cap", "waiting_when_full": False, "after_drain": 0},
}

# kernel-fixes/: the project's patches for defects below (git format-patch names)
WAITALL_FIX = "0001-tcp_bpf-honour-MSG_WAITALL-in-tcp_bpf_recvmsg.patch"
CLOSE_RESET_FIX = "0002-bpf-sockmap-reset-a-TCP-connection-closed-with-unrea.patch"
BLOCKING_FIX = "0003-tcp_bpf-keep-waiting-after-a-wake-up-that-brought-no.patch"
RCVLOWAT_FIX = "0004-tcp_bpf-honour-SO_RCVLOWAT-in-poll-readiness.patch"
WAITALL_PARSER_FIX = "0005-tcp_bpf-honour-MSG_WAITALL-in-tcp_bpf_recvmsg_parser.patch"
SPLICE_FIX = "0006-tcp-splice-from-a-socket-in-a-sockmap-through-its-recvmsg.patch"

KNOWN: tuple[Defect, ...] = (
    Defect("fionread-sockmap", ("fionread", "fionread_after_partial_read"), ("redirected",),
           "FIONREAD/SIOCINQ reports 0 while redirected data waits in the psock's ingress_msg queue",
           lambda seen: seen == {"fionread": 0},
           'fixed by 929e30f93125 "bpf, sockmap: Fix FIONREAD for sockmap" (first reported by '
           'Pengcheng Yang, "tcp: Add the data length in skmsg to SIOCINQ ioctl", bpf list, 2023-11)',
           fixed=(7, 0, 0), stable_fixed={(6, 6): 128, (6, 12): 75, (6, 18): 14, (6, 19): 4}),
    Defect("fionread-no-verdict", ("fionread", "fionread_after_partial_read"), ("peer_outside", "passthrough"),
           "since the FIONREAD fix, FIONREAD counts only ingress_msg on a socket without a verdict "
           "program, so bytes that arrived over TCP read as 0 (nginx, Java, .NET clients stall: "
           "grafana/beyla#2941; an sk_msg program that only passes messages is enough)",
           lambda seen: seen == {"fionread": 0},
           'regression of 929e30f93125; fixed by 04af4efde58a "bpf, sockmap: Account for receive '
           'queue in FIONREAD without a verdict program" (bpf tree, 2026-07; 7.2 passes here; '
           "in 6.12 stable by 6.12.117, which passes here: a strict xpass found it on 2026-12-07, "
           "the release of the backport is not known here, so 6.12.75-116 count as affected)",
           introduced=(7, 0, 0), fixed=(7, 2, 0),
           stable_introduced={(6, 6): 128, (6, 12): 75, (6, 18): 14, (6, 19): 4},
           stable_fixed={(6, 12): 117}),
    Defect("fionread-verdict", ("fionread", "fionread_after_partial_read"), ("verdict",),
           "FIONREAD/SIOCINQ reports 0 on a socket whose map has an sk_skb verdict program: the skb "
           "it passes moves to the psock's ingress_msg queue, which FIONREAD did not count, with "
           "copied_seq already advanced past it",
           lambda seen: seen == {"fionread": 0},
           "the same root as fionread-sockmap (929e30f93125 made FIONREAD count ingress_msg); seen "
           "on 5.10.223 here, while 6.1.176 and later pass here (their verdict path leaves copied_seq "
           "to the reader); which release between changed it is not known here, so the table counts "
           "every release before 6.1 as affected",
           fixed=(6, 1, 0)),
    Defect("splice-read", ("splice_from_socket",), ("redirected", "verdict"),
           "splice(2) from a redirected socket never sees the data (tcp_splice_read reads only "
           "sk_receive_queue; tcp_bpf has no splice_read): blocks, or returns 0 at EOF, so a splicing "
           "proxy forwards nothing and sees a normal end of stream (silent data loss); an sk_skb "
           "verdict program that passes every skb moves TCP's data to the same queue",
           lambda seen: _keys(seen) == {"hung"} or seen == {"spliced": 0, "intact": True},
           'reproducer: github.com/jschwinger233/bpf_msg_redirect_bug_reproducer ("Splice reads 0 '
           'bytes", 6.5 - bpf-next 6.9); dae disabled sockmap for it (daeuniverse/dae#518); fix '
           'proposed, not merged: Vincent Whitchurch, "sockmap: Fix reading with splice(2)" v3, '
           "2025-07-09; fixed here by kernel-fixes/" + SPLICE_FIX, fix_patch=SPLICE_FIX),
    Defect("no-backpressure", ("nonreading_peer", *NO_BACKPRESSURE_WRITES), ("redirected",),
           "a redirecting sender gets no EAGAIN from a peer that does not read: bpf_tcp_ingress "
           "queues into ingress_msg without a receive-buffer limit (so it is always writable, never "
           "blocks, and its SIOCOUTQ stays empty)",
           lambda seen: seen in ({"stopped_by": "cap", "queued_under_16mib": False},
                                 {"stopped_by": "ENOMEM", "queued_under_16mib": False},
                                 *NO_BACKPRESSURE_WRITES.values()),
           "cilium/cilium#6431 (sockmap redirect lacks tcp_rmem/tcp_wmem accounting; closed 2022 "
           '"still a few problems about what to do when limits are reached") and #6438; '
           'd888b7af7c14 "tcp_bpf: Add sk_rmem_alloc related logic" accounts, does not limit',
           worked_around_by=("guarded",)),
    Defect("blocking-eagain", ("blocking_recv", "blocking_recv_stream"),
           ("redirected", "peer_outside", "passthrough", "verdict"),
           "a blocking recv() fails with EAGAIN: tcp_bpf_recvmsg (and, with an sk_skb verdict "
           "program, tcp_bpf_recvmsg_parser) waits once (tcp_msg_wait_data) and returns -EAGAIN when "
           "that wait ends without data in the psock, e.g. woken by write space on the shared wait "
           "queue while data flows both ways, or by an skb the verdict program has not moved into "
           "the psock yet, where tcp_recvmsg keeps waiting; it is the receive path of every socket "
           "in a sockmap, so a pass-only sk_msg program brings it too",
           lambda seen: _blocking_recv_eagain(seen),
           f"{TCP_BPF_ORIGIN}; 5b2c5540b811 \"bpf, sockmap: Fix return codes from "
           "tcp_bpf_recvmsg_parser()\" (2022) fixed the parser's returns for a closed or "
           "non-blocking socket but kept the -EAGAIN after a wait; "
           "intermittent: blocking_recv_stream (32 MiB both ways) shows it in most host runs, "
           "with a verdict program on the host once in CI (2026-12-08), and "
           "a one-vCPU guest's transfers both ways often (5.10's outside-* scenarios in 3 of 6); "
           "fixed by kernel-fixes/" + BLOCKING_FIX,
           intermittent=True, fix_patch=BLOCKING_FIX),
    Defect("waitall-ignored", ("msg_waitall",), ("redirected",),
           "recv(MSG_WAITALL) returns what the first wake-up found: tcp_bpf_recvmsg has no "
           "MSG_WAITALL loop",
           _waitall_short,
           f"{TCP_BPF_ORIGIN}; no fix or report upstream as of 2026-12 (seen on 5.10-7.2 here); "
           "fixed by kernel-fixes/" + WAITALL_FIX, fix_patch=WAITALL_FIX),
    Defect("waitall-ignored-verdict", ("msg_waitall",), ("verdict",),
           "recv(MSG_WAITALL) returns what the first wake-up found on a socket whose map has an "
           "sk_skb verdict program: its receive path, tcp_bpf_recvmsg_parser, has no MSG_WAITALL "
           "loop either (kernel-fixes/0001 fixes tcp_bpf_recvmsg only)",
           _waitall_short,
           f"{TCP_BPF_ORIGIN}; no fix or report upstream as of 2026-12 (seen on the host 6.18 and "
           "6.12 here); fixed by kernel-fixes/" + WAITALL_PARSER_FIX, fix_patch=WAITALL_PARSER_FIX),
    Defect("rcvlowat-ignored", ("so_rcvlowat",), ("redirected",),
           "poll/select report a redirected socket readable below SO_RCVLOWAT (tcp_bpf readiness "
           "tests only that ingress_msg is non-empty)",
           lambda seen: seen == {"readable_below_lowat": True, "readable_above_lowat": True},
           f"{TCP_BPF_ORIGIN}; no fix or report upstream as of 2026-12 (seen on 5.10-7.2 here); "
           "fixed by kernel-fixes/" + RCVLOWAT_FIX, fix_patch=RCVLOWAT_FIX),
    Defect("close-without-reset", ("close_with_unread_data",), ("redirected", "verdict"),
           "closing a socket whose redirected data was never read sends FIN, not RST (tcp_close "
           "looks for unread data in sk_receive_queue only), so the sender sees EOF and its data "
           "is silently dropped; the same for data an sk_skb verdict program passed into the psock",
           lambda seen: _keys(seen) == {"recv", "send"} and seen["recv"] == "EOF"
           and seen["send"] in ("sent", "EPIPE", "ECONNRESET"),
           f"{TCP_BPF_ORIGIN}; no fix or report upstream as of 2026-12 (seen on 5.10-7.2 here); "
           "fixed by kernel-fixes/" + CLOSE_RESET_FIX, fix_patch=CLOSE_RESET_FIX),
)


def upstream_version(target) -> str:
    """The upstream version the kernel is built from: Debian names 6.1 kernels "6.1.0-50-..." and
    says the real patch level ("... SMP PREEMPT_DYNAMIC Debian 6.1.176-1") only at the end of
    /proc/version; defects fixed in a stable series are judged by that patch level."""
    return version_from(target.read_text("/proc/version") or "", target.kernel_release)


def version_from(proc_version: str, release: str) -> str:
    """The "Debian X.Y.Z" of /proc/version that belongs to this kernel's series, else the release.
    /proc/version also names the compiler ("gcc-12 (Debian 12.2.0-14) 12.2.0"): a kernel built
    here from source has only that one, which is no kernel version (its release, "6.12.57", is)."""
    try:
        series = kernel_version(release)[:2]
    except ValueError:  # no release known: any version it names
        series = None
    versions = [v for v in re.findall(r"Debian (\d+\.\d+\.\d+)", proc_version)
                if series is None or kernel_version(v)[:2] == series]
    return versions[-1] if versions else release


def kernel_version(release: str) -> Version:
    match = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", release)
    if not match:
        raise ValueError(f"not a kernel release: {release!r}")
    return int(match.group(1)), int(match.group(2)), int(match.group(3) or 0)


def by_name(name: str) -> Defect:
    for defect in KNOWN:
        if defect.name == name:
            return defect
    raise KeyError(f"no known defect {name!r}; the known ones are {', '.join(d.name for d in KNOWN)}")


def listed(behaviour: str, situation: str, release: str, variant: str = "production",
           patches: frozenset[str] = frozenset()) -> list[Defect]:
    """The known defects the table says act on this behaviour, situation and kernel, under the
    lab's ``variant`` (one that works a defect around is not affected by it), on a kernel built
    with ``patches`` (file names: one of kernel-fixes/ fixes its defect)."""
    version = kernel_version(release)
    return [defect for defect in KNOWN
            if behaviour in defect.behaviours and situation in defect.situations and defect.affects(version)
            and variant not in defect.worked_around_by and defect.fix_patch not in patches]


def explaining(behaviour: str, situation: str, release: str, observed: object,
         variant: str = "production", patches: frozenset[str] = frozenset()) -> Defect | None:
    """The known defect that explains ``observed`` for this behaviour, situation and kernel: its
    exact symptom (an exception, a hang or another shape of the same field is not)."""
    return next((d for d in listed(behaviour, situation, release, variant, patches) if d.matches(observed)),
                None)
