"""The suite's judging and the trace plumbing, without a VM: synthetic phases and probe outputs."""

from __future__ import annotations

import importlib.util
import sys

import pytest

from lab import LabError, SCENARIOS_DIR
from lab.scenario import checks
from lab.scenario import definitions as scenario_checks
from lab.scenario import suite
from lab.scenario import trace
from lab.per_kernel import KernelRun


def load_common():
    spec = importlib.util.spec_from_file_location("scenario_common", SCENARIOS_DIR / "common.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("scenario_common", module)
    spec.loader.exec_module(module)
    return module


class FakeEnv:
    """What check_bypass/check_kprobe read from an Env: the trace support."""

    def __init__(self, events=("net/net_dev_xmit", "tcp/tcp_probe"), kprobe=True):
        self.trace = trace.Support(tracefs="/t", events=list(events), kprobe=kprobe,
                                   missing={} if kprobe else {trace.KPROBE_EVENT: "no kprobes"})


def view(name, lo, segs, events=None, retrans=0):
    phase = {"seconds": 1.0, "counters": {"lo_tx_packets": lo, "tcp_out_segs": segs,
                                          "tcp_retrans_segs": retrans},
             "trace": events or {}}
    return checks.RoundView(name, {"phases": {"data": phase}, "results": {}})


def test_bypass_passes_at_one_percent_and_fails_above():
    env = FakeEnv()
    events = {"net/net_dev_xmit": 1000, "tcp/tcp_probe": 900}
    ok = checks.Verdict("x")
    checks.check_bypass(ok, env, view("baseline", 1000, 1000, events),
                       view("redirect", 10, 10, {"net/net_dev_xmit": 10, "tcp/tcp_probe": 9}))
    assert ok.status == "pass", ok.failures
    assert ok.figures["lo pkts"] == "10/1000"

    leak = checks.Verdict("x")
    checks.check_bypass(leak, env, view("baseline", 1000, 1000, events),
                       view("redirect", 11, 0, {"net/net_dev_xmit": 0, "tcp/tcp_probe": 0}))
    assert leak.status == "fail"
    assert any(f.startswith("lo packets in the data phase: 11 with the redirect") for f in leak.failures)


def test_bypass_allows_protocol_packets_only_for_packet_counts():
    env = FakeEnv(events=("tcp/tcp_sendmsg_locked",))
    verdict = checks.Verdict("x")
    checks.check_bypass(verdict, env, view("baseline", 1000, 1000, {"tcp/tcp_sendmsg_locked": 200}),
                       view("redirect", 700, 700, {"tcp/tcp_sendmsg_locked": 3}),
                       protocol_packets=700)
    assert [f.split(":")[0] for f in verdict.failures] == ["tcp/tcp_sendmsg_locked in the data phase"]


def test_bypass_allows_retransmitted_control_packets_in_packet_counts_only():
    # halfclose on 6.12, once: a FIN sent again (5 loopback packets for 4 FIN/ACKs, OutSegs 4).
    env = FakeEnv(events=("net/net_dev_xmit",))
    baseline = view("baseline", 66, 66, {"net/net_dev_xmit": 66})
    again = checks.Verdict("x")
    checks.check_bypass(again, env, baseline, view("redirect", 5, 4, {"net/net_dev_xmit": 5}, retrans=1),
                        protocol_packets=4)
    assert again.status == "pass", again.failures
    assert again.figures["retransmitted"] == 1
    unexplained = checks.Verdict("x")
    checks.check_bypass(unexplained, env, baseline, view("redirect", 5, 4, {"net/net_dev_xmit": 5}),
                        protocol_packets=4)
    assert [f.split(":")[0] for f in unexplained.failures] == [
        "lo packets in the data phase", "net/net_dev_xmit in the data phase"]
    # OutSegs counts no retransmission, so retransmissions buy it nothing.
    segments = checks.Verdict("x")
    checks.check_bypass(segments, env, baseline, view("redirect", 5, 6, {"net/net_dev_xmit": 5}, retrans=2),
                        protocol_packets=4)
    assert [f.split(":")[0] for f in segments.failures] == ["Tcp OutSegs in the data phase"]
    assert "+ 4 handshake/FIN packets)" in segments.failures[0]


def test_bypass_refuses_a_meaningless_baseline():
    verdict = checks.Verdict("x")
    checks.check_bypass(verdict, FakeEnv(events=()), view("baseline", 10, 10), view("redirect", 0, 0))
    assert verdict.status == "fail"
    assert "too few to show a 1% ratio" in verdict.failures[0]


def test_kprobe_must_be_silent_without_the_redirect():
    env = FakeEnv(events=())
    verdict = checks.Verdict("x")
    checks.check_kprobe(verdict, env, view("baseline", 0, 0, {trace.KPROBE_EVENT: 3}),
                       view("redirect", 0, 0, {trace.KPROBE_EVENT: 100}), at_least=100)
    assert verdict.failures == ["kprobe tcp_bpf_sendmsg hits without the redirect: got 3, expected 0"]

    no_kprobes = checks.Verdict("x")
    checks.check_kprobe(no_kprobes, FakeEnv(kprobe=False), view("b", 0, 0), view("r", 0, 0), at_least=1)
    assert no_kprobes.status == "pass" and no_kprobes.figures["kprobe"] == "n/a"
    assert "no kprobes" in no_kprobes.notes[0]


def test_a_spurious_eagain_is_a_scenario_error_hence_a_failure():
    verdict = checks.Verdict("x")
    result = {"error": "server: SpuriousEagain: [Errno 11] blocking recv() failed with EAGAIN", "rounds": {}}
    with pytest.raises(checks.Stop):
        checks.rounds_of(verdict, result)
    assert verdict.status == "fail" and "EAGAIN" in verdict.failures[0]


def test_a_scenario_error_stops_the_check():
    verdict = checks.Verdict("x")
    with pytest.raises(checks.Stop):
        checks.rounds_of(verdict, {"error": "redirect: boom", "rounds": {}})
    assert verdict.failures == ["scenario error: redirect: boom"]


def test_select_by_name_and_prefix():
    assert scenario_checks.select(["echo"]) == ["echo-ipv4", "echo-ipv6", "echo-v4mapped"]
    assert scenario_checks.select(["bulk", "echo-ipv6", "bulk"]) == ["bulk", "echo-ipv6"]
    with pytest.raises(LabError, match="no scenario 'nope'"):
        scenario_checks.select(["nope"])


def test_table_shows_status_figures_and_reasons():
    passed = checks.Verdict("bulk", figures={"lo pkts": "0/280"})
    gated = checks.Verdict("netns2-netns", status="gated", reason="no bpf_get_netns_cookie")
    failed = checks.Verdict("echo-ipv4")
    failed.expect(False, "lo packets too many")
    runs = [KernelRun("5.10", "5.10.0-32", result=[passed, gated, failed]),
            KernelRun("5.15", unavailable="not provided")]
    table = suite.format_table(runs, ["bulk", "netns2-netns", "echo-ipv4"])
    lines = table.splitlines()
    assert lines[2].split() == ["bulk", "pass", "n/a"]
    assert lines[3].split() == ["netns2-netns", "gated", "n/a"]
    assert lines[4].split() == ["echo-ipv4", "FAIL", "n/a"]
    assert "no bpf_get_netns_cookie" in table and "FAIL: lo packets too many" in table
    assert suite.failed(runs[0]) and not suite.failed(runs[1])
    entry = suite.as_dict(runs[0])
    assert entry["kernel"] == "5.10" and [v["scenario"] for v in entry["verdicts"]] == ["bulk", "netns2-netns",
                                                                                      "echo-ipv4"]


def test_parse_probe():
    output = ("tracefs /sys/kernel/tracing\nevent net/net_dev_xmit yes\nevent tcp/tcp_sendmsg_locked no\n"
              "kprobe tcp_bpf_sendmsg no kernel built without kprobes (no kprobe_events in tracefs)\n")
    support = trace.parse_probe(output, "6.1.0")
    assert support.events == ["net/net_dev_xmit"]
    assert support.missing["tcp/tcp_sendmsg_locked"] == "no tracepoint tcp/tcp_sendmsg_locked in kernel 6.1.0"
    assert not support.kprobe and "without kprobes" in support.missing[trace.KPROBE_EVENT]
    assert support.specs() == ["net/net_dev_xmit:dev"]
    with pytest.raises(LabError, match="tracefs"):
        trace.parse_probe("", "6.1.0")


def test_trace_counts_sum_entries_overrun_and_drops_over_cpus(tmp_path):
    common = load_common()
    for cpu, (entries, overrun) in enumerate([(240, 2760), (5, 0)]):
        stats = tmp_path / "inst" / "per_cpu" / f"cpu{cpu}"
        stats.mkdir(parents=True)
        (stats / "stats").write_text(f"entries: {entries}\noverrun: {overrun}\ncommit overrun: 0\n"
                                     f"bytes: 4096\ndropped events: 1\nread events: 0\n")
    control = tmp_path / "control"
    control.write_text(f"net/net_dev_xmit {tmp_path / 'inst'} all\n")
    assert common.Trace(str(control)).counts() == {"net/net_dev_xmit": 3007}


def test_write_sizes_cover_one_byte_to_four_kib():
    common = load_common()
    sizes = common.small_sizes(1000)
    assert min(sizes) == 1 and 4000 <= max(sizes) <= 4096
    assert len(set(sizes)) > 900
    assert sum(common.bulk_sizes(1000, 64)) == 1000 and common.bulk_sizes(1000, 64)[-1] == 1000 % 64


def results_view(name, results):
    return checks.RoundView(name, {"results": results})


def test_payload_path_counts_tcp_data_segments_per_side():
    base = results_view("baseline", {"client": {"data_segs_out": 120}, "server": {"data_segs_out": 118}})
    good = checks.Verdict("x")
    checks.check_payload_path(good, base, results_view("redirect", {"client": {"data_segs_out": 0},
                                                                     "server": {"data_segs_out": 0}}))
    assert good.status == "pass" and good.figures["data segs"] == "0/0 vs 120/118"
    # one direction fell back to TCP: the counters of another program would not say so; TCP does
    half = checks.Verdict("x")
    checks.check_payload_path(half, base, results_view("redirect", {"client": {"data_segs_out": 0},
                                                                     "server": {"data_segs_out": 61}}))
    assert half.failures == ["redirect: TCP data segments carrying the server's payload (not "
                             "redirected): got 61, expected 0"]
    # a baseline that took no data segment means the measure is blind: a failure, not a pass
    blind = checks.Verdict("x")
    checks.check_payload_path(blind, results_view("baseline", {"client": {"data_segs_out": 0}}),
                              results_view("redirect", {"client": {"data_segs_out": 0}}), roles=("client",))
    assert blind.status == "fail" and "cannot tell" in blind.failures[0]


def test_connections_redirected_are_counted_one_by_one():
    base = results_view("baseline", {"client": {"conns_over_tcp": 1000}, "server": {"conns_over_tcp": 1000}})
    quarter = checks.Verdict("churn")
    checks.check_connections_redirected(quarter, base, results_view(
        "redirect", {"client": {"conns_over_tcp": 250}, "server": {"conns_over_tcp": 0}}), 1000)
    assert quarter.failures == ["redirect: client sockets whose payload took TCP (not redirected): "
                                "got 250, expected 0"]
    per_socket = results_view("redirect", {"client": {"data_segs_out": [0, 0, 4, 3]},
                                           "server": {"data_segs_out": [0, 0, 2, 0]}})
    base4 = results_view("baseline", {"client": {"data_segs_out": [5] * 4}, "server": {"data_segs_out": [5] * 4}})
    full = checks.Verdict("fullmap")
    checks.check_connections_redirected(full, base4, per_socket, 4, redirected={
        "client": [True, True, False, False], "server": [True, True, False, False]})
    assert full.failures == ["redirect: server sockets [3] took the wrong path (TCP data segments "
                             "[0]; redirected ones have none)"]


def test_a_failed_feature_probe_is_an_error_not_a_missing_feature():
    from lab.vm.target import parse_features

    good = '{"program_types": {"have_sk_msg_prog_type": true}, "map_types": {"x": true}, "helpers": {"y": []}}'
    assert parse_features(good, "guest 6.1")["program_types"]["have_sk_msg_prog_type"]
    with pytest.raises(LabError, match="gave no map_types, helpers: the probe failed"):
        parse_features('{"program_types": {"have_sk_msg_prog_type": true}}', "guest 6.1")
    with pytest.raises(LabError, match="printed no JSON"):
        parse_features("Error: something", "guest 6.1")


def test_a_kernel_without_sockmap_fails_the_scenario_instead_of_gating_it(monkeypatch):
    monkeypatch.setattr(scenario_checks.redirect, "sockmap_missing",
                        lambda target: "guest (6.1) lacks sk_msg programs")

    class Env:
        target = object()
        artifacts = None

    verdict = scenario_checks.run_check(Env(), "bulk")
    assert verdict.status == "fail" and verdict.failures == [
        "the redirect cannot run here: guest (6.1) lacks sk_msg programs"]


def snapshot_view(entries_dump):
    return checks.RoundView("redirect", {"snapshots": {"connected": {"sockhash": entries_dump}}})


def production_entry(local, remote, cookie):
    import ipaddress
    import struct as st

    def ip(addr):
        return list(ipaddress.IPv6Address("::ffff:" + addr).packed)

    raw = bytes(ip(local[0]) + ip(remote[0])) + st.pack("<IIQ", local[1], remote[1], 0)
    return {"key": [f"0x{b:02x}" for b in raw], "value": [f"0x{b:02x}" for b in st.pack("<Q", cookie)]}


def test_the_map_check_knows_which_socket_sits_under_which_key():
    client = {"sockname": ["127.0.0.1", 40000], "peername": ["127.0.0.1", 8080], "cookie": 11}
    server = {"sockname": ["127.0.0.1", 8080], "peername": ["127.0.0.1", 40000], "cookie": 22}
    right = [production_entry(("127.0.0.1", 40000), ("127.0.0.1", 8080), 11),
             production_entry(("127.0.0.1", 8080), ("127.0.0.1", 40000), 22)]
    ok = checks.Verdict("x")
    checks.check_entries(ok, snapshot_view(right), "connected", [client, server])
    assert ok.status == "pass", ok.failures
    # the same keys, each holding the other end's socket (the swapped_key mutant): the set of keys
    # alone cannot see it
    swapped = [production_entry(("127.0.0.1", 40000), ("127.0.0.1", 8080), 22),
               production_entry(("127.0.0.1", 8080), ("127.0.0.1", 40000), 11)]
    bad = checks.Verdict("x")
    checks.check_entries(bad, snapshot_view(swapped), "connected", [client, server])
    assert bad.status == "fail" and "holds socket cookie 22 (the socket (('127.0.0.1', 8080)" in bad.failures[0]


def test_unknown_key_layouts_are_judged_by_cookie():
    sockets = [{"sockname": ["127.0.0.1", 1], "peername": ["127.0.0.1", 2], "cookie": 5},
               {"sockname": ["127.0.0.1", 2], "peername": ["127.0.0.1", 1], "cookie": 6}]
    dump = [{"key": ["0x01"] * 20, "value": [f"0x{c:02x}"] + ["0x00"] * 7} for c in (5, 7)]
    verdict = checks.Verdict("x")
    checks.check_entries(verdict, snapshot_view(dump), "connected", sockets)
    assert verdict.failures == ["map connected (keys of an unknown layout) holds sockets [5, 7], "
                                "expected the scenario's [5, 6]"]


def test_a_handshake_race_has_an_exact_shape_and_the_server_side_stays_exact():
    # A client message sent before the server's end was established takes TCP (rarely): its one
    # message in one data segment; never on the server's side, which answers after accept(). No
    # share of the connections is allowed: a connection left out of the map has another shape.
    base = results_view("baseline", {"client": {"conns_over_tcp": 1000}, "server": {"conns_over_tcp": 1000}})
    one = checks.Verdict("churn")
    red = results_view("redirect", {"client": {"conns_over_tcp": 1, "over_tcp": [[7, 1]]},
                                    "server": {"conns_over_tcp": 0}})
    assert checks.handshake_race(one, red, 1000) == 1
    checks.check_connections_redirected(one, base, red, 1000, redirect_roles=("server",))
    assert one.status == "pass" and "handshake race" in one.notes[0]
    many = checks.Verdict("churn")
    raced = [[i, 1] for i in range(11)]
    assert checks.handshake_race(many, results_view("redirect", {"client": {"conns_over_tcp": 11,
                                                                            "over_tcp": raced}}), 1000) == 11
    assert many.status == "pass"
    left_out = checks.Verdict("churn")
    checks.handshake_race(left_out, results_view("redirect", {"client": {"conns_over_tcp": 2,
                                                                        "over_tcp": [[3, 1], [9, 2]]}}), 1000)
    assert left_out.failures == ["redirect: client connections [(9, 2)] (index, TCP data segments) sent more "
                                 "than their first message over TCP: not the handshake race; they were not "
                                 "redirected"]
    server_side = checks.Verdict("churn")
    checks.check_connections_redirected(server_side, base, results_view(
        "redirect", {"client": {"conns_over_tcp": 1}, "server": {"conns_over_tcp": 1}}), 1000,
        redirect_roles=("server",))
    assert server_side.failures == ["redirect: server sockets whose payload took TCP (not redirected): "
                                    "got 1, expected 0"]
