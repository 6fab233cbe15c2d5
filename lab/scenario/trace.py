"""Tracepoint and kprobe counts around the data phase of a scenario.

The tracing itself runs on the target, in files: ``scenarios/tracefs.sh`` probes what the kernel
offers and sets up private tracefs instances (one per event, so the per-CPU stats count it exactly)
that a suite's scenario commands share; the scenario (``scenarios/common.py``) reads the counts at
the edges of its data phase and reports the difference in its JSON (``phases.<label>.trace``). This
module decides what to trace on a target and how a scenario command finds the instances.

Tracepoints are global, so every event is narrowed to the scenario:

- ``net:net_dev_xmit``, ``net:netif_receive_skb``: device name starts with the run's tag (the
  scenario renames the loopback of its network namespace to ``<tag><round>``);
- ``tcp:tcp_probe``: source or destination port is the scenario's server port;
- ``tcp:tcp_sendmsg_locked`` (kernels >= 6.13 or so), ``sock:sock_send_length`` (6.12+) and the
  kprobe on ``tcp_bpf_sendmsg``: the scenario's process tree only (set_event_pid + event-fork).

``sock:sock_send_length`` fires for every sendmsg() at the socket layer, redirected or not: it is
not bypass evidence but shows both rounds made the same calls. The kprobe on ``tcp_bpf_sendmsg``
is the positive evidence: it fires only for sockets the redirect took over.
"""

from __future__ import annotations

import secrets
import weakref
from dataclasses import dataclass, field

from lab import LabError
from lab.vm.staging import ensure_on_target
from lab.vm.target import Target

# event -> filter kind understood by tracefs.sh
TRACEPOINTS = {
    "net/net_dev_xmit": "dev",
    "net/netif_receive_skb": "dev",
    "tcp/tcp_probe": "port",
    "tcp/tcp_sendmsg_locked": "pid",
    "sock/sock_send_length": "pid-inet",
}
# Counts that measure TCP/IP work: the redirected round must show (almost) none of them.
BYPASS_EVENTS = ("net/net_dev_xmit", "net/netif_receive_skb", "tcp/tcp_probe", "tcp/tcp_sendmsg_locked")
KPROBE_FUNCTION = "tcp_bpf_sendmsg"
KPROBE_EVENT = f"kprobe:{KPROBE_FUNCTION}"
SCRIPT = "tracefs.sh"

_support_cache: "weakref.WeakKeyDictionary[Target, Support]" = weakref.WeakKeyDictionary()


@dataclass
class Support:
    """What the target's kernel lets us trace (probed once per target)."""

    tracefs: str
    events: list[str] = field(default_factory=list)
    missing: dict[str, str] = field(default_factory=dict)  # event -> why it is not traced
    kprobe: bool = False

    def specs(self) -> list[str]:
        specs = [f"{event}:{TRACEPOINTS[event]}" for event in self.events]
        if self.kprobe:
            specs.append(KPROBE_EVENT)
        return specs

    def as_dict(self) -> dict:
        return {"tracefs": self.tracefs, "events": self.events, "missing": self.missing,
                "kprobe": self.kprobe}


def parse_probe(output: str, release: str = "") -> Support:
    """Parse ``tracefs.sh probe`` output (one ``kind name yes|no [reason]`` line per question)."""
    support = Support(tracefs="")
    for line in output.splitlines():
        words = line.split()
        if not words:
            continue
        if words[0] == "tracefs":
            support.tracefs = words[1]
        elif words[0] == "event" and words[1] in TRACEPOINTS:
            if words[2] == "yes":
                support.events.append(words[1])
            else:
                support.missing[words[1]] = f"no tracepoint {words[1]} in kernel {release}".strip()
        elif words[0] == "kprobe":
            support.kprobe = words[2] == "yes"
            if not support.kprobe:
                support.missing[KPROBE_EVENT] = " ".join(words[3:]) or "no kprobes"
    if not support.tracefs:
        raise LabError(f"could not find or mount tracefs: {output.strip()!r}; mount it with "
                       "`mount -t tracefs tracefs /sys/kernel/tracing`")
    return support


def support(target: Target) -> Support:
    """Which of the wanted tracepoints exist and whether kprobes work, on ``target``."""
    cached = _support_cache.get(target)
    if cached is None:

        script = ensure_on_target(target, SCRIPT)
        result = target.run(["sh", script, "probe", *TRACEPOINTS, KPROBE_EVENT], timeout=60)
        if not result.ok:
            raise LabError(f"tracefs probe failed on {target.name}: {result.stderr.strip()}; "
                           "tracing needs root and tracefs")
        cached = parse_probe(result.stdout, target.kernel_release)
        _support_cache[target] = cached
    return cached


def new_tag() -> str:
    """A short name prefix for this run's loopbacks and tracefs instances (IFNAMSIZ is 16)."""
    return "s" + secrets.token_hex(3)


class Session:
    """Tracing instances kept for many scenario runs (one tag, one server port), then removed.

    Setting instances up and tearing them down costs seconds in a TCG guest (each tracepoint
    (un)registration waits for RCU), so a suite sets them up once. Counts are always on; each
    scenario reports the difference across its data phase, so runs must not overlap.
    """

    def __init__(self, target: Target, tag: str, port: int):
        self.target, self.tag, self.port = target, tag, port
        self.support = support(target)
        self.control: str | None = None

    def __enter__(self) -> "Session":

        self.script = ensure_on_target(self.target, SCRIPT)
        result = self.target.run(["sh", self.script, "start", self.tag, str(self.port),
                                  *self.support.specs()], timeout=120)
        if not result.ok:
            raise LabError(f"could not set up tracefs instances on {self.target.name}: "
                           f"{result.stderr.strip()[-1000:]}")
        self.control = result.stdout.strip().splitlines()[-1]
        return self

    def __exit__(self, *exc) -> None:
        self.target.run(["sh", self.script, "stop", self.tag], timeout=120)

    def wrap(self, command: list[str]) -> list[str]:
        return ["env", f"SOCKREDIR_TRACE_CONTROL={self.control}", *command]
