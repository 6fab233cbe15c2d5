"""Run scenario programs (``scenarios/*.py``) on a Target and return their parsed JSON results.

A scenario runs in a fresh network namespace (``unshare -n``); its processes put themselves into
the cgroups they are given. Everything goes through the Target interface, so a scenario runs the
same on the host and in a guest.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Callable

from lab import SCENARIOS_DIR, LabError
from lab.redirect import RUN_DIR
from lab.target import Target

PAIR_ON_TARGET = f"{RUN_DIR}/scenarios/pair.py"


def run_pair(target: Target, family: str = "ipv4", nbytes: int = 4 << 20,
             client_cgroup: str | None = None, server_cgroup: str | None = None,
             while_open: Callable[[dict], object] | None = None,
             timeout: int = 120) -> tuple[dict, object]:
    """Run scenarios/pair.py in a fresh netns on ``target``.

    ``while_open(state)`` is called while the connection is still up (after the data phase), e.g. to
    dump the sockhash. Returns (pair.py's result, while_open's result).
    """
    target.put(SCENARIOS_DIR / "pair.py", PAIR_ON_TARGET)
    hold_dir = target.run(["mktemp", "-d", f"{RUN_DIR}/hold.XXXXXX"], check=True).stdout.strip()
    cmd = ["unshare", "-n", "python3", PAIR_ON_TARGET, "--lo-up", "--family", family,
           "--bytes", str(nbytes), "--hold-dir", hold_dir, "--timeout", str(timeout)]
    if client_cgroup:
        cmd += ["--client-cgroup", client_cgroup]
    if server_cgroup:
        cmd += ["--server-cgroup", server_cgroup]
    outcome: dict = {}

    def run_scenario() -> None:
        try:
            outcome["result"] = target.run(cmd, timeout=timeout + 30)
        except LabError as exc:  # e.g. a timeout: reported below, in the caller's thread
            outcome["error"] = exc

    runner = threading.Thread(target=run_scenario)
    runner.start()
    held = None
    try:
        state = _wait_for_state(target, hold_dir, runner)
        if state is not None and while_open is not None:
            held = while_open(state)
    finally:
        target.run(["touch", f"{hold_dir}/release"])
        runner.join()
        target.run(["rm", "-rf", hold_dir])
    if "error" in outcome:
        raise outcome["error"]
    result = outcome["result"]
    if not result.stdout.strip():
        raise LabError(f"scenarios/pair.py printed nothing on {target.name} (exit {result.rc}): "
                       f"{result.stderr.strip()[-2000:]}")
    return json.loads(result.stdout), held


def _wait_for_state(target: Target, hold_dir: str, runner: threading.Thread) -> dict | None:
    while runner.is_alive():
        got = target.run(["cat", f"{hold_dir}/state.json"])
        if got.ok:
            return json.loads(got.stdout)
        time.sleep(0.05)
    return None  # pair.py ended without holding (an error): its JSON says why


def plain(address: list) -> tuple[str, int]:
    """A socket address as the decoded keys show it: v4-mapped IPv6 as IPv4."""
    host, port = address
    if host.startswith("::ffff:") and "." in host:
        host = host.removeprefix("::ffff:")
    return (host, port)


def socket_tuples(pair: dict, roles=("client", "server")) -> set:
    """{(local, remote)} of the scenario's sockets, to compare with the decoded map keys."""
    return {(plain(pair[r]["sockname"]), plain(pair[r]["peername"])) for r in roles}


def entry_tuples(entries: list[dict]) -> set:
    return {(tuple(e["local"]), tuple(e["remote"])) for e in entries}
