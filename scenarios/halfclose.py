#!/usr/bin/env python3
"""halfclose: the client sends --bytes, then shutdown(SHUT_WR); the server must read every byte and
then see EOF, answer with --reply bytes and shut down its side; the client must read the answer and
see EOF too. A missing EOF shows up as a receive timeout, never as a hang.
"""

from __future__ import annotations

import hashlib
import os
import socket

from common import (accept_one, connect, data_segs_out, describe, nodelay, recv_until_eof, run,
                    send_all, sha256)

EOF_WAIT = 20  # seconds a side waits for the peer's data and EOF


def read_to_eof(conn: socket.socket) -> dict:
    digest = hashlib.sha256()
    conn.settimeout(EOF_WAIT)
    try:
        received = recv_until_eof(conn, digest)
        eof, error = True, None
    except socket.timeout:
        received, eof, error = -1, False, f"no EOF within {EOF_WAIT}s"
    return {"received_sha256": digest.hexdigest(), "received": received, "eof_seen": eof,
            "error": error}


def server(family: str, port: int, reply_bytes: int):
    conn = yield from accept_one(family, port)
    result = read_to_eof(conn)
    reply = os.urandom(reply_bytes)
    send_all(conn, reply)
    conn.shutdown(socket.SHUT_WR)
    result.update(sent=reply_bytes, sent_sha256=sha256(reply), data_segs_out=data_segs_out(conn))
    yield result
    conn.close()
    yield {"closed": True}


def client(port: int, family: str, nbytes: int):
    conn = nodelay(connect(family, port))
    yield describe(conn)
    payload = os.urandom(nbytes)
    send_all(conn, payload)
    conn.shutdown(socket.SHUT_WR)
    result = read_to_eof(conn)
    result.update(sent=nbytes, sent_sha256=sha256(payload), data_segs_out=data_segs_out(conn))
    yield result
    conn.close()
    yield {"closed": True}


def body(ctx):
    args = ctx.args
    ctx.snapshot("start", ("counters",))
    server_w, client_w, sockets = ctx.start_pair(server, (args.family, args.port, args.reply),
                                                 client, (args.family, args.bytes))
    ctx.snapshot("connected", ("sockhash",))
    results = ctx.data_phase([client_w, server_w])
    ctx.close([client_w, server_w])
    return {"sockets": sockets, "results": results}


def arguments(parser) -> None:
    parser.add_argument("--bytes", type=int, default=1 << 20)
    parser.add_argument("--reply", type=int, default=64 << 10)


if __name__ == "__main__":
    run("halfclose", body, arguments)
