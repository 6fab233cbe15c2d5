"""pytest-xdist scheduling for the lab's plugin: one kernel's tests on one worker.

A kernel's tests share one guest, so they must run on one worker (two workers would boot the same
kernel twice, and a guest is never shared across processes). The scheduler groups every test
whose id carries a kernel parameter (``[kernel_6_1-seed]``) into that kernel's work unit; any other
test is a unit of its own and goes to whichever worker is free. Units are handed out largest first.

(xdist's own ``--dist loadgroup`` with ``xdist_group`` marks would say the same, but it renames
items through an attribute pytest 9 no longer reads, so its groups are silently ignored there.)
"""

from __future__ import annotations

from xdist.scheduler import LoadScopeScheduling

from lab.kernel.catalog import split_test_name


def scope_of(nodeid: str) -> str:
    """The work unit of a test: its kernel's test id, or the test itself."""
    kernel_test_id = split_test_name(nodeid)[1]
    return kernel_test_id.lower() if kernel_test_id else nodeid


class KernelScheduling(LoadScopeScheduling):
    def _split_scope(self, nodeid: str) -> str:
        return scope_of(nodeid)
