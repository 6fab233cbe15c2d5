#!/usr/bin/env python3
"""concurrent: --conns connections open at once (two map entries each while open); every
connection carries its own --size random bytes to the server and back.

Also the shape of the full-map scenario: with a tiny max_entries, the connections that did not fit
in the map must still deliver every byte (over plain TCP).
"""

from __future__ import annotations

import os
import time

from common import connect, data_segs_out, describe, listen, recv_bytes, run, send_all


def server(family: str, port: int, conns: int, size: int):
    listener = listen(family, port, backlog=conns)
    yield {"port": listener.getsockname()[1]}
    accepted = [listener.accept()[0] for _ in range(conns)]
    listener.close()
    yield {"sockets": [describe(conn) for conn in accepted]}
    echoed = 0
    for conn in accepted:
        data = recv_bytes(conn, size)
        send_all(conn, data)
        echoed += len(data)
    # per socket, in the order of "sockets": which connections' payload crossed TCP/IP
    yield {"echoed": echoed, "data_segs_out": [data_segs_out(conn) for conn in accepted]}
    for conn in accepted:
        conn.close()
    yield {"closed": True}


def client(port: int, family: str, conns: int, size: int):
    sockets = [connect(family, port) for _ in range(conns)]
    yield {"sockets": [describe(conn) for conn in sockets]}
    payloads = [os.urandom(size) for _ in sockets]
    started = time.monotonic()
    for conn, payload in zip(sockets, payloads):
        send_all(conn, payload)
    intact, received = 0, 0
    for conn, payload in zip(sockets, payloads):
        reply = recv_bytes(conn, size)
        received += len(reply)
        intact += reply == payload
    yield {"conns": conns, "intact_conns": intact, "sent": conns * size, "received": received,
           "seconds": round(time.monotonic() - started, 6),
           "data_segs_out": [data_segs_out(conn) for conn in sockets]}
    for conn in sockets:
        conn.close()
    yield {"closed": True}


def body(ctx):
    args = ctx.args
    ctx.snapshot("start", ("counters",))
    server_w, client_w, sockets = ctx.start_pair(server, (args.family, args.port, args.conns, args.size),
                                                 client, (args.family, args.conns, args.size))
    ctx.snapshot("connected", ("sockhash",))
    results = ctx.data_phase([client_w, server_w])
    ctx.close([client_w, server_w], open_snapshot=True)
    return {"sockets": sockets, "results": results}


def arguments(parser) -> None:
    parser.add_argument("--conns", type=int, default=500)
    parser.add_argument("--size", type=int, default=1024)


if __name__ == "__main__":
    run("concurrent", body, arguments)
