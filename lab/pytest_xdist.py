"""pytest-xdist scheduling for the lab's plugin: one kernel's tests on one worker.

A kernel's tests share one guest, so they must run on one worker (two workers would boot the same
kernel twice, and a guest is never shared across processes). The scheduler groups every test
whose id carries a kernel parameter (``[kernel_6_1-seed]``) into that kernel's work unit; any other
test is a unit of its own and goes to whichever worker is free. Units are handed out largest first.

(xdist's own ``--dist loadgroup`` with ``xdist_group`` marks would say the same, but it renames
items through an attribute pytest 9 no longer reads, so its groups are silently ignored there.)
"""

from __future__ import annotations

import re

from xdist.scheduler import LoadScopeScheduling

KERNEL_PARAM_RE = re.compile(r"\[(?:[^\]]*-)?(kernel_[0-9a-z_]+)(?:-[^\]]*)?\]$", re.IGNORECASE)


class KernelScheduling(LoadScopeScheduling):
    def _split_scope(self, nodeid: str) -> str:
        match = KERNEL_PARAM_RE.search(nodeid)
        return match.group(1).lower() if match else nodeid
