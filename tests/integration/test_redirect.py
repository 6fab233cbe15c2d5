"""The redirect on a real kernel: install, one connection, map contents, data, counters, uninstall.

Runs on every kernel of the matrix (each guest, and the host as ``kernel_host`` when root), each test
in a cgroup it creates (the ``cgroup`` fixture) and in a fresh network namespace (``unshare -n``).
Everything goes through a ``Target`` and the ``scenarios/pair.py`` program.
"""

from __future__ import annotations

import json
import posixpath

import pytest

from pair_checks import assert_no_error, assert_over_tcp, assert_redirected, roles_in_map

from lab import LabError
from lab.bpf import cgroups
from lab.bpf import pins, redirect
from lab.scenario.runner import cookie_mismatches, entry_tuples, run_pair, socket_tuples
from lab.vm.target import Target
from lab.kernel.config import REDIRECT

# Every test here installs BPF programs of the redirect's kind: a kernel built without them
# skips before it boots, with the missing option named.
pytestmark = pytest.mark.requires_kernel_config(*REDIRECT)

NBYTES = 4 << 20  # each direction


def show_programs(installation: redirect.Installation) -> None:
    for prog in installation.programs.values():
        print(f"{installation.variant}: {prog.name} ({prog.type}) id {prog.id} "
              f"verified_insns {prog.verified_insns}")


@pytest.fixture(scope="module")
def plain_segs() -> dict[str, int]:
    """Kernel id -> Tcp OutSegs of one plain TCP connection (no redirect) moving NBYTES each way:
    measured once per kernel, the baseline of every variant's bypass check."""
    return {}


def baseline_out_segs(target: Target, kernel_id: str, measured: dict[str, int]) -> int:
    if kernel_id not in measured:
        pair, _ = run_pair(target, nbytes=NBYTES)
        assert_no_error(pair, target, in_map=())
        assert pair["intact"], pair
        segs = pair["counters_delta"]["tcp_out_segs"]
        assert segs >= 20, f"the baseline sent {segs} TCP segments: the comparison would mean nothing"
        measured[kernel_id] = segs
    return measured[kernel_id]


# ----------------------------------------------------------------------------- one connection

@pytest.mark.parametrize("variant", ["seed", "production", "netns"])
def test_one_connection_two_entries_data_intact(kernel, target, cgroup, plain_segs, variant):
    """Two map entries while the connection is up (each holding its own socket), none after; the
    data intact; no side's payload took a TCP data segment, and during the data phase TCP sends
    (almost) no segments at all: at most a twentieth of a plain connection's (handshake, ACKs, FIN)."""
    if variant == "netns" and not redirect.netns_supported(target):
        pytest.skip(f"bpf_get_netns_cookie not available to sock_ops/sk_msg on {target.kernel_release}")
    installation = redirect.install(target, cgroup, variant)
    show_programs(installation)
    assert installation.variant == variant and installation.fallback_reason is None

    pair, held = run_pair(target, client_cgroup=cgroup, server_cgroup=cgroup,
                          while_open=lambda state: redirect.status(target, cgroup))
    after = redirect.status(target, cgroup)
    print("pair:", json.dumps(pair.get("counters_delta")), "counters:", after["counters"])

    assert_no_error(pair, target, roles_in_map(pair, held["entries"]))
    assert pair["intact"], "payload corrupted or short"
    assert pair["client"]["sent"] == pair["server"]["sent"] == NBYTES
    entries = held["entries"]
    assert len(entries) == 2, entries
    assert entry_tuples(entries) == socket_tuples(pair)
    # each key holds the socket with those addresses (its SO_COOKIE), where values can be read
    mismatches = cookie_mismatches(entries, [pair["client"], pair["server"]])
    assert mismatches == ([] if variant != "seed" else None), mismatches
    assert after["entries"] == [], "entries must disappear when the sockets close"

    if variant == "seed":
        assert all(e["layout"] == "seed" and e["family"] == 1 and e["padding_clean"] for e in entries)
        assert all(e["value_error"] == "No space left on device" for e in entries)
        assert held["counters"] == {}
    else:
        assert all("cookie" in e for e in entries) and len({e["cookie"] for e in entries}) == 2
        counters = after["counters"]
        assert counters["inserted_v4"] == 2 and counters["insert_failed"] == 0
        assert counters["bytes_redirected"] == 2 * NBYTES
        assert counters["msgs_missed"] == 0
    if variant == "netns":
        cookies = {e.get("netns") for e in entries}
        assert len(cookies) == 1 and None not in cookies, entries

    plain = baseline_out_segs(target, kernel.id, plain_segs)
    redirected_segs = pair["counters_delta"]["tcp_out_segs"]
    print(f"{variant}: Tcp OutSegs during {2 * NBYTES} bytes: plain TCP {plain}, redirected "
          f"{redirected_segs}; lo tx packets {pair['counters_delta']['lo_tx_packets']}")
    assert redirected_segs * 20 <= plain
    # per side, from TCP itself: not one segment of payload (a program that let some messages
    # through to TCP would pass a ratio)
    assert_redirected(pair)


# ----------------------------------------------------------------------------- families

# IPv6 and a v4-mapped server are test_scenarios.py's echo-ipv6 and echo-v4mapped (the same
# counters, plus the bypass evidence); the v4-mapped client is only here.
def test_production_v4_mapped_client(target, cgroup):
    redirect.install(target, cgroup, "production")
    pair, held = run_pair(target, family="v4mapped-client", client_cgroup=cgroup, server_cgroup=cgroup,
                          while_open=lambda state: redirect.status(target, cgroup))
    counters = redirect.status(target, cgroup)["counters"]
    print([(p["family"], p["sockname"]) for p in (pair["client"], pair["server"])], counters)
    assert_no_error(pair, target, roles_in_map(pair, held["entries"]))
    assert pair["intact"]
    assert entry_tuples(held["entries"]) == socket_tuples(pair) and len(held["entries"]) == 2
    assert (counters["inserted_v4"], counters["inserted_v6"], counters["inserted_v4mapped"]) == (1, 0, 1)
    assert counters["bytes_redirected"] == 2 * NBYTES and counters["msgs_missed"] == 0


def test_seed_ignores_ipv6(target, cgroup):
    """The seed handles AF_INET only: an IPv6 connection is not inserted and stays plain TCP."""
    redirect.install(target, cgroup, "seed")
    pair, held = run_pair(target, family="ipv6", client_cgroup=cgroup, server_cgroup=cgroup,
                          while_open=lambda state: redirect.status(target, cgroup))
    assert_no_error(pair, target, roles_in_map(pair, held["entries"]))
    assert pair["intact"]
    assert held["entries"] == []
    assert_over_tcp(pair)


# A peer outside the cgroup and a full map: test_scenarios.py's outside-server, outside-client and
# fullmap scenarios (the same counters and map entries, per socket, plus the bypass evidence).


# ----------------------------------------------------------------------------- the loader itself

def test_installs_on_two_cgroups_coexist(target, cgroup):
    with cgroups.dedicated(target) as other:
        try:
            first = redirect.install(target, cgroup, "production")
            second = redirect.install(target, other, "seed")
            assert first.pin_dir != second.pin_dir
            redirect.uninstall(target, other)
            pair, _ = run_pair(target, client_cgroup=cgroup, server_cgroup=cgroup)
            assert pair["intact"]
            assert redirect.status(target, cgroup)["counters"]["bytes_redirected"] == 2 * NBYTES
        finally:
            redirect.uninstall(target, other)


def test_install_twice_is_refused(target, cgroup):
    redirect.install(target, cgroup, "production")
    with pytest.raises(LabError, match="already installed"):
        redirect.install(target, cgroup, "production")


def test_uninstall_after_partial_install(target, cgroup):
    """sockops attached, verdict never attached: uninstall still leaves nothing behind."""
    pin_dir = redirect.new_pin_dir(target, cgroup)
    programs = pins.load(target, redirect.build_object("production"), pin_dir)
    sockops = next(p for p in programs.values() if p.type == "sock_ops")
    target.run(["bpftool", "cgroup", "attach", cgroup, "sock_ops", "pinned", sockops.pin, "multi"], check=True)
    assert [e["id"] for e in redirect.attached_sockops(target, cgroup)] == [sockops.id]

    redirect.uninstall(target, cgroup)
    assert redirect.attached_sockops(target, cgroup) == []
    assert redirect.existing_pin_dirs(target, cgroup) == []
    assert not target.run(["bpftool", "prog", "show", "id", str(sockops.id)]).ok, "program still loaded"


def test_uninstall_detaches_our_program_whose_pins_are_gone(target, cgroup):
    installation = redirect.install(target, cgroup, "production")
    target.run(["rm", "-rf", installation.pin_dir], check=True)
    assert redirect.attached_sockops(target, cgroup), "the cgroup still holds the program"
    redirect.uninstall(target, cgroup)
    assert redirect.attached_sockops(target, cgroup) == []


def test_install_refuses_root_and_missing_cgroups(target):
    mount = cgroups.cgroup2_mount(target)
    with pytest.raises(LabError, match="root cgroup"):
        redirect.install(target, mount)
    with pytest.raises(LabError, match="does not exist"):
        redirect.install(target, posixpath.join(cgroups.LAB_PARENT, "no-such-cgroup"))


def test_load_failures_are_classified(target, cgroup):
    pin_dir = redirect.new_pin_dir(target, cgroup)
    from lab import BPF_DIR
    from lab.bpf import build as bpf

    try:
        with pytest.raises(pins.ObjectRefused) as refused:
            pins.load(target, bpf.build(BPF_DIR / "cases" / "legacy_map_def.bpf.c"), pin_dir)
        print("refused:", refused.value.key_line)
        assert "legacy map definitions" in refused.value.key_line

        with pytest.raises(pins.VerifierRejected) as rejected:
            pins.load(target, bpf.build(BPF_DIR / "cases" / "remote_port_narrow.bpf.c"), pin_dir)
        print("rejected:", rejected.value.program, rejected.value.key_line)
        assert rejected.value.program == "narrow_port"
        assert rejected.value.key_line.startswith("invalid bpf_context access")
        assert "processed" in rejected.value.log
    finally:
        target.run(["rm", "-rf", pin_dir])


def test_auto_picks_netns_when_probed(target, cgroup):
    installation = redirect.install(target, cgroup, "auto")
    expected = "netns" if redirect.netns_supported(target) else "production"
    assert installation.variant == expected
    assert (installation.fallback_reason is None) == (expected == "netns")


def test_explicit_netns_falls_back_with_the_verifiers_reason(target, cgroup):
    if redirect.netns_supported(target):
        pytest.skip(f"{target.kernel_release} offers bpf_get_netns_cookie: no fallback to see here")
    installation = redirect.install(target, cgroup, "netns")
    assert installation.variant == "production" and installation.requested == "netns"
    assert "bpf_get_netns_cookie" in installation.fallback_reason
