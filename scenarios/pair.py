#!/usr/bin/env python3
"""One TCP connection between two processes, data both ways, held open on request; JSON on stdout.

Runs on the target (host or guest), stdlib only, on scenarios/common.py's harness (its workers,
data phase, transfer and first-error rule). Meant to run in a fresh network namespace
(``unshare -n python3 pair.py --lo-up ...``). A server and a client worker each join their cgroup
(``--server-cgroup``/``--client-cgroup``) before they create their socket, then:

  server: listen, accept          client: connect
  both:   report the socket (addresses, cookie), then send --bytes random bytes in --chunk
          writes while receiving the peer's --bytes (common.transfer: byte counts, SHA-256 of
          each direction, the TCP data segments the socket sent: 0 when the redirect carried
          its payload), keep the socket open

The data phase's namespace counters (TCP segments, loopback packets) are ``counters_delta``. With
``--hold-dir DIR`` the result so far is written to DIR/state.json and the sockets stay open until
DIR/release exists: the caller can inspect the map while the connection is up.

The result's ``error`` says what went wrong, if anything: ``run_error`` when the run itself failed
(a worker died, a side stayed blocked after its peer's error, the timeout), else each side's own
transfer error (also in ``client.error``/``server.error``).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time

from common import (Round, Trace, accept_one, base_parser, bulk_sizes, connect, describe, nodelay, on_alarm,
                    setup_loopback, transfer)


def server(family: str, port: int, nbytes: int, chunk: int):
    conn = yield from accept_one(family, port)
    yield from exchange(conn, nbytes, chunk)


def client(port: int, family: str, nbytes: int, chunk: int):
    conn = nodelay(connect(family, port))
    yield describe(conn)
    yield from exchange(conn, nbytes, chunk)


def exchange(conn, nbytes: int, chunk: int):
    """Transfer when told to, close when told to."""
    yield transfer(conn, bulk_sizes(nbytes, chunk))
    conn.close()
    yield {"closed": True}


def hold(hold_dir: str, state: dict, timeout: float) -> None:
    tmp = os.path.join(hold_dir, ".state.json.tmp")
    with open(tmp, "w") as out:
        json.dump(state, out)
    os.replace(tmp, os.path.join(hold_dir, "state.json"))
    deadline = time.monotonic() + timeout
    while not os.path.exists(os.path.join(hold_dir, "release")):
        if time.monotonic() > deadline:
            raise TimeoutError("nobody released the hold")
        time.sleep(0.02)


def run(args, result: dict) -> None:
    # One round whose sides are in the cgroups given (none given: plain TCP); its loopback is "lo".
    ctx = Round(args, "pair", 0, Trace(None))
    try:
        server_worker, client_worker, described = ctx.start_pair(
            server, (args.family, args.port, args.bytes, args.chunk),
            client, (args.family, args.bytes, args.chunk))
        for role, description in described.items():
            result[role] = {**description, "cgroup": getattr(ctx, f"{role}_cgroup")}
        for role, report in ctx.data_phase([server_worker, client_worker]).items():
            result[role].update(report)
        result["counters_delta"] = ctx.phases["data"]["counters"]
        side_errors = [f"{role}: {result[role]['error']}" for role in ("client", "server") if result[role]["error"]]
        result["error"] = "; ".join(side_errors) or None
        result["intact"] = result["error"] is None and all(
            result[a]["sent_sha256"] == result[b]["received_sha256"] and result[b]["received"] == args.bytes
            for a, b in (("client", "server"), ("server", "client")))
        if args.hold_dir:
            hold(args.hold_dir, result, args.timeout)
        ctx.close([server_worker, client_worker])
    finally:
        ctx.finish()


def main() -> int:
    parser = base_parser(__doc__.splitlines()[0], rounds=False)
    parser.add_argument("--bytes", type=int, default=4 << 20, help="bytes each side sends")
    parser.add_argument("--chunk", type=int, default=64 << 10, help="bytes per send call")
    parser.add_argument("--lo-up", action="store_true", help="bring loopback up (fresh netns)")
    parser.add_argument("--hold-dir", help="write state.json here, wait for the file 'release'")
    args = parser.parse_args()
    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(args.timeout + 5)  # the workers time out first and say where they hung
    if args.lo_up:
        setup_loopback("lo")
    result: dict = {"family": args.family, "bytes": args.bytes, "chunk": args.chunk,
                    "error": None, "run_error": None, "intact": False}
    try:
        run(args, result)
    except Exception as exc:
        result["run_error"] = result["error"] = f"{type(exc).__name__}: {exc}"
    print(json.dumps(result))
    return 0 if result["error"] is None else 1


if __name__ == "__main__":
    sys.exit(main())
