"""Kernel splats in a guest's dmesg: the one scanner the pytest plugin and the suite share.

A warning, oops or sanitizer report during a test means the kernel misbehaved even if the test's
own checks passed (the libbpf CI and little-vm-helper treat them the same way), so a splat fails
the test or the suite's kernel.
"""

from __future__ import annotations

import re

SPLAT_RE = re.compile(r"\b(BUG:|WARNING:|Oops|KASAN|UBSAN|general protection fault|Call Trace:)")


def find_splats(dmesg: str) -> list[str]:
    """The lines of ``dmesg`` that report a kernel splat, in order."""
    return [line for line in dmesg.splitlines() if SPLAT_RE.search(line)]
