#!/usr/bin/env python3
"""untouched: UDP datagrams and an AF_UNIX stream inside the cgroup. The redirect handles TCP only:
no map entry, no program counter may move, and every UDP datagram still crosses the loopback.

UDP: the client sends --datagrams datagrams of --size bytes to 127.0.0.1:--port, the server echoes
each one. AF_UNIX: a stream connection on an abstract address carries --unix-bytes both ways.
"""

from __future__ import annotations

import os
import socket
import time

from common import recv_bytes, run, send_all, sha256


def server(port: int, unix_name: str, datagrams: int, unix_bytes: int):
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", port))
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    unix.bind(unix_name)
    unix.listen(1)
    yield {"port": udp.getsockname()[1]}
    conn, _ = unix.accept()
    unix.close()
    yield {"unix": "accepted"}
    udp.settimeout(10)
    echoed = 0
    for _ in range(datagrams):
        data, peer = udp.recvfrom(65536)
        udp.sendto(data, peer)
        echoed += 1
    data = recv_bytes(conn, unix_bytes)
    send_all(conn, data)
    yield {"udp_echoed": echoed, "unix_echoed": len(data)}
    conn.close()
    udp.close()
    yield {"closed": True}


def client(port: int, unix_name: str, datagrams: int, size: int, unix_bytes: int):
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    unix.connect(unix_name)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.settimeout(10)
    yield {"unix": "connected"}
    started = time.monotonic()
    intact = 0
    for _ in range(datagrams):
        payload = os.urandom(size)
        udp.sendto(payload, ("127.0.0.1", port))
        intact += udp.recvfrom(65536)[0] == payload
    payload = os.urandom(unix_bytes)
    send_all(unix, payload)
    reply = recv_bytes(unix, unix_bytes)
    yield {"datagrams": datagrams, "intact_datagrams": intact, "unix_bytes": unix_bytes,
           "unix_intact": sha256(reply) == sha256(payload), "seconds": round(time.monotonic() - started, 6)}
    unix.close()
    udp.close()
    yield {"closed": True}


def body(ctx):
    args = ctx.args
    unix_name = f"\0sockredir-untouched-{os.getpid()}-{ctx.index}"
    ctx.snapshot("start", ("counters",))
    server_w, client_w, _ = ctx.start_pair(server, (args.port, unix_name, args.datagrams, args.unix_bytes),
                                           client, (unix_name, args.datagrams, args.size, args.unix_bytes))
    ctx.snapshot("connected", ("sockhash",))
    results = ctx.data_phase([client_w, server_w])
    ctx.close([client_w, server_w])
    return {"results": results}


def arguments(parser) -> None:
    parser.add_argument("--datagrams", type=int, default=200)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--unix-bytes", type=int, default=1 << 20)


if __name__ == "__main__":
    run("untouched", body, arguments)
