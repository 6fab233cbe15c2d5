#!/usr/bin/env python3
"""switching: connections whose bytes cross between the redirect and TCP over and over, checked
byte for byte at their offsets.

--conns connections, each carrying --bytes each way at once. Every side writes writes of random
size (log-uniform, 1 B to --largest) with random pauses and reads reads of random size with
random pauses, so that the reader falls behind (the guarded redirect then sends over TCP:
backpressure) and catches up during a writer's pause (the connection comes back to the redirect)
again and again. The bytes of each direction of each connection are a
stream of their own (a pseudo-random block of a prime length, different per connection and
direction): every read is compared at its offset, so a byte lost, duplicated or reordered anywhere
is found, and where. Each side then shuts its writing half and reads to EOF: the byte count must
match too.

Readers: ``poll`` (default) waits for readability with poll() and then reads without blocking,
as event-driven servers do; ``blocking`` reads with a blocking recv(), which with data flowing both
ways fails with EAGAIN on the host in every run, under the production variant as under the guarded
one (the blocking-eagain kernel defect, lab/conformance/defects.py), so it is a mode to show that
defect, not the guard's.

Stdlib only; the seed (--seed) makes the sizes and pauses the same on every run.
"""

from __future__ import annotations

import random
import select
import socket
import threading
import time

from common import connect, data_segs_out, describe, listen, nodelay, queue_sizes, recv, run, send_all

CATCH_UP_S = 1.0
BLOCK = 65521  # a prime: a shift by anything but a multiple of it changes the bytes at an offset


def stream_block(conn_index: int, direction: str) -> bytes:
    """The repeating pattern of one direction of one connection."""
    generator = random.Random(f"{conn_index}-{direction}")
    return bytes(generator.getrandbits(8) for _ in range(BLOCK))


def expected(block: bytes, offset: int, size: int) -> bytes:
    start = offset % BLOCK
    out = bytearray()
    while len(out) < size:
        take = min(BLOCK - start, size - len(out))
        out += block[start:start + take]
        start = 0
    return bytes(out)


def log_uniform(generator: random.Random, largest: int) -> int:
    return max(1, min(largest, int(2 ** generator.uniform(0, largest.bit_length()))))


class Direction:
    """One side's writing and reading on one connection; errors are kept, never retried."""

    def __init__(self, conn: socket.socket, index: int, side: str, args):
        self.conn, self.index, self.args = conn, index, args
        peer = "server" if side == "client" else "client"
        self.out_block, self.in_block = stream_block(index, side), stream_block(index, peer)
        self.sizes = random.Random(f"{args.seed}-{index}-{side}-w")
        self.pauses = random.Random(f"{args.seed}-{index}-{side}-r")
        self.sent = self.received = self.writes = self.reads = self.pauses_taken = 0
        self.mismatch: dict | None = None
        self.error: str | None = None
        self.poller = select.poll()
        self.poller.register(conn, select.POLLIN)

    def write(self) -> None:
        try:
            while self.sent < self.args.bytes:
                if self.sizes.random() < self.args.write_pause_chance:
                    self.let_reader_catch_up()
                size = min(log_uniform(self.sizes, self.args.largest), self.args.bytes - self.sent)
                send_all(self.conn, expected(self.out_block, self.sent, size))
                self.sent += size
                self.writes += 1
            self.conn.shutdown(socket.SHUT_WR)
        except OSError as exc:
            self.error = self.error or f"send after {self.sent} bytes: {exc}"

    def let_reader_catch_up(self) -> None:
        """A pause in writing: until TCP has delivered all we wrote (our send queue is empty, at
        most CATCH_UP_S), then a random while, in which the reader can read everything: the
        connection's way back to the redirect."""
        deadline = time.monotonic() + CATCH_UP_S
        while queue_sizes(self.conn)["outq"] > 0 and time.monotonic() < deadline:
            time.sleep(0.0002)
        time.sleep(self.sizes.uniform(0, self.args.pause_ms / 1000))

    def read(self) -> None:
        try:
            while True:
                if self.pauses.random() < self.args.pause_chance:
                    time.sleep(self.pauses.uniform(0, self.args.pause_ms / 1000))
                    self.pauses_taken += 1
                if self.args.readers == "poll":
                    self.poller.poll()
                    data = self.conn.recv(log_uniform(self.pauses, self.args.largest), socket.MSG_DONTWAIT)
                else:
                    data = recv(self.conn, log_uniform(self.pauses, self.args.largest))
                if not data:
                    return
                self.reads += 1
                want = expected(self.in_block, self.received, len(data))
                if data != want and self.mismatch is None:
                    first = next(i for i, (a, b) in enumerate(zip(data, want)) if a != b)
                    self.mismatch = {"offset": self.received + first, "read_size": len(data),
                                     "read_at": self.received}
                self.received += len(data)
        except OSError as exc:
            self.error = self.error or f"recv after {self.received} bytes: {exc}"

    def report(self) -> dict:
        return {"sent": self.sent, "received": self.received, "writes": self.writes, "reads": self.reads,
                "pauses": self.pauses_taken, "mismatch": self.mismatch, "error": self.error,
                "data_segs_out": data_segs_out(self.conn)}


def exchange(conns: list[socket.socket], side: str, args) -> dict:
    directions = [Direction(conn, index, side, args) for index, conn in enumerate(conns)]
    threads = [threading.Thread(target=work) for d in directions for work in (d.write, d.read)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    reports = [d.report() for d in directions]
    errors = [f"connection {i}: {r['error']}" for i, r in enumerate(reports) if r["error"]]
    return {"connections": reports, "seconds": round(time.monotonic() - started, 6),
            "error": errors[0] if errors else None}


def server(family: str, port: int, args):
    listener = listen(family, port, backlog=args.conns)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, args.rcvbuf)  # accepted sockets inherit it
    yield {"port": listener.getsockname()[1]}
    # In the client's order (by its port), so that connection i is the same stream on both sides.
    accepted = sorted((nodelay(listener.accept()[0]) for _ in range(args.conns)),
                      key=lambda conn: conn.getpeername()[1])
    listener.close()
    yield {"sockets": [describe(conn) for conn in accepted]}
    yield exchange(accepted, "server", args)
    for conn in accepted:
        conn.close()
    yield {"closed": True}


def client(port: int, family: str, args):
    conns = sorted((nodelay(connect(family, port, rcvbuf=args.rcvbuf)) for _ in range(args.conns)),
                   key=lambda conn: conn.getsockname()[1])
    yield {"sockets": [describe(conn) for conn in conns]}
    yield exchange(conns, "client", args)
    for conn in conns:
        conn.close()
    yield {"closed": True}


def body(ctx):
    args = ctx.args
    ctx.snapshot("start", ("counters",))
    server_w, client_w, sockets = ctx.start_pair(server, (args.family, args.port, args),
                                                 client, (args.family, args))
    ctx.snapshot("connected", ("sockhash",))
    results = ctx.data_phase([client_w, server_w])
    ctx.close([client_w, server_w])
    return {"sockets": sockets, "results": results}


def arguments(parser) -> None:
    parser.add_argument("--conns", type=int, default=4, help="connections at once")
    parser.add_argument("--bytes", type=int, default=4 << 20, help="bytes each way per connection")
    parser.add_argument("--largest", type=int, default=1 << 20, help="largest write and read")
    parser.add_argument("--pause-chance", type=float, default=0.05, help="chance of a pause before a read")
    parser.add_argument("--write-pause-chance", type=float, default=0.3, help="chance of a pause before a write")
    parser.add_argument("--pause-ms", type=float, default=5.0, help="longest pause")
    parser.add_argument("--rcvbuf", type=int, default=8192,
                        help="SO_RCVBUF of every socket: a queue the guard keeps, so it switches often")
    parser.add_argument("--seed", default="1")
    parser.add_argument("--readers", choices=("poll", "blocking"), default="poll",
                        help="poll() then a non-blocking recv(), or a blocking recv()")


if __name__ == "__main__":
    run("switching", body, arguments)
