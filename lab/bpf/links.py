"""Attach pinned programs: to a cgroup or a socket map (bpftool), or by a pinned link.

Each attach returns nothing to remember but the command that undoes it. Tracing-side programs
(tracepoint, raw tracepoint, fentry/fexit) are attached by a small stdlib helper on the target that
makes the system calls (``scenarios/attach_link.py``) and pins the link, since bpftool 7.1 cannot;
removing the pin detaches it. Used by the redirect's install (``lab.bpf.redirect``) and by
``lab.api.Loaded`` for a user's objects.
"""

from __future__ import annotations

import json

from lab import LabError
from lab.vm.staging import ensure_on_target
from lab.vm.target import Target

KINDS = ("tracepoint", "raw_tracepoint", "tracing")
# Where an sk_msg / sk_skb program attaches on a socket map by default (bpftool's names).
MAP_ATTACH_TYPES = {"sk_msg": "msg_verdict", "sk_skb": "stream_verdict"}


def to_cgroup(target: Target, cgroup: str, attach_type: str, prog_pin: str) -> list[str]:
    """Attach the program pinned at ``prog_pin`` to ``cgroup`` (beside others: ``multi``);
    returns the command that detaches it."""
    target.run(["bpftool", "cgroup", "attach", cgroup, attach_type, "pinned", prog_pin, "multi"], check=True)
    return ["bpftool", "cgroup", "detach", cgroup, attach_type, "pinned", prog_pin]


def to_map(target: Target, prog_pin: str, attach_type: str, map_pin: str) -> list[str]:
    """Attach the program pinned at ``prog_pin`` to the socket map pinned at ``map_pin``; returns
    the command that detaches it."""
    target.run(["bpftool", "prog", "attach", "pinned", prog_pin, attach_type, "pinned", map_pin], check=True)
    return map_detach(prog_pin, attach_type, map_pin)


def map_detach(prog_pin: str, attach_type: str, map_pin: str) -> list[str]:
    return ["bpftool", "prog", "detach", "pinned", prog_pin, attach_type, "pinned", map_pin]


class LinkRefused(LabError):
    """The kernel refused the attachment; ``reason`` is the helper's failing step and errno."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


def attach(target: Target, name: str, prog_pin: str, kind: str, point: str, link_pin: str) -> None:
    """Attach the program pinned at ``prog_pin`` (called ``name`` in messages) to ``point``
    (``CATEGORY/NAME`` for a tracepoint, ``NAME`` for a raw tracepoint, ``-`` for a tracing
    program: the function it was loaded for) and pin the link at ``link_pin``."""
    if kind not in KINDS:
        raise LabError(f"unknown link kind {kind!r}; one of {', '.join(KINDS)}")
    helper = ensure_on_target(target, "attach_link.py")
    result = target.run(["python3", "-S", helper, prog_pin, kind, point, link_pin])
    if result.ok:
        return
    # The helper prints {"error": "<step>: <errno text>"}; a crash leaves only stderr.
    try:
        reason = json.loads(result.stdout)["error"]
    except (ValueError, KeyError, TypeError):
        reason = result.stderr.strip()[-500:] or f"exit {result.rc}"
    where = point if kind != "tracing" else "its kernel function"
    raise LinkRefused(f"attaching {name} to {where} on {target.name} ({target.kernel_release}) "
                      f"failed: {reason}", reason)
