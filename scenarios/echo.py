#!/usr/bin/env python3
"""echo: one connection, the client sends --size bytes and waits for them to come back, --trips times.

The round trips per second are the figure; the check is that every echo came back intact.
"""

from __future__ import annotations

import os
import time

from common import accept_one, connect, data_segs_out, describe, nodelay, recv, recv_bytes, run, send_all


def server(family: str, port: int, total: int):
    conn = yield from accept_one(family, port)
    echoed = 0
    while echoed < total:
        data = recv(conn, min(65536, total - echoed))
        if not data:
            break
        send_all(conn, data)
        echoed += len(data)
    yield {"echoed": echoed, "data_segs_out": data_segs_out(conn)}
    conn.close()
    yield {"closed": True}


def client(port: int, family: str, trips: int, size: int):
    conn = nodelay(connect(family, port))
    yield describe(conn)
    payload, intact, sends = os.urandom(size), 0, 0
    started = time.monotonic()
    for _ in range(trips):
        send_all(conn, payload)
        sends += 1
        reply = recv_bytes(conn, size)
        intact += reply == payload
    seconds = time.monotonic() - started
    yield {"trips": trips, "intact_trips": intact, "sends": sends, "bytes": trips * size,
           "seconds": round(seconds, 6), "trips_per_second": round(trips / seconds, 1),
           "data_segs_out": data_segs_out(conn)}
    conn.close()
    yield {"closed": True}


def body(ctx):
    args = ctx.args
    ctx.snapshot("start", ("counters",))
    server_w, client_w, sockets = ctx.start_pair(server, (args.family, args.port, args.trips * args.size),
                                                 client, (args.family, args.trips, args.size))
    ctx.snapshot("connected", ("sockhash",))
    results = ctx.data_phase([client_w, server_w])
    ctx.close([client_w, server_w])
    return {"sockets": sockets, "results": results}


def arguments(parser) -> None:
    parser.add_argument("--trips", type=int, default=1000)
    parser.add_argument("--size", type=int, default=64)


if __name__ == "__main__":
    run("echo", body, arguments)
