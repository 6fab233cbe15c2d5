#!/usr/bin/env python3
"""bulk: one connection, both sides send --bytes random bytes at once and check the SHA-256 of what
arrives. Also the shape of three other scenarios, chosen by arguments:

  --writes small         writes of 1 B .. 4 KiB instead of --chunk (small writes)
  --server-cgroup none   the server stays outside the cgroup (peer outside the cgroup)
  --midway-exec FILE     the client runs the commands of FILE (a JSON list of argv lists) once half
                         of its bytes are sent, e.g. detach the redirect in the middle of the stream
"""

from __future__ import annotations

import json
import subprocess
import time

from common import (accept_one, bulk_sizes, connect, describe, nodelay, run, small_sizes,
                    stack_counters, transfer)


def sizes_of(args) -> list[int]:
    if args.writes == "small":
        return small_sizes(args.small_writes)
    return bulk_sizes(args.bytes, args.chunk)


def server(family: str, port: int, sizes: list[int]):
    conn = yield from accept_one(family, port)
    yield transfer(conn, sizes)
    conn.close()
    yield {"closed": True}


def run_commands(path: str, device: str) -> dict:
    """The mid-stream hook: run each command, with the namespace's counters around them."""
    with open(path) as commands_file:
        commands = json.load(commands_file)
    before = stack_counters(device)
    started = time.monotonic()
    results = []
    for argv in commands:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        results.append({"argv": argv, "rc": proc.returncode, "stderr": proc.stderr.strip()[-500:]})
    return {"commands": results, "seconds": round(time.monotonic() - started, 6),
            "counters_before": before, "counters_after": stack_counters(device)}


def client(port: int, family: str, sizes: list[int], midway: str | None, device: str):
    conn = nodelay(connect(family, port))
    yield describe(conn)
    hook = (sum(sizes) // 2, lambda: run_commands(midway, device)) if midway else None
    result = transfer(conn, sizes, hook)
    result["counters_end"] = stack_counters(device)
    yield result
    conn.close()
    yield {"closed": True}


def body(ctx):
    args = ctx.args
    sizes = sizes_of(args)
    midway = args.midway_exec if ctx.redirect else None
    ctx.snapshot("start", ("counters",))
    server_w, client_w, sockets = ctx.start_pair(server, (args.family, args.port, sizes),
                                                 client, (args.family, sizes, midway, ctx.device))
    ctx.snapshot("connected", ("sockhash",))
    results = ctx.data_phase([client_w, server_w])
    # After a mid-stream detach the pins are gone: nothing left to dump.
    if midway:
        ctx.args.map_pin = ctx.args.counters_pin = None
    ctx.close([client_w, server_w], open_snapshot=True)
    return {"sockets": sockets, "results": results, "writes_per_side": len(sizes),
            "bytes_per_side": sum(sizes)}


def arguments(parser) -> None:
    parser.add_argument("--bytes", type=int, default=4 << 20, help="bytes each side sends")
    parser.add_argument("--chunk", type=int, default=64 << 10, help="bytes per write")
    parser.add_argument("--writes", choices=("bulk", "small"), default="bulk")
    parser.add_argument("--small-writes", type=int, default=1000, help="writes per side (--writes small)")
    parser.add_argument("--midway-exec", help="JSON list of argv lists the client runs mid-stream")


if __name__ == "__main__":
    run("bulk", body, arguments)
