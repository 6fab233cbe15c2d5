"""Real peers (iperf3, sockperf, redis-benchmark) through the redirect and without it, end to end on
the host (every kernel with --bench-all): every figure is there, and the redirect's counters saw at
least every byte iperf3 received in the redirect runs, so those runs really went through the
redirect. Real programs through the redirect in a guest by default: test_conformance_apps.py (nginx,
redis, a splice proxy on 6.1), and the bench's own workload: test_bench.py."""

import pytest

from lab import api
from lab.bench import peers
from lab.kernel.config import REDIRECT

# Every test here installs BPF programs of the redirect's kind: a kernel built without them
# skips before it boots, with the missing option named.
pytestmark = pytest.mark.requires_kernel_config(*REDIRECT)

# The host suffices by default: the tools are the same on every kernel, a run costs ~20 s on the host
# and ~60 s (about 90 s of CPU) in a TCG guest, and TCG figures say nothing about speed.
KERNELS = ("host",)
# iperf3 and sockperf run 1 s (their least); redis-benchmark gets half the requests of 1 s.
SECONDS = 0.5


def test_real_peers_through_the_redirect(kernel, request):
    if kernel.id not in KERNELS and not request.config.option.bench_all:
        pytest.skip("real peers are measured on the host by default (~60 s per TCG guest); run "
                    "with --bench-all")
    target = request.getfixturevalue("target")  # after the skip: no guest boots for nothing
    with api.cgroup(target) as plain, api.redirected_cgroup(target) as installed:
        before = api.redirect_status(target, installed.cgroup)["counters"]
        records = peers.run_peers(target, plain, installed.cgroup, kernel.id, seconds=SECONDS)
        after = api.redirect_status(target, installed.cgroup)["counters"]

    failed = [f"{r['detail']} over {r['transport']}: {r['error'] or r['value']}" for r in records
              if r["error"] or not r["value"] or r["value"] <= 0]
    assert not failed, "\n".join(failed)
    assert {r["tool"] for r in records} == {"iperf3", "sockperf-pingpong", "sockperf-throughput",
                                            "redis-benchmark"}
    by_transport = {t: sorted(r["detail"] for r in records if r["transport"] == t) for t in peers.TRANSPORTS}
    assert by_transport["tcp"] == by_transport["redirect"] and len(by_transport["tcp"]) == 7

    received = sum(r["bytes"] for r in records if r["tool"] == "iperf3" and r["transport"] == "redirect")
    redirected = after["bytes_redirected"] - before["bytes_redirected"]
    assert received > 0 and redirected >= received, (redirected, received)
