"""``sockredir-lab kernels check`` on every kernel of the matrix and the host, as a user runs it:
each catalogued Debian kernel has everything the lab and the redirect use (they boot and carry the
redirect in the rest of this suite, so a MISSING here would be a wrong check), the 5.10 kernel is
judged with the stream parser it needs, and the host's missing kprobes are reported (FACTS: the
host kernel has none) without failing the check. No guest is booted."""

from __future__ import annotations

import json
import subprocess
import sys

from lab.pytest_plugin import HostKernel


def check(kernel_id: str) -> tuple[int, dict]:
    done = subprocess.run([sys.executable, "-m", "lab.cli", "kernels", "check", kernel_id, "--json"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode in (0, 1), done.stderr
    return done.returncode, json.loads(done.stdout)


def test_kernels_check_reports_what_the_kernel_has(kernel):
    code, report = check(kernel.id)
    capabilities = {c["name"]: c for c in report["capabilities"]}
    missing = {name for name, c in capabilities.items() if not c["ok"]}
    if isinstance(kernel, HostKernel):
        assert report["source"] in ("/proc/config.gz", f"/boot/config-{kernel.release}")
        assert missing <= {"kprobes"}, missing
        assert code == 0  # kprobes only add evidence; the lab and the redirect work without them
        return
    # Debian's packages keep it in boot/config-REL; 7.x's split packages in lib/modules/REL/config
    assert report["source"].endswith((f"/boot/config-{kernel.release}", f"/{kernel.release}/config"))
    assert missing == set(), missing
    assert code == 0
    sockmap = capabilities["sockmap"]["options"]
    assert sockmap["CONFIG_NET_SOCK_MSG"] == "y"
    old = tuple(int(p) for p in kernel.release.split(".")[:2]) < (5, 13)
    assert ("CONFIG_BPF_STREAM_PARSER" in sockmap) == old, sockmap  # judged only where it matters
    assert capabilities["virtio-blk"]["options"]["CONFIG_VIRTIO_BLK"] in ("y", "m")
