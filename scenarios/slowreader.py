#!/usr/bin/env python3
"""slowreader: the server does not read while the client writes with non-blocking sends until the
kernel says EAGAIN (backpressure) or --cap bytes are queued. Reported: how much the sender could
queue, and what that cost in memory (MemAvailable, the TCP memory pages of /proc/net/sockstat, the
socket queues). Then the server drains everything and checks the SHA-256.

Plain TCP stops the sender after a few MB (the receive window and the send buffer); under the
redirect the payload goes straight into the receiver's queue, and how much can pile up there is the
measurement (so far: until the cap, or until TCP's global memory limit, net.ipv4.tcp_mem (global, so not readable from this namespace), makes
send() fail with ENOMEM). Keep --cap within what the target can spare.
"""

from __future__ import annotations

import errno
import hashlib
import os
import time

from common import connect, data_segs_out, describe, listen, memory_figures, queue_sizes, recv_exactly, run

CHUNK = 64 << 10


def server(family: str, port: int):
    listener = listen(family, port)
    yield {"port": listener.getsockname()[1]}
    conn, _ = listener.accept()
    listener.close()
    yield describe(conn)
    order = yield {"reading": False}  # the fill phase: this side reads nothing
    queues = queue_sizes(conn)
    digest = hashlib.sha256()
    conn.settimeout(60)
    started = time.monotonic()
    received = recv_exactly(conn, order["drain"], digest)
    yield {"received": received, "received_sha256": digest.hexdigest(), "queues_before_drain": queues,
           "drain_seconds": round(time.monotonic() - started, 6)}
    conn.close()
    yield {"closed": True}


def client(port: int, family: str, cap: int):
    conn = connect(family, port)
    yield describe(conn)
    chunk = os.urandom(CHUNK)
    digest = hashlib.sha256()
    memory_before = memory_figures()
    conn.setblocking(False)
    queued, stopped_by, started = 0, "cap", time.monotonic()
    while queued < cap:
        try:
            sent = conn.send(chunk[:min(CHUNK, cap - queued)])
        except BlockingIOError:
            stopped_by = "EAGAIN"
            break
        except OSError as exc:
            stopped_by = f"{errno.errorcode.get(exc.errno, exc.errno)}: {exc.strerror}"
            break
        digest.update(chunk[:sent])
        queued += sent
    seconds = time.monotonic() - started
    memory_after = memory_figures()
    queues = queue_sizes(conn)
    conn.setblocking(True)
    yield {"queued": queued, "stopped_by": stopped_by, "cap": cap, "sent_sha256": digest.hexdigest(),
           "seconds": round(seconds, 6), "queues": queues, "data_segs_out": data_segs_out(conn),
           "mem_available_drop_kib": memory_before["mem_available_kib"] - memory_after["mem_available_kib"],
           "tcp_mem_pages_rise": memory_after["tcp_mem_pages"] - memory_before["tcp_mem_pages"]}
    yield {"drained": True}
    conn.close()
    yield {"closed": True}


def body(ctx):
    args = ctx.args
    ctx.snapshot("start", ("counters",))
    server_w, client_w, sockets = ctx.start_pair(server, (args.family, args.port),
                                                 client, (args.family, args.cap))
    ctx.snapshot("connected", ("sockhash",))
    results = ctx.data_phase([client_w, server_w], label="fill")
    server_w.resume(drain=results["client"]["queued"])
    results["server"] = server_w.report()
    client_w.resume()
    client_w.report()
    ctx.close([client_w, server_w])
    return {"sockets": sockets, "results": results}


def arguments(parser) -> None:
    parser.add_argument("--cap", type=int, default=64 << 20, help="stop after queuing this many bytes")


if __name__ == "__main__":
    run("slowreader", body, arguments)
