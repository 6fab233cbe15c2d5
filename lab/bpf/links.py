"""Attach a pinned tracing-side program (tracepoint, raw tracepoint, fentry/fexit) and pin its link.

bpftool 7.1 cannot attach these, so a small stdlib helper on the target makes the system calls
(``scenarios/attach_link.py``) and pins the link; removing the pin detaches it. Used by
``lab.api.Loaded`` for a user's objects and by the guarded redirect for its read hook.
"""

from __future__ import annotations

import json

from lab import LabError
from lab.vm.staging import ensure_on_target
from lab.vm.target import Target

KINDS = ("tracepoint", "raw_tracepoint", "tracing")


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
