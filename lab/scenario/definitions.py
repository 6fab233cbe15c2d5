"""The same-host scenarios: what each one runs and the numbers its check asserts.

One scenario check = one run of a program of ``scenarios/`` with two rounds in fresh network
namespaces: ``baseline`` (no redirect) and ``redirect`` (both sides in a cgroup carrying the
redirect), with tracing around the data phase. Each check runs its program through an ``Env``
(``lab.scenario.env``) and judges the result with the reusable checks of ``lab.scenario.checks``.

``run_check(env, id)`` runs one scenario and returns a ``Verdict`` (pass / fail / gated with the
reason, failures, figures). pytest (tests/integration/test_scenarios.py) and ``sockredir-lab
suite`` (``lab.scenario.suite``) both use it, so both judge the same way.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Callable

from lab import LabError, wait
from lab.bpf import keys, redirect
from lab.conformance import defects
from lab.scenario import trace, xfail
from lab.scenario.env import Env
from lab.scenario.checks import (MiB, RoundView, Stop, Verdict, check_both_ways, check_bypass,
                                check_connections_redirected, check_counters, check_entries,
                                check_kprobe, check_no_entries, check_payload_path, check_transfer,
                                handshake_race, over_tcp, rate, rounds_of)
from lab.scenario.runner import entry_tuples, socket_tuple
from lab.vm.target import RUN_DIR, Target

# Packets TCP itself must still send for each connection under the redirect: the handshake
# (SYN, SYN-ACK, ACK) and the teardown (FIN, ACK each way). Only the payload is redirected.
HANDSHAKE_PACKETS, TEARDOWN_PACKETS = 3, 4


# ----------------------------------------------------------------------------- the scenarios

@dataclass(frozen=True)
class Scenario:
    id: str
    summary: str
    check: Callable[[Env, Verdict], None]
    gate: Callable[[Env], str | None] | None = None
    family: str = "ipv4"            # what a program must claim to redirect for this scenario
    lab_builds_only: str | None = None  # why a program the lab did not write is not judged here
    # The sides whose sockets the redirect round's map holds, where a tcp_bpf defect can act
    # (lab.scenario.xfail); () where it differs per connection: such a scenario is never an xfail.
    in_map: tuple[str, ...] = ("client", "server")


LAB_VARIANTS_ONLY = ("its expectations are those of the lab's own variants (which key collides "
                     "in two namespaces)")
MAP_SIZE_ONLY = "it needs a map size compiled into the lab's own build"
GUARDED_ONLY = "it judges the lab's guarded variant (its guard counters)"


def program_gate(env: Env, scenario: Scenario) -> str | None:
    """Why a program the lab did not write is not judged by ``scenario``, or None."""
    if env.program is None:
        return None
    if scenario.lab_builds_only:
        return f"not for a program the lab did not write: {scenario.lab_builds_only}"
    if scenario.family not in env.program.families:
        return (f"{env.program.name} claims only {', '.join(env.program.families)} "
                f"(--families ipv4,{scenario.family} to judge it here)")
    return None


def ipv6_gate(env: Env) -> str | None:
    if not env.target.exists("/proc/net/if_inet6"):
        return f"kernel {env.target.kernel_release} has no IPv6 (/proc/net/if_inet6 is missing)"
    return None


def netns_gate(env: Env) -> str | None:
    if not redirect.netns_supported(env.target):
        return (f"bpf_get_netns_cookie is not available to sock_ops and sk_msg programs on "
                f"{env.target.kernel_release} (bpftool feature probe): the netns variant cannot load")
    return None


INSERTED = {"ipv4": {"inserted_v4": 2}, "ipv6": {"inserted_v6": 2},
            "v4mapped": {"inserted_v4": 1, "inserted_v4mapped": 1}}


def echo_check(family: str):
    def check(env: Env, v: Verdict) -> None:
        trips, size = env.scale.echo_trips, 64
        inst = env.installed()
        rounds = rounds_of(v, env.run(v.scenario, "echo", ["--family", family, "--trips", trips,
                                                           "--size", size], inst))
        base, red = rounds["baseline"], rounds["redirect"]
        for view in (base, red):
            v.equal(f"{view.name}: intact round trips", view.results["client"]["intact_trips"], trips,
                    view.name, "data")
        check_entries(v, red, "connected", [red.sockets["client"], red.sockets["server"]])
        check_no_entries(v, red)
        delta = red.counters_delta()
        inserted = {name: INSERTED[family].get(name, 0) for name in ("inserted_v4", "inserted_v6", "inserted_v4mapped")}
        check_counters(v, delta, **inserted, insert_failed=0, bytes_redirected=2 * trips * size,
                       msgs_missed=0)
        check_payload_path(v, base, red)
        check_bypass(v, env, base, red)
        check_kprobe(v, env, base, red, at_least=trips)
        speeds = [view.results["client"]["trips_per_second"] for view in (base, red)]
        v.figure("round trips/s", f"{speeds[1]:.0f} vs {speeds[0]:.0f}")
    return check


def bulk_like(env: Env, v: Verdict, args: list, writes_exact: bool) -> tuple[RoundView, RoundView]:
    inst = env.installed()
    rounds = rounds_of(v, env.run(v.scenario, "bulk", args, inst))
    base, red = rounds["baseline"], rounds["redirect"]
    nbytes = red.data["bytes_per_side"]
    for view in (base, red):
        check_both_ways(v, view, nbytes)
    sockets = [red.sockets["client"], red.sockets["server"]]
    check_entries(v, red, "connected", sockets)
    check_entries(v, red, "open", sockets)
    check_no_entries(v, red)
    delta = red.counters_delta()
    check_counters(v, delta, inserted_v4=2, bytes_redirected=2 * nbytes, msgs_missed=0, bytes_missed=0)
    if writes_exact:  # a write of at most 4 KiB is one sk_msg verdict
        check_counters(v, delta, msgs_redirected=2 * red.data["writes_per_side"])
    check_payload_path(v, base, red)
    check_bypass(v, env, base, red)
    sends = red.results["client"]["sends"] + red.results["server"]["sends"]
    check_kprobe(v, env, base, red, at_least=sends)
    return base, red


def bulk_check(env: Env, v: Verdict) -> None:
    base, red = bulk_like(env, v, ["--bytes", env.scale.bulk_bytes], writes_exact=False)
    nbytes = red.data["bytes_per_side"]
    speeds = [2 * nbytes / view.phase()["seconds"] for view in (base, red)]
    v.figure("MiB/s", f"{rate(speeds[1])} vs {rate(speeds[0])}")
    v.figure("bytes", f"2x{nbytes // MiB} MiB")


def smallwrites_check(env: Env, v: Verdict) -> None:
    base, red = bulk_like(env, v, ["--writes", "small", "--small-writes", env.scale.small_writes],
                          writes_exact=True)
    v.figure("writes", f"2x{red.data['writes_per_side']} of 1..4096 B")


def sendfile_check(mode: str):
    def check(env: Env, v: Verdict) -> None:
        nbytes = env.scale.sendfile_bytes
        inst = env.installed()
        rounds = rounds_of(v, env.run(v.scenario, "sendfile", ["--mode", mode, "--bytes", nbytes], inst))
        base, red = rounds["baseline"], rounds["redirect"]
        for view in (base, red):
            client, server = view.results["client"], view.results["server"]
            v.equal(f"{view.name}: bytes received", server["received"], nbytes, view.name, "data")
            v.expect(client["sent_sha256"] == server["received_sha256"],
                     f"{view.name}: the received file differs from the sent one (SHA-256)", view.name, "data")
        check_entries(v, red, "connected", [red.sockets["client"], red.sockets["server"]])
        check_no_entries(v, red)
        check_counters(v, red.counters_delta(), bytes_redirected=nbytes, msgs_missed=0, bytes_missed=0)
        check_payload_path(v, base, red, roles=("client",))  # only the client sends
        check_bypass(v, env, base, red)
        # sendfile/splice reach tcp_bpf_sendmsg only where the kernel splices through sendmsg
        # (MSG_SPLICE_PAGES, 6.5+); older kernels use tcp_bpf_sendpage: shown, not required.
        check_kprobe(v, env, base, red, at_least=1, required=False)
        v.figure("bytes", f"{nbytes // MiB} MiB in {red.results['client']['calls']} {mode} calls")
    return check


def pair_up(clients: list[dict], servers: list[dict]) -> list[tuple[dict, dict]]:
    by_peer = {socket_tuple(s)[1]: s for s in servers}
    return [(c, by_peer.get(socket_tuple(c)[0])) for c in clients]


def concurrent_check(env: Env, v: Verdict) -> None:
    conns, size = env.scale.conns, 1024
    inst = env.installed()
    rounds = rounds_of(v, env.run(v.scenario, "concurrent", ["--conns", conns, "--size", size], inst))
    base, red = rounds["baseline"], rounds["redirect"]
    for view in (base, red):
        v.equal(f"{view.name}: connections intact", view.results["client"]["intact_conns"], conns,
                view.name, "data")
    sockets = red.sockets["client"]["sockets"] + red.sockets["server"]["sockets"]
    check_entries(v, red, "connected", sockets)
    # two per connection, whatever the scenario reported of its sockets
    v.equal("map entries connected, two per connection", len(red.entries("connected")), 2 * conns)
    check_entries(v, red, "open", sockets)
    check_no_entries(v, red)
    check_counters(v, red.counters_delta(), inserted_v4=2 * conns, insert_failed=0,
                   bytes_redirected=2 * conns * size, msgs_missed=0)
    check_connections_redirected(v, base, red, conns)
    check_bypass(v, env, base, red)
    check_kprobe(v, env, base, red, at_least=2 * conns)
    v.figure("entries", f"{len(red.entries('connected'))} for {conns} conns")


def churn_check(env: Env, v: Verdict) -> None:
    conns, size = env.scale.churn_conns, 100
    inst = env.installed()
    rounds = rounds_of(v, env.run(v.scenario, "churn", ["--conns", conns, "--size", size], inst))
    base, red = rounds["baseline"], rounds["redirect"]
    for view in (base, red):
        v.equal(f"{view.name}: connections intact", view.results["client"]["intact_conns"], conns,
                view.name, "data")
        v.equal(f"{view.name}: clean EOFs at the server", view.results["server"]["clean_eofs"], conns,
                view.name, "data")
    check_no_entries(v, red)
    delta = red.counters_delta()
    raced = handshake_race(v, red, conns)
    check_counters(v, delta, inserted_v4=2 * conns, insert_failed=0,
                   bytes_redirected=(2 * conns - raced) * size, msgs_missed=raced,
                   bytes_missed=raced * size)
    # every other connection redirected, counted per connection from TCP itself: the client side
    # is handshake_race's (exact shape + counters above); the server answers after accept(), when both
    # ends are in the map, so none of its sockets may fall back
    check_connections_redirected(v, base, red, conns, redirect_roles=("server",))
    # The data phase holds every connection's handshake and teardown: those stay TCP (as do a
    # raced message's data segment and its ACK).
    check_bypass(v, env, base, red,
                 protocol_packets=conns * (HANDSHAKE_PACKETS + TEARDOWN_PACKETS) + 2 * raced)
    check_kprobe(v, env, base, red, at_least=conns)
    speeds = [view.results["client"]["conns_per_second"] for view in (base, red)]
    v.figure("conns/s", f"{speeds[1]:.0f} vs {speeds[0]:.0f}")
    if delta is not None:
        v.figure("missed msgs", delta["msgs_missed"])


def halfclose_check(env: Env, v: Verdict) -> None:
    nbytes, reply = env.scale.halfclose_bytes, 64 * 1024
    inst = env.installed()
    rounds = rounds_of(v, env.run(v.scenario, "halfclose", ["--bytes", nbytes, "--reply", reply], inst))
    base, red = rounds["baseline"], rounds["redirect"]
    for view in (base, red):
        client, server = view.results["client"], view.results["server"]
        v.expect(server["eof_seen"], f"{view.name}: the server never saw the client's EOF ({server['error']})",
                 view.name, "data")
        v.expect(client["eof_seen"], f"{view.name}: the client never saw the server's EOF ({client['error']})",
                 view.name, "data")
        check_transfer(v, view.name, "client", client, "server", server, nbytes)
        check_transfer(v, view.name, "server", server, "client", client, reply)
    check_entries(v, red, "connected", [red.sockets["client"], red.sockets["server"]])
    check_no_entries(v, red)
    check_counters(v, red.counters_delta(), bytes_redirected=nbytes + reply, msgs_missed=0)
    check_payload_path(v, base, red)
    check_bypass(v, env, base, red, protocol_packets=TEARDOWN_PACKETS)
    check_kprobe(v, env, base, red, at_least=2)
    v.figure("EOF", "both ways")


def outside_check(outside: str):
    inside = "client" if outside == "server" else "server"

    def check(env: Env, v: Verdict) -> None:
        nbytes = env.scale.bulk_bytes // 4
        inst = env.installed()
        rounds = rounds_of(v, env.run(v.scenario, "bulk", ["--bytes", nbytes, f"--{outside}-cgroup", "none"], inst))
        base, red = rounds["baseline"], rounds["redirect"]
        for view in (base, red):
            check_both_ways(v, view, nbytes)  # in particular no EACCES from an SK_DROP verdict
        check_entries(v, red, "connected", [red.sockets[inside]])
        check_no_entries(v, red)
        # The inside socket is in the map and runs the verdict on each send, which misses (its
        # peer is not in the map) and passes the bytes on to TCP.
        check_counters(v, red.counters_delta(), inserted_v4=1, msgs_redirected=0, bytes_redirected=0,
                       bytes_missed=nbytes)
        check_payload_path(v, base, red, over_tcp=("client", "server"))
        before, after = base.phase()["counters"]["tcp_out_segs"], red.phase()["counters"]["tcp_out_segs"]
        v.expect(after >= before / 2, f"Tcp OutSegs {after} with one side outside, baseline {before}: "
                                      "the transfer should have used TCP like the baseline")
        v.figure("Tcp OutSegs", f"{after}/{before} (TCP, as expected)")
    return check


def netns2_check(variant: str):
    def check(env: Env, v: Verdict) -> None:
        nbytes = env.scale.netns_bytes
        inst = env.installed(variant)
        rounds = ("baseline", "redirect") if variant == "netns" else ("redirect",)
        result = env.run(v.scenario, "netns2", ["--bytes", nbytes], inst, rounds=rounds)
        views = rounds_of(v, result)
        red = views["redirect"]
        for name in ("netns0", "netns1"):
            sides = red.results[name]
            label = f"{name}"
            check_transfer(v, label, "client", sides["client"], "server", sides["server"], nbytes, "redirect")
            check_transfer(v, label, "server", sides["server"], "client", sides["client"], nbytes, "redirect")
        inodes = {red.sockets[name]["netns_inode"] for name in ("netns0", "netns1")}
        v.equal("distinct network namespaces", len(inodes), 2)
        ns0 = [red.sockets["netns0"]["client"], red.sockets["netns0"]["server"]]
        ns1 = [red.sockets["netns1"]["client"], red.sockets["netns1"]["server"]]
        v.equal("same addresses and ports in both namespaces",
                {socket_tuple(s) for s in ns0}, {socket_tuple(s) for s in ns1})
        # Which namespace's payload crossed TCP/IP, from TCP itself (works for the seed too, which
        # has no counters): with the namespace in the key both are redirected; without it
        # namespace 1's inserts collide with namespace 0's keys, so namespace 1 talks plain TCP.
        segments = {name: [red.results[name][role]["data_segs_out"] for role in ("client", "server")]
                    for name in ("netns0", "netns1")}
        v.equal("namespace 0: TCP data segments (redirected)", segments["netns0"], [0, 0])
        if variant == "netns":
            v.equal("namespace 1: TCP data segments (redirected: its own keys)", segments["netns1"], [0, 0])
        else:
            v.expect(all(n > 0 for n in segments["netns1"]),
                     f"namespace 1's payload should have crossed TCP (its keys collide), data segments "
                     f"{segments['netns1']}")
        v.figure("TCP data segs ns0/ns1", f"{sum(segments['netns0'])}/{sum(segments['netns1'])}")
        entries = red.entries("connected")
        if variant == "netns":
            v.equal("map entries for 4 sockets in 2 namespaces", len(entries), 4)
            cookies = {e.get("netns") for e in entries}
            v.expect(len(cookies) == 2 and None not in cookies,
                     f"netns cookies in the keys: {cookies}, expected two different ones")
            check_counters(v, red.counters_delta(), inserted_v4=4, insert_failed=0,
                           bytes_redirected=4 * nbytes, msgs_missed=0)
            check_bypass(v, env, views["baseline"], red)
            v.figure("entries", f"4 for 4 sockets, {len(cookies)} netns cookies")
        else:
            # The key has no namespace: namespace 1's sockets collide with namespace 0's and are
            # refused (BPF_NOEXIST), so namespace 1 talks plain TCP, and nothing crosses.
            v.equal("map entries (collision: namespace 1's keys equal namespace 0's)", len(entries), 2)
            v.equal("the entries are namespace 0's sockets", entry_tuples(entries), {socket_tuple(s) for s in ns0})
            if inst.counters_pin:
                check_counters(v, red.counters_delta(), inserted_v4=2, insert_failed=2,
                               bytes_redirected=2 * nbytes, msgs_missed=0)
            v.figure("entries", "2 for 4 sockets (key collision shown)")
        check_no_entries(v, red)
        # Nothing crossed between the namespaces: each receiver got exactly its own peer's bytes
        # (the SHA-256 checks above), a figure measured, not a label.
        v.figure("intact in both namespaces", "yes" if not v.failures else "no, see failures")
    return check


def fullmap_check(env: Env, v: Verdict) -> None:
    max_entries, conns, size = 4, 4, 64 * 1024
    inst = env.installed(max_entries=max_entries)
    rounds = rounds_of(v, env.run(v.scenario, "concurrent", ["--conns", conns, "--size", size], inst))
    base, red = rounds["baseline"], rounds["redirect"]
    for view in (base, red):
        v.equal(f"{view.name}: connections intact", view.results["client"]["intact_conns"], conns)
    entries = red.entries("connected")
    v.equal("map entries (max_entries)", len(entries), max_entries)
    in_map = entry_tuples(entries)
    pairs = pair_up(red.sockets["client"]["sockets"], red.sockets["server"]["sockets"])
    both = sum(1 for c, s in pairs if s and socket_tuple(c) in in_map and socket_tuple(s) in in_map)
    one = sum(1 for c, s in pairs if s and (socket_tuple(c) in in_map) != (socket_tuple(s) in in_map))
    check_no_entries(v, red)
    check_counters(v, red.counters_delta(), insert_failed=2 * conns - max_entries,
                   bytes_redirected=2 * size * both, bytes_missed=size * one)
    # per socket: exactly those of connections with both ends in the map kept off TCP
    both_ends = {id(c): bool(s) and socket_tuple(c) in in_map and socket_tuple(s) in in_map
                 for c, s in pairs}
    server_both = {id(s): both_ends[id(c)] for c, s in pairs if s}
    direct = {"client": [both_ends[id(c)] for c in red.sockets["client"]["sockets"]],
              "server": [server_both.get(id(s), False) for s in red.sockets["server"]["sockets"]]}
    check_connections_redirected(v, base, red, conns, redirected=direct)
    took_tcp = over_tcp(red.results["client"])
    lost = conns - red.results["client"]["intact_conns"]
    v.figure("conns", f"{both} redirected, {took_tcp} over TCP, {lost} lost")


def detach_check(env: Env, v: Verdict) -> None:
    nbytes = env.scale.bulk_bytes
    inst = env.installed(shared=False)
    # Exactly what `sockredir-lab redirect uninstall` runs, run by the client when half its bytes are out.
    commands = [step.argv for step in redirect.uninstall_plan(env.target, inst.cgroup)]
    commands_file = f"{RUN_DIR}/detach-{trace.new_tag()}.json"
    env.target.put_text(json.dumps(commands), commands_file)
    try:
        result = env.run(v.scenario, "bulk", ["--bytes", nbytes, "--midway-exec", commands_file], inst)
    finally:
        inst.removed = True
        env.target.run(["rm", "-f", commands_file])
    rounds = rounds_of(v, result)
    base, red = rounds["baseline"], rounds["redirect"]
    for view in (base, red):
        check_both_ways(v, view, nbytes)
    check_entries(v, red, "connected", [red.sockets["client"], red.sockets["server"]])
    # The established connection keeps its psock (and the programs and map it holds) until it
    # closes, so it stays redirected after the uninstall: no payload ever crossed TCP/IP.
    check_payload_path(v, base, red)
    hook = red.results["client"]["hook"]
    v.expect(hook is not None, "the client never ran the detach commands")
    if hook:
        for command in hook["commands"]:
            v.equal(f"exit code of {' '.join(command['argv'][:4])}", command["rc"], 0)
        end = red.results["client"]["counters_end"]
        after = end["tcp_out_segs"] - hook["counters_after"]["tcp_out_segs"]
        # A socket keeps its psock (and the programs it holds) until it closes: the established
        # connection stays redirected after the uninstall; only new connections are plain TCP.
        v.figure("TCP segs after detach", after)
    freed = wait_until_gone(env.target, inst.installation.maps.values())
    v.expect(not freed, f"maps {freed} still exist after every socket closed: the uninstall leaked them")
    v.figure("maps freed after close", "yes" if not freed else f"no: {freed}")


def wait_until_gone(target: Target, map_ids, seconds: float = 5.0) -> list[int]:
    """Map ids still present after ``seconds`` (a map is freed after an RCU grace period)."""
    left = list(map_ids)

    def all_gone() -> bool:
        left[:] = [i for i in left if target.run(["bpftool", "map", "show", "id", str(i)]).ok]
        return not left

    wait.until(all_gone, seconds=seconds, every=0.2)
    return left


def untouched_check(env: Env, v: Verdict) -> None:
    datagrams = env.scale.datagrams
    inst = env.installed()
    rounds = rounds_of(v, env.run(v.scenario, "untouched", ["--datagrams", datagrams], inst))
    base, red = rounds["baseline"], rounds["redirect"]
    for view in (base, red):
        client = view.results["client"]
        v.equal(f"{view.name}: UDP datagrams intact", client["intact_datagrams"], datagrams)
        v.expect(client["unix_intact"], f"{view.name}: AF_UNIX bytes differ")
        v.equal(f"{view.name}: UDP datagrams out", view.phase()["counters"]["udp_out_datagrams"], 2 * datagrams)
        v.equal(f"{view.name}: lo packets (UDP only)", view.phase()["counters"]["lo_tx_packets"], 2 * datagrams)
    v.equal("map entries while UDP and AF_UNIX sockets are open", len(red.entries("connected")), 0)
    delta = red.counters_delta()
    v.expect(not any((delta or {}).values()), f"program counters moved: {delta}", "redirect", by_program=True)
    v.figure("UDP lo pkts", f"{red.phase()['counters']['lo_tx_packets']}/{base.phase()['counters']['lo_tx_packets']}")


def slowreader_check(env: Env, v: Verdict) -> None:
    """A sender that never hears from its reader must be stopped like plain TCP stops it: EAGAIN,
    within BACKPRESSURE_FACTOR of plain TCP's bytes in the same run. A redirect that queues past
    that (to the cap, or until TCP's global memory limit answers ENOMEM, an errno plain TCP never
    gives here) fails, named as the no-backpressure kernel defect where that is exactly what it
    did. What was queued must then arrive intact, and the fill phase must have bypassed TCP."""
    base, red = slowreader_rounds(env, v, env.run(v.scenario, "slowreader", ["--cap", env.scale.slow_cap],
                                                  env.installed()))
    plain, sender = base.results["client"], red.results["client"]
    bound = BACKPRESSURE_FACTOR * plain["queued"]
    if not (sender["stopped_by"] == "EAGAIN" and sender["queued"] <= bound):
        how = "the cap" if sender["stopped_by"] == "cap" else sender["stopped_by"]
        v.expect(False, f"redirect: no backpressure: the sender queued {sender['queued'] / MiB:.1f} MiB into a "
                        f"reader that reads nothing and was stopped by {how}"
                        + (" (TCP's global memory limit, net.ipv4.tcp_mem: an errno plain TCP never gives)"
                           if sender["stopped_by"].startswith("ENOMEM") else "")
                        + f"; plain TCP: EAGAIN after {plain['queued'] / MiB:.1f} MiB (bound "
                        f"{bound / MiB:.1f} MiB)", "redirect", "error", defect="no-backpressure")
    check_entries(v, red, "connected", [red.sockets["client"], red.sockets["server"]])
    check_no_entries(v, red)
    check_payload_path(v, base, red, roles=("client",))
    # Plain TCP sends only a few packets here (the window closes: the rest waits in the send
    # buffer), too few for a ratio: the redirected fill phase must send none at all.
    check_bypass(v, env, base, red, label="fill", min_baseline=1)
    delta = red.counters_delta()
    check_counters(v, delta, msgs_missed=0)
    if delta is not None:
        # The verdict counts a message before the redirect enqueues it: a send that then fails
        # (ENOMEM) is counted although its bytes were not queued: at most that write on top.
        extra = delta["bytes_redirected"] - sender["queued"]
        failed_write = 2 * SLOW_CHUNK if sender["stopped_by"] not in ("cap", "EAGAIN") else 0
        v.expect(0 <= extra <= failed_write,
                 f"program counter bytes_redirected {delta['bytes_redirected']} vs {sender['queued']} queued "
                 f"(at most the failed write and a retry, {failed_write} bytes, apart)", "redirect", "data",
                 by_program=True)
    for view in (base, red):
        client = view.results["client"]
        v.figure(f"{view.name} queued", f"{client['queued'] / MiB:.1f} MiB ({client['stopped_by']}, "
                                         f"MemAvailable -{client['mem_available_drop_kib'] // 1024} MiB)")


def guarded_gate(env: Env) -> str | None:
    """Why the guarded variant is not offered here (the installer's fallback reason), or None."""
    installed = env.installed("guarded").installation
    return None if installed.variant == "guarded" else installed.fallback_reason


def guarded_run(env: Env, program: str, args: list, label: str) -> tuple[dict, dict[str, int]]:
    """A scenario program's run under the guarded variant, and what its guard counters grew by."""
    inst = env.installed("guarded")
    before = redirect.status(env.target, inst.cgroup)["guard"] or {}
    result = env.run(label, program, args, inst)
    after = redirect.status(env.target, inst.cgroup)["guard"] or {}
    return result, {name: after[name] - before.get(name, 0) for name in after}


def slowreader_rounds(env: Env, v: Verdict, result: dict) -> tuple[RoundView, RoundView]:
    """The slowreader run's rounds: in each, the reader drained every queued byte intact; plain
    TCP's sender was stopped by EAGAIN (the reference the redirect round is held to)."""
    rounds = rounds_of(v, result)
    base, red = rounds["baseline"], rounds["redirect"]
    for view in (base, red):
        client, server = view.results["client"], view.results["server"]
        v.equal(f"{view.name}: bytes drained", server["received"], client["queued"], view.name, "data")
        v.expect(client["sent_sha256"] == server["received_sha256"], f"{view.name}: drained bytes differ (SHA-256)",
                 view.name, "data")
    plain = base.results["client"]
    v.expect(plain["stopped_by"] == "EAGAIN",
             f"baseline: plain TCP stopped the sender by {plain['stopped_by']} after "
             f"{plain['queued'] / MiB:.1f} MiB, not by EAGAIN: the measure has no reference", "baseline")
    return base, red


def guarded_slowreader_check(env: Env, v: Verdict) -> None:
    """The guarded variant against a reader that reads nothing: the redirect takes the first part,
    the guard then sends the rest over TCP, whose window and send buffer stop the sender with
    EAGAIN within BACKPRESSURE_FACTOR of plain TCP's bytes in the same run; every byte is then
    drained intact and in order, and the guard's counters account for every byte sent."""
    result, guard = guarded_run(env, "slowreader", ["--cap", env.scale.slow_cap], v.scenario)
    base, red = slowreader_rounds(env, v, result)
    plain, sender = base.results["client"], red.results["client"]
    bound = BACKPRESSURE_FACTOR * plain["queued"]
    v.expect(sender["stopped_by"] == "EAGAIN" and sender["queued"] <= bound,
             f"redirect: the guarded sender queued {sender['queued'] / MiB:.1f} MiB and was stopped by "
             f"{sender['stopped_by']}; plain TCP: EAGAIN after {plain['queued'] / MiB:.1f} MiB (bound "
             f"{bound / MiB:.1f} MiB)", "redirect", "error")
    check_entries(v, red, "connected", [red.sockets["client"], red.sockets["server"]])
    check_no_entries(v, red)
    delta = red.counters_delta()
    check_counters(v, delta, msgs_missed=0)
    v.expect(guard.get("leaves", 0) >= 1 and guard.get("bytes_backpressure", 0) > 0,
             f"the guard never sent over TCP for backpressure: {guard}", "redirect", "check", by_program=True)
    if delta is not None:
        carried = delta["bytes_redirected"] + keys.guard_tcp_bytes(guard)
        # At most one write apart either way: the refused one was counted and not queued; and when
        # TCP refuses part of a passed message (EAGAIN), tcp_bpf_send_verdict keeps the PASS verdict
        # (psock->eval) for the next write, which then reaches TCP without the program seeing it.
        v.expect(abs(carried - sender["queued"]) <= SLOW_CHUNK,
                 f"redirected {delta['bytes_redirected']} + over TCP {carried - delta['bytes_redirected']} bytes "
                 f"vs {sender['queued']} queued (at most one write apart)", "redirect", "data",
                 by_program=True)
        v.expect(delta["bytes_redirected"] > 0, "the guard redirected nothing: the reader's queue was never used",
                 "redirect", "check", by_program=True)
    for view in (base, red):
        client = view.results["client"]
        v.figure(f"{view.name} queued", f"{client['queued'] / MiB:.1f} MiB ({client['stopped_by']})")
    if delta is not None:
        v.figure("redirected", f"{delta['bytes_redirected'] / MiB:.1f} MiB")


def switching_check(env: Env, v: Verdict) -> None:
    """Connections that cross between the redirect and TCP over and over (the guarded variant with
    a small SO_RCVBUF, writers pausing so readers catch up): every byte of every direction arrives
    once, at its offset, with EOF after the last; the guard switched at least the scale's number of
    times and accounted for every byte."""
    scale = env.scale
    args = ["--conns", scale.switch_conns, "--bytes", scale.switch_bytes, "--pause-ms", scale.switch_pause_ms]
    result, guard = guarded_run(env, "switching", args, v.scenario)
    rounds = rounds_of(v, result)
    for view in rounds.values():
        for role in ("client", "server"):
            report = view.results[role]
            v.expect(report["error"] is None, f"{view.name}: {role}: {report['error']}", view.name, "error", role)
            for index, conn in enumerate(report["connections"]):
                where = f"{view.name}: {role}, connection {index}"
                v.expect(conn["mismatch"] is None, f"{where}: the stream differs from what was sent: {conn['mismatch']}",
                         view.name, "data", role)
                v.equal(f"{where}: bytes sent", conn["sent"], scale.switch_bytes, view.name, "data")
                v.equal(f"{where}: bytes read before EOF", conn["received"], scale.switch_bytes, view.name, "data")
    switches = guard.get("leaves", 0) + guard.get("returns", 0)
    v.expect(switches >= scale.switches, f"the guard switched paths {switches} times, fewer than "
                                         f"{scale.switches}: the scenario did not exercise it", "redirect", "check",
             by_program=True)
    delta = rounds["redirect"].counters_delta()
    if delta is not None:
        total = 2 * scale.switch_conns * scale.switch_bytes
        over_tcp = keys.guard_tcp_bytes(guard)
        check_counters(v, delta, msgs_missed=0)
        v.equal("bytes redirected + sent over TCP by the guard", delta["bytes_redirected"] + over_tcp, total,
                "redirect", "data")
        v.figure("redirected", f"{delta['bytes_redirected'] / MiB:.0f} of {total / MiB:.0f} MiB")
    v.figure("switches", f"{guard.get('leaves', 0)} to TCP, {guard.get('returns', 0)} back")


BACKPRESSURE_FACTOR = 2  # a redirect may queue up to twice what plain TCP queued in the same run
SLOW_CHUNK = 64 * 1024  # scenarios/slowreader.py CHUNK


SCENARIOS: dict[str, Scenario] = {s.id: s for s in [
    Scenario("echo-ipv4", "ping-pong of 64-byte messages over IPv4", echo_check("ipv4")),
    Scenario("echo-ipv6", "the same over IPv6 (::1)", echo_check("ipv6"), ipv6_gate, family="ipv6"),
    Scenario("echo-v4mapped", "an IPv4 client and a dual-stack IPv6 server (::ffff:127.0.0.1)",
             echo_check("v4mapped"), ipv6_gate, family="ipv6"),
    Scenario("bulk", "bulk transfer both ways at once, 64 KiB writes, SHA-256", bulk_check),
    Scenario("smallwrites", "writes of 1 B to 4 KiB both ways", smallwrites_check),
    Scenario("sendfile", "a file sent with sendfile()", sendfile_check("sendfile")),
    Scenario("splice", "a file sent with splice() through a pipe", sendfile_check("splice")),
    Scenario("concurrent", "hundreds of connections open at once", concurrent_check),
    Scenario("churn", "thousands of connect/transfer/close in a row", churn_check),
    Scenario("halfclose", "shutdown(SHUT_WR) each way, EOF seen by the peer", halfclose_check),
    Scenario("outside-server", "the server outside the cgroup: plain TCP, no error", outside_check("server"),
             in_map=("client",)),
    Scenario("outside-client", "the client outside the cgroup: plain TCP, no error", outside_check("client"),
             in_map=("server",)),
    Scenario("netns2-seed", "two namespaces, same addresses and ports, seed key", netns2_check("seed"),
             lab_builds_only=LAB_VARIANTS_ONLY, in_map=()),
    Scenario("netns2-production", "the same with the production key", netns2_check("production"),
             lab_builds_only=LAB_VARIANTS_ONLY, in_map=()),
    Scenario("netns2-netns", "the same with the netns cookie in the key", netns2_check("netns"), netns_gate,
             lab_builds_only=LAB_VARIANTS_ONLY),
    Scenario("fullmap", "max_entries=4 with 4 connections: the rest fall back to TCP", fullmap_check,
             lab_builds_only=MAP_SIZE_ONLY, in_map=()),
    Scenario("detach", "the redirect removed in the middle of a stream", detach_check),
    Scenario("untouched", "UDP and AF_UNIX in the cgroup: not touched", untouched_check),
    Scenario("slowreader", "a reader that does not read: how much can be queued", slowreader_check),
    Scenario("slowreader-guarded", "the same under the guarded variant: stopped like plain TCP",
             guarded_slowreader_check, guarded_gate, lab_builds_only=GUARDED_ONLY),
    Scenario("switching", "the guarded variant: connections crossing between redirect and TCP, "
             "every byte checked at its offset", switching_check, guarded_gate, lab_builds_only=GUARDED_ONLY),
]}


def select(names: list[str] | None) -> list[str]:
    """Scenario ids from names; a name selects the ids equal to it or starting with ``name-``."""
    if not names:
        return list(SCENARIOS)
    chosen = []
    for name in names:
        matching = [sid for sid in SCENARIOS if sid == name or sid.startswith(name + "-")]
        if not matching:
            raise LabError(f"no scenario {name!r}; the scenarios are {', '.join(SCENARIOS)}")
        chosen += [sid for sid in matching if sid not in chosen]
    return chosen


def name_known_defect(env: Env, scenario: Scenario, verdict: Verdict) -> None:
    """A failed verdict that a known kernel defect explains entirely (lab.scenario.xfail) is an
    xfail naming it, with every failure kept in the verdict; never a retry or a warning."""
    if verdict.status != "fail":
        return
    defect = xfail.explain_verdict(verdict.failures, defects.upstream_version(env.target), scenario.in_map,
                                   env.target.kernel_patches)
    if defect:
        verdict.status, verdict.reason = "xfail", defect.describe()


def run_check(env: Env, scenario_id: str) -> Verdict:
    """Run one scenario on env's target (unless a gate says why not) and judge it."""
    scenario = SCENARIOS[scenario_id]
    verdict = Verdict(scenario_id)
    missing = redirect.sockmap_missing(env.target)
    if missing:  # not a gate: a run that judged nothing must not look like one that passed
        verdict.expect(False, f"the redirect cannot run here: {missing}")
        return verdict
    reason = program_gate(env, scenario) or (scenario.gate(env) if scenario.gate else None)
    if reason:
        verdict.status, verdict.reason = "gated", reason
        return verdict
    started = time.monotonic()
    try:
        scenario.check(env, verdict)
    except Stop:
        pass
    except LabError as exc:
        verdict.expect(False, f"the lab could not run it: {exc}")
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        # A result without the expected shape: a bug in a scenario or a check. Keep going so
        # the other scenarios still run and the table still prints.
        verdict.expect(False, f"internal error judging the result: {type(exc).__name__}: {exc} "
                              f"(see {env.artifacts or 'the scenario JSON'})")
    verdict.seconds = time.monotonic() - started
    name_known_defect(env, scenario, verdict)
    if env.artifacts is not None:
        (env.artifacts / f"{scenario_id}.verdict.json").write_text(json.dumps(verdict.as_dict(), indent=1))
    return verdict
