#!/usr/bin/env python3
"""splice_proxy: a TCP proxy that copies with splice(2), and the two ends that check it.

    splice_proxy.py echo --port P --report FILE          the upstream: echoes, then writes FILE
    splice_proxy.py client --upstream-port P --bytes N --deadline S --upstream-report FILE
    splice_proxy.py proxy --upstream-port P              started by the client

The proxy does what Go's io.Copy between two TCP connections and haproxy's splicing do: per
direction, splice(2) from the source socket into a pipe and from the pipe into the destination
socket, so the bytes never pass through user space. It accepts one client, connects to the upstream
and copies both directions until each ends, then passes the end on (shutdown(SHUT_WR)).

``client`` starts the proxy, sends N random bytes through it to the echo server and reads the echo
back, all within S seconds: a transfer that stops (a splice read that never sees the data) is the
result, not something to wait out. Then it stops the proxy (SIGTERM: the proxy prints how far each
direction got and which call it is in) and prints one JSON object: what was sent and echoed with
their SHA-256, the proxy's directions and the upstream's report (what reached it, its SHA-256).

Run by bench/peer.sh (lab/conformance/apps.py): the echo server is peer.sh's server, the client its
client; every process is a child of peer.sh, so every socket belongs to the cgroup under test.
Stdlib only, no site module (-S).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time

CHUNK = 1 << 16
PROXY_STOP_SECONDS = 5   # the proxy answers SIGTERM at once: its main thread only waits for it


# ----------------------------------------------------------------------------- the upstream

def echo(port: int, report: str) -> None:
    """Echo one connection; at its end write what arrived (bytes, SHA-256) to ``report``, then
    close, so the client's EOF comes after the report exists."""
    listener = socket.create_server(("127.0.0.1", port))
    conn, _ = listener.accept()
    digest, received = hashlib.sha256(), 0
    while data := conn.recv(CHUNK):
        digest.update(data)
        received += len(data)
        conn.sendall(data)
    write_json(report, {"received": received, "sha256": digest.hexdigest()})
    conn.shutdown(socket.SHUT_WR)
    conn.close()


def write_json(path: str, doc: dict) -> None:
    with open(f"{path}.tmp", "w") as handle:
        json.dump(doc, handle)
    os.replace(f"{path}.tmp", path)


# ----------------------------------------------------------------------------- the proxy

class Direction:
    """One direction's progress; ``state`` is the call it is in, so a hang shows where."""

    def __init__(self, name: str):
        self.name = name
        self.spliced_in = 0     # bytes splice(2) moved from the source socket into the pipe
        self.spliced_out = 0    # bytes splice(2) moved from the pipe into the destination socket
        self.state = "starting"

    def as_dict(self) -> dict:
        return dict(vars(self))


def copy(direction: Direction, source: socket.socket, destination: socket.socket) -> None:
    read_end, write_end = os.pipe()
    try:
        while True:
            direction.state = "reading"
            moved = os.splice(source.fileno(), write_end, CHUNK)
            if moved == 0:
                break
            direction.spliced_in += moved
            direction.state = "writing"
            while moved:
                written = os.splice(read_end, destination.fileno(), moved)
                direction.spliced_out += written
                moved -= written
        destination.shutdown(socket.SHUT_WR)
        direction.state = "done"
    except OSError as exc:
        direction.state = f"error: {exc}"
    finally:
        os.close(read_end)
        os.close(write_end)


def relay(listener: socket.socket, upstream_port: int, directions: list[Direction]) -> None:
    client, _ = listener.accept()
    upstream = socket.create_connection(("127.0.0.1", upstream_port))
    for name, source, destination in (("client->upstream", client, upstream),
                                      ("upstream->client", upstream, client)):
        direction = Direction(name)
        directions.append(direction)
        threading.Thread(target=copy, args=(direction, source, destination), daemon=True).start()


def proxy(upstream_port: int) -> None:
    """Print the port, relay one client, and on SIGTERM print the directions and exit (copy threads
    may be blocked in splice(2) for good: os._exit does not wait for them)."""
    # Blocked before any thread starts, so every thread inherits the mask and the signal waits
    # for sigwait() in this thread.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    listener = socket.create_server(("127.0.0.1", 0))
    directions: list[Direction] = []
    threading.Thread(target=relay, args=(listener, upstream_port, directions), daemon=True).start()
    print(listener.getsockname()[1], flush=True)
    signal.sigwait({signal.SIGTERM})
    print(json.dumps([direction.as_dict() for direction in directions]), flush=True)
    os._exit(0)


# ----------------------------------------------------------------------------- the client

def transfer(port: int, payload: bytes, deadline: float) -> dict:
    """Send ``payload`` to 127.0.0.1:port and read the echo until EOF or ``deadline`` seconds."""
    sock = socket.create_connection(("127.0.0.1", port))
    sent = [0]

    def send() -> None:
        view = memoryview(payload)
        while sent[0] < len(payload):
            sent[0] += sock.send(view[sent[0]:sent[0] + CHUNK])
        sock.shutdown(socket.SHUT_WR)

    started = time.monotonic()
    threading.Thread(target=send, daemon=True).start()
    echoed, finished = bytearray(), False
    while not finished:
        left = deadline - (time.monotonic() - started)
        if left <= 0 or not select.select([sock], [], [], left)[0]:
            break
        data = sock.recv(CHUNK)
        echoed += data
        finished = not data
    return {"finished": finished, "seconds": round(time.monotonic() - started, 3),
            "payload": len(payload), "payload_sha256": hashlib.sha256(payload).hexdigest(),
            "sent": sent[0], "echoed": len(echoed), "echoed_sha256": hashlib.sha256(echoed).hexdigest()}


def stop_proxy(process: subprocess.Popen) -> list[dict] | str:
    """The proxy's directions, or why they are missing."""
    process.send_signal(signal.SIGTERM)
    try:
        out, _ = process.communicate(timeout=PROXY_STOP_SECONDS)
    except subprocess.TimeoutExpired:
        return f"the proxy did not answer SIGTERM within {PROXY_STOP_SECONDS}s"
    try:
        return json.loads(out)
    except ValueError:
        return f"the proxy exited {process.returncode} without its report: {out.strip()[-300:]!r}"


def read_report(path: str) -> dict | None:
    try:
        with open(path) as handle:
            return json.load(handle)
    except FileNotFoundError:
        return None  # the upstream never saw the end of the data


def client(upstream_port: int, size: int, deadline: float, upstream_report: str) -> dict:
    process = subprocess.Popen([sys.executable, "-S", __file__, "proxy", "--upstream-port", str(upstream_port)],
                               stdout=subprocess.PIPE, text=True)
    try:
        port = process.stdout.readline().strip()
        if not port.isdigit():
            return {"error": f"the proxy did not start (exit {process.wait()})"}
        result = transfer(int(port), os.urandom(size), deadline)
        result["proxy"] = stop_proxy(process)
        result["upstream"] = read_report(upstream_report)
        return result
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    roles = parser.add_subparsers(dest="role", required=True)
    echo_role = roles.add_parser("echo")
    echo_role.add_argument("--port", type=int, required=True)
    echo_role.add_argument("--report", required=True)
    client_role = roles.add_parser("client")
    client_role.add_argument("--upstream-port", type=int, required=True)
    client_role.add_argument("--bytes", type=int, required=True)
    client_role.add_argument("--deadline", type=float, required=True)
    client_role.add_argument("--upstream-report", required=True)
    proxy_role = roles.add_parser("proxy")
    proxy_role.add_argument("--upstream-port", type=int, required=True)
    args = parser.parse_args()
    if args.role == "echo":
        echo(args.port, args.report)
    elif args.role == "proxy":
        proxy(args.upstream_port)
    else:
        print(json.dumps(client(args.upstream_port, args.bytes, args.deadline, args.upstream_report)),
              flush=True)


if __name__ == "__main__":
    main()
