"""The kernel-fixes/ reproducers on every kernel: standalone C programs in the kernel selftests'
style (kernel-fixes/selftests/), built here once, run on the target as root.

Judged by the defect table (lab/conformance/defects.py): on a kernel the table lists the defect
for, the reproducer must fail with its own "not ok" line (an xfail naming the defect), and passing
there is a strict xpass (the table is out of date), or for an intermittent defect a non-strict
one (it may not show in a given run); on a kernel built with the fix (its catalog
entry's ``patches``) the defect is not listed and the reproducer must pass. A skip (exit 4: the
kernel cannot load the program) is a skip with the reproducer's reason.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest

from lab import KERNEL_FIXES_DIR
from lab.conformance import defects
from lab.vm.target import RUN_DIR

REPRODUCERS = {  # binary -> (defect, its behaviour and situation in the table)
    "sockmap_waitall": ("waitall-ignored", "msg_waitall", "redirected"),
    "sockmap_waitall_verdict": ("waitall-ignored-verdict", "msg_waitall", "verdict"),
    "sockmap_close_reset": ("close-without-reset", "close_with_unread_data", "redirected"),
    "sockmap_blocking_recv": ("blocking-eagain", "blocking_recv_stream", "peer_outside"),
    "sockmap_rcvlowat": ("rcvlowat-ignored", "so_rcvlowat", "redirected"),
    "sockmap_splice_read": ("splice-read", "splice_from_socket", "redirected"),
}
OBJECT = "sockmap_redirect.bpf.o"


@pytest.fixture(scope="session")
def reproducers(tmp_path_factory):
    """The reproducers built on the host (static, so any guest runs them)."""
    out = tmp_path_factory.mktemp("kernel-fixes")
    shutil.copytree(KERNEL_FIXES_DIR / "selftests", out, dirs_exist_ok=True)
    done = subprocess.run(["make", "-s", "-C", str(out)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.fail(f"building kernel-fixes/selftests failed: {done.stderr.strip()[-1500:]}", pytrace=False)
    return out


@pytest.mark.parametrize("binary", sorted(REPRODUCERS))
def test_reproducer(target, reproducers, binary, request):
    defect_name, behaviour, situation = REPRODUCERS[binary]
    remote = f"{RUN_DIR}/kernel-fixes"
    target.put(reproducers / OBJECT, f"{remote}/{OBJECT}")
    target.put(reproducers / binary, f"{remote}/{binary}")
    target.run(["chmod", "+x", f"{remote}/{binary}"], check=True)
    result = target.run([f"{remote}/{binary}"], timeout=60)
    verdict = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    if result.rc == 4:
        pytest.skip(f"{binary}: {verdict}")
    assert result.rc in (0, 1), f"{binary} exited {result.rc}: {result.stdout}{result.stderr}"
    listed = [d for d in defects.listed(behaviour, situation, defects.upstream_version(target),
                                        patches=target.kernel_patches)
              if d.name == defect_name]
    if listed:
        if result.rc == 1 and verdict.startswith("not ok 1"):
            pytest.xfail(f"{verdict} - {listed[0].describe()}")
        if listed[0].intermittent:  # it may not show in a given run: an xpass to report, not a failure
            request.node.add_marker(pytest.mark.xfail(reason=f"{defect_name} is intermittent and did "
                                                      f"not show in this run ({verdict})", strict=False))
            return
        pytest.fail(f"{binary} passed on {target.kernel_release}, which the defect table lists for "
                    f"{defect_name}: the table is out of date ({verdict})", pytrace=False)
    assert result.rc == 0, (f"{binary} failed on {target.kernel_release}, built with the fix for "
                            f"{defect_name}: {verdict}")
