#!/usr/bin/env python3
"""netns2: two network namespaces, each with a server on 127.0.0.1:--port and a client bound to
127.0.0.1:--client-port, so both connections have the same addresses and ports, open at the same
time. Each side sends its own random bytes; every receiver checks it got exactly its own peer's
bytes, so a byte that crossed between the namespaces shows up as a hash mismatch.

Namespace 0 connects first, then namespace 1 (a fixed order, so the map's first-come slot is
namespace 0's). Both worker processes join the round's cgroup.
"""

from __future__ import annotations

import os
import socket
import threading

from common import bulk_sizes, connect, describe, listen, nodelay, run, transfer


def namespace(index: int, port: int, client_port: int, sizes: list[int]):
    listener = listen("ipv4", port)
    client = nodelay(connect("ipv4", port, bind_port=client_port))
    server, _ = listener.accept()
    listener.close()
    nodelay(server)
    yield {"index": index, "netns_inode": os.stat("/proc/self/ns/net").st_ino,
           "client": describe(client), "server": describe(server)}
    results = {}

    def side(name: str, conn: socket.socket) -> None:
        conn.settimeout(30)
        results[name] = transfer(conn, sizes)

    threads = [threading.Thread(target=side, args=(name, conn))
               for name, conn in (("client", client), ("server", server))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    yield results
    client.close()
    server.close()
    yield {"closed": True}


def body(ctx):
    args = ctx.args
    sizes = bulk_sizes(args.bytes, args.chunk)
    ctx.snapshot("start", ("counters",))
    workers, sockets = [], {}
    ctx.counter_sources = []  # the two namespaces' loopbacks, read through /proc/<pid>/net
    for index in range(2):
        device = f"{ctx.device}n{index}"
        worker = ctx.spawn(namespace, index, args.port, args.client_port, sizes,
                           cgroup=ctx.client_cgroup, name=f"netns{index}", netns_device=device)
        sockets[worker.name] = worker.report()
        ctx.counter_sources.append((device, worker.pid))
        workers.append(worker)
    ctx.snapshot("connected", ("sockhash",))
    results = ctx.data_phase(workers)
    ctx.close(workers)
    return {"sockets": sockets, "results": results}


def arguments(parser) -> None:
    parser.add_argument("--client-port", type=int, default=0, help="default: --port + 1")
    parser.add_argument("--bytes", type=int, default=1 << 20)
    parser.add_argument("--chunk", type=int, default=64 << 10)


if __name__ == "__main__":
    def body_with_defaults(ctx):
        if not ctx.args.port:
            raise ValueError("netns2 needs a fixed --port (both namespaces use the same one)")
        ctx.args.client_port = ctx.args.client_port or ctx.args.port + 1
        return body(ctx)

    run("netns2", body_with_defaults, arguments)
