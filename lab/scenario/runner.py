"""Run scenario programs (``scenarios/*.py``) on a Target and return their parsed JSON results.

A scenario runs in a fresh network namespace (``unshare -n``); its processes put themselves into
the cgroups they are given. Everything goes through the Target interface, so a scenario runs the
same on the host and in a guest.

``run_pair`` drives ``scenarios/pair.py`` (one connection, held open while the caller looks at the
map). ``run_scenario`` drives the other programs, which share ``scenarios/common.py``: each runs
its rounds (``baseline`` without the redirect, ``redirect`` in the cgroup) in fresh namespaces,
dumps the map itself at fixed points (``--map-pin``), and prints one JSON object.
"""

from __future__ import annotations

import json
from concurrent.futures import Future, ThreadPoolExecutor, wait as wait_futures
from typing import Callable, Sequence

from lab import LabError, wait
from lab.vm.target import RUN_DIR, Target
from lab.vm.staging import ensure_with_shared


def run_scenario(target: Target, name: str, args: Sequence[str] = (), cgroup: str | None = None, *,
                 rounds: Sequence[str] = ("baseline", "redirect"), map_pin: str | None = None,
                 counters_pin: str | None = None, tag: str = "", port: int = 0, trace=None,
                 timeout: int = 120) -> dict:
    """Run ``scenarios/<name>.py`` on ``target`` and return its JSON result.

    ``cgroup``: where both sides go in redirect rounds (``args`` may override a side with
    ``--client-cgroup``/``--server-cgroup``, ``none`` = stay outside). ``map_pin``/``counters_pin``:
    the installation's pinned maps, dumped by the scenario at its snapshots. ``tag``: prefix of the
    loopback names (trace filters select it). ``trace``: a ``lab.scenario.trace.Session`` (anything
    with ``wrap(command) -> command``) to count tracepoints around the data phase.
    The result also carries ``rc``, ``stderr`` and ``command`` of the run.
    """
    program = ensure_with_shared(target, f"{name}.py")
    # -S: no site module (stdlib only), a quarter of a second less per run in a TCG guest.
    command = ["unshare", "-n", "python3", "-S", program, "--rounds", ",".join(rounds),
               "--timeout", str(timeout)]
    for option, value in (("--cgroup", cgroup), ("--map-pin", map_pin),
                          ("--counters-pin", counters_pin), ("--tag", tag), ("--port", port)):
        if value:
            command += [option, str(value)]
    command += [str(a) for a in args]
    if trace is not None:
        command = trace.wrap(command)
    # The scenario times itself out (and says which worker hung); this is the backstop.
    result = target.run(command, timeout=timeout + 60)
    try:
        parsed = json.loads(result.stdout)
    except json.JSONDecodeError:
        raise LabError(f"scenario {name} printed no JSON on {target.name} (exit {result.rc}); "
                       f"stderr: {result.stderr.strip()[-2000:]}") from None
    parsed.update(rc=result.rc, stderr=result.stderr[-4000:], command=result.command)
    return parsed


def run_pair(target: Target, family: str = "ipv4", nbytes: int = 4 << 20,
             client_cgroup: str | None = None, server_cgroup: str | None = None,
             while_open: Callable[[dict], object] | None = None,
             timeout: int = 120, port: int = 0) -> tuple[dict, object]:
    """Run scenarios/pair.py in a fresh netns on ``target``.

    ``while_open(state)`` is called while the connection is still up (after the data phase), e.g. to
    dump the sockhash. ``port`` fixes the server's port (0: any free one). Returns (pair.py's
    result, while_open's result).
    """
    pair = ensure_with_shared(target, "pair.py")
    hold_dir = target.run(["mktemp", "-d", f"{RUN_DIR}/hold.XXXXXX"], check=True).stdout.strip()
    cmd = ["unshare", "-n", "python3", "-S", pair, "--lo-up", "--family", family,
           "--bytes", str(nbytes), "--hold-dir", hold_dir, "--timeout", str(timeout), "--port", str(port)]
    if client_cgroup:
        cmd += ["--client-cgroup", client_cgroup]
    if server_cgroup:
        cmd += ["--server-cgroup", server_cgroup]
    held = None
    # pair.py runs while this thread looks at the held connection; its outcome (or the LabError of
    # its run, e.g. a timeout) comes back through the future.
    with ThreadPoolExecutor(max_workers=1) as pool:
        running = pool.submit(target.run, cmd, timeout=timeout + 30)
        try:
            state = _wait_for_state(target, hold_dir, running)
            if state is not None and while_open is not None:
                held = while_open(state)
        finally:
            target.run(["touch", f"{hold_dir}/release"])
            wait_futures([running])
            target.run(["rm", "-rf", hold_dir])
        result = running.result()
    if not result.stdout.strip():
        raise LabError(f"scenarios/pair.py printed nothing on {target.name} (exit {result.rc}): "
                       f"{result.stderr.strip()[-2000:]}")
    return json.loads(result.stdout), held


def _wait_for_state(target: Target, hold_dir: str, running: Future) -> dict | None:
    """The state pair.py holds its connection in; None if it ended without holding (an error:
    its JSON says why)."""
    ended = object()
    got = wait.until(lambda: target.read_text(f"{hold_dir}/state.json") or (ended if running.done() else None),
                     every=0.05)
    return None if got is ended else json.loads(got)


def plain(address: list) -> tuple[str, int]:
    """A socket address as the decoded keys show it: v4-mapped IPv6 as IPv4."""
    host, port = address
    if host.startswith("::ffff:") and "." in host:
        host = host.removeprefix("::ffff:")
    return (host, port)


def socket_tuple(description: dict) -> tuple:
    """(local, remote) of a socket described by a scenario, as the decoded map keys show them."""
    return (plain(description["sockname"]), plain(description["peername"]))


def socket_tuples(pair: dict, roles=("client", "server")) -> set:
    """{(local, remote)} of the scenario's sockets, to compare with the decoded map keys."""
    return {socket_tuple(pair[r]) for r in roles}


def entry_tuples(entries: list[dict]) -> set:
    return {(tuple(e["local"]), tuple(e["remote"])) for e in entries}


def cookie_mismatches(entries: list[dict], sockets: list[dict]) -> list[str] | None:
    """Which keys hold a socket other than the one with those addresses (compared by SO_COOKIE,
    as the kernel's sockmap selftests do). None when the map's values cannot be read back (a
    4-byte value, as the seed's: the kernel returns a cookie only into 8 bytes)."""
    if not entries or not all("cookie" in e for e in entries):
        return None
    by_tuple = {socket_tuple(s): s.get("cookie") for s in sockets}
    problems = []
    for entry in entries:
        key = (tuple(entry["local"]), tuple(entry["remote"]))
        if key in by_tuple and entry["cookie"] != by_tuple[key]:
            owner = next((t for t, c in by_tuple.items() if c == entry["cookie"]), None)
            problems.append(f"key {key} holds socket cookie {entry['cookie']}"
                            + (f" (the socket {owner})" if owner else " (no socket of the scenario)")
                            + f", not its own socket's {by_tuple[key]}")
    return problems
