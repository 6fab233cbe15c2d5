"""The redirect and its bypass proof through bcc, in a guest given its kernel's Debian headers.

bcc compiles its C at run time with its embedded clang, which under TCG takes tens of seconds per
program (figures in docs/scenarios.md), so by default this runs on one kernel only; ``--bcc-all``
runs it on every kernel. Each run boots its own guest with the headers disk (lab/kernel/headers.py) attached,
mounts it and runs ``scenarios/bcc_sockmap.py``: a baseline connection, then the same connection with
the bcc-loaded redirect. The numbers checked come from that one run, the baseline being the yardstick.
"""

from __future__ import annotations

import json

import pytest

from lab import SCENARIOS_DIR, LabError, api
from lab.kernel import headers
from lab.pytest_plugin import HostKernel
from lab.kernel.config import REDIRECT

# Every test here installs BPF programs of the redirect's kind: a kernel built without them
# skips before it boots, with the missing option named.
pytestmark = pytest.mark.requires_kernel_config(*REDIRECT)

DEFAULT_KERNEL = "6.1"
# Tracer + redirect compile measured on 6.1 under TCG (docs/scenarios.md, "bcc"): the skip reason.
TCG_COMPILE_SECONDS = 12
FILES = ("bcc_sockmap.py", "bcc_sockmap.bpf.c", "bcc_tracer.bpf.c", "pair.py", "common.py")
REMOTE_DIR = "/root/bcc-scenario"
# Loopback packets in the data phase with the redirect, as a share of the baseline's: the same
# yardstick as the scenario suite. The tracer counts also cover connect (a handful of packets).
DATA_PHASE_MAX_SHARE = 0.01
WHOLE_CONNECTION_MAX_SHARE = 0.05


@pytest.fixture(scope="module")
def bcc_result(kernel, lab, guest_image):
    """One guest and one run per kernel, shared by the checks below (a run costs a minute)."""
    if isinstance(kernel, HostKernel):
        pytest.skip("bcc runs in guests given their kernel's Debian headers; the host has none")
    if kernel.id != DEFAULT_KERNEL and not lab.config.option.bcc_all:
        pytest.skip(f"bcc run-time compile costs {TCG_COMPILE_SECONDS} s under TCG; "
                    f"run with --bcc-all")
    artifacts = lab.artifacts / "bcc" / kernel.id
    artifacts.mkdir(parents=True, exist_ok=True)
    entry = lab.catalog.get(kernel.id)
    try:
        disk, missing, broken = headers.ensure_headers(entry, kernel, progress=lab.progress), None, None
    except headers.HeadersUnavailable as exc:  # e.g. 6.18.15: trixie-backports dropped its headers
        disk, missing, broken = None, str(exc), None
    except LabError as exc:
        disk, missing, broken = None, None, str(exc)
    if missing:
        pytest.skip(missing)
    if broken:
        pytest.fail(broken, pytrace=False)
    with api.guest(kernel, lab.settings, artifacts / "guest", extra_disks=[disk],
                   image=guest_image) as guest:
        target = guest.target
        source = headers.mount_headers(target)
        for name in FILES:
            target.put(SCENARIOS_DIR / name, f"{REMOTE_DIR}/{name}")
        run = target.run(["env", f"BCC_KERNEL_SOURCE={source}", "python3",
                          f"{REMOTE_DIR}/bcc_sockmap.py"], timeout=1200)
    (artifacts / "bcc_sockmap.stderr.txt").write_text(run.stderr)
    try:
        result = json.loads(run.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        pytest.fail(f"bcc_sockmap.py printed no JSON (exit {run.rc}):\n{run.stderr[-3000:]}",
                    pytrace=False)
    (artifacts / "bcc_sockmap.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"kernel {kernel.id}: compile seconds {result['compile_seconds']}")
    for name in ("baseline", "redirect"):
        if name in result:
            print(f"{name}: tracer {result[name]['counts']}, "
                  f"data phase {result[name]['pair'].get('counters_delta')}")
    assert result["error"] is None, f"{result['error']}\n{run.stderr[-3000:]}"
    return result


def test_bcc_redirect_two_entries_and_intact(bcc_result):
    redirect = bcc_result["redirect"]
    assert redirect["pair"]["error"] is None, redirect["pair"]
    assert redirect["pair"]["intact"], "bytes differ under the bcc-loaded redirect"
    assert bcc_result["baseline"]["pair"]["intact"], "bytes differ without the redirect"
    assert redirect["map_open"]["entries"] == 2, redirect["map_open"]
    assert redirect["map_closed"]["entries"] == 0, redirect["map_closed"]


def test_bcc_tracer_shows_the_bypass(bcc_result):
    baseline, redirect = bcc_result["baseline"], bcc_result["redirect"]
    for name, round_ in (("baseline", baseline), ("redirect", redirect)):
        assert "counters_delta" in round_["pair"], f"{name}: the connection failed: {round_['pair']}"
    assert redirect["counts"]["tcp_bpf_sendmsg"] > 0, "kprobe tcp_bpf_sendmsg never fired"
    assert baseline["counts"]["tcp_bpf_sendmsg"] == 0, "tcp_bpf_sendmsg fired without the redirect"
    base_lo = baseline["pair"]["counters_delta"]["lo_tx_packets"]
    assert base_lo > 0, "the baseline sent nothing over loopback: no yardstick"
    assert redirect["pair"]["counters_delta"]["lo_tx_packets"] <= DATA_PHASE_MAX_SHARE * base_lo
    for counter in ("net_dev_xmit_lo", "netif_receive_skb_lo", "tcp_probe"):
        assert baseline["counts"][counter] > 0, f"{counter}: the tracer saw no baseline traffic"
        assert redirect["counts"][counter] <= WHOLE_CONNECTION_MAX_SHARE * baseline["counts"][counter], \
            f"{counter}: {redirect['counts'][counter]} with the redirect vs {baseline['counts'][counter]}"
