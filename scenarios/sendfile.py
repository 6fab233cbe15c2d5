#!/usr/bin/env python3
"""sendfile / splice: the client sends a file of --bytes random bytes with os.sendfile, or through a
pipe with os.splice (file -> pipe -> socket); the server receives it and checks the SHA-256.

The file lives in /dev/shm (tmpfs), so the disk is not what is measured.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time

from common import connect, data_segs_out, describe, listen, nodelay, recv_exactly, run, sha256

PIPE_CHUNK = 64 << 10


def server(family: str, port: int, total: int):
    listener = listen(family, port)
    yield {"port": listener.getsockname()[1]}
    conn, _ = listener.accept()
    listener.close()
    yield describe(conn)
    digest = hashlib.sha256()
    received = recv_exactly(conn, total, digest)
    yield {"received": received, "received_sha256": digest.hexdigest()}
    conn.close()
    yield {"closed": True}


def send_with_sendfile(conn, fd: int, total: int) -> int:
    offset, calls = 0, 0
    while offset < total:
        sent = os.sendfile(conn.fileno(), fd, offset, total - offset)
        if sent == 0:
            raise OSError(f"sendfile sent nothing at offset {offset}")
        offset += sent
        calls += 1
    return calls


def send_with_splice(conn, fd: int, total: int) -> int:
    read_end, write_end = os.pipe()
    offset, calls = 0, 0
    try:
        while offset < total:
            in_pipe = os.splice(fd, write_end, min(PIPE_CHUNK, total - offset), offset_src=offset)
            offset += in_pipe
            while in_pipe:
                in_pipe -= os.splice(read_end, conn.fileno(), in_pipe)
                calls += 1
    finally:
        os.close(read_end)
        os.close(write_end)
    return calls


def client(port: int, family: str, mode: str, total: int):
    payload = os.urandom(total)
    with tempfile.TemporaryFile(dir="/dev/shm") as source:
        source.write(payload)
        source.flush()
        conn = nodelay(connect(family, port))
        yield describe(conn)
        started = time.monotonic()
        send = send_with_sendfile if mode == "sendfile" else send_with_splice
        calls = send(conn, source.fileno(), total)
        yield {"mode": mode, "sent": total, "sent_sha256": sha256(payload), "calls": calls,
               "seconds": round(time.monotonic() - started, 6), "data_segs_out": data_segs_out(conn)}
    conn.close()
    yield {"closed": True}


def body(ctx):
    args = ctx.args
    ctx.snapshot("start", ("counters",))
    server_w, client_w, sockets = ctx.start_pair(server, (args.family, args.port, args.bytes),
                                                 client, (args.family, args.mode, args.bytes))
    ctx.snapshot("connected", ("sockhash",))
    results = ctx.data_phase([client_w, server_w])
    ctx.close([client_w, server_w])
    return {"sockets": sockets, "results": results}


def arguments(parser) -> None:
    parser.add_argument("--mode", choices=("sendfile", "splice"), default="sendfile")
    parser.add_argument("--bytes", type=int, default=4 << 20)


if __name__ == "__main__":
    run("sendfile", body, arguments)
