#!/usr/bin/env python3
"""One TCP connection between two processes, data both ways, JSON on stdout.

Runs on the target (host or guest), stdlib only. Meant to run in a fresh network namespace
(``unshare -n python3 pair.py --lo-up ...``). The parent forks a server and a client; each child
first moves itself into its cgroup (``--server-cgroup``/``--client-cgroup``), so the sockets it
creates belong to that cgroup, then:

  server: listen, accept          client: connect
  both:   send --bytes random bytes in --chunk writes while receiving the peer's --bytes
  both:   report byte counts and SHA-256 of what was sent and received and the TCP data segments
          its socket sent (0 when the redirect carried its payload), keep the socket open

The parent reads the namespace's TCP and loopback counters (/proc/net/snmp, /proc/net/dev) just
before and just after the data phase, so their difference is what the transfer cost the stack.
With ``--hold-dir DIR`` it then writes DIR/state.json (the result so far) and waits for
DIR/release before the sockets are closed: the caller can inspect the map while the connection
is up. Everything ends after ``--timeout`` seconds whatever happens.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import signal
import socket
import struct
import sys
import threading
import time

from common import data_segs_out

FAMILIES = {
    # name: (server family, server bind address, client family, client connect address)
    "ipv4": (socket.AF_INET, "127.0.0.1", socket.AF_INET, "127.0.0.1"),
    "ipv6": (socket.AF_INET6, "::1", socket.AF_INET6, "::1"),
    # dual-stack server: an IPv4 client's connection is accepted as AF_INET6 ::ffff:127.0.0.1
    "v4mapped": (socket.AF_INET6, "::", socket.AF_INET, "127.0.0.1"),
    # AF_INET6 client talking to an IPv4 server through a v4-mapped address
    "v4mapped-client": (socket.AF_INET, "127.0.0.1", socket.AF_INET6, "::ffff:127.0.0.1"),
}

SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1


def loopback_up() -> None:
    """``ip link set lo up`` without iproute2: a fresh network namespace starts with lo down."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sH22x", b"lo", 0)
        flags = struct.unpack("16sH22x", fcntl.ioctl(sock, SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(sock, SIOCSIFFLAGS, struct.pack("16sH22x", b"lo", flags | IFF_UP))


def join_cgroup(path: str | None) -> None:
    if path:
        with open(os.path.join(path, "cgroup.procs"), "w") as procs:
            procs.write(str(os.getpid()))


def stack_counters() -> dict[str, int]:
    counters = {}
    with open("/proc/net/snmp") as snmp:
        tcp = [line.split() for line in snmp if line.startswith("Tcp:")]
    fields = dict(zip(tcp[0][1:], (int(v) for v in tcp[1][1:])))
    counters["tcp_out_segs"] = fields["OutSegs"]
    counters["tcp_in_segs"] = fields["InSegs"]
    with open("/proc/net/dev") as dev:
        for line in dev:
            name, _, data = line.partition(":")
            if name.strip() == "lo":
                values = [int(v) for v in data.split()]
                counters["lo_rx_packets"], counters["lo_tx_packets"] = values[1], values[9]
    return counters


def address(sockaddr) -> list:
    return [sockaddr[0], sockaddr[1]]


class Channel:
    """JSON lines over one end of a socketpair between the parent and a child."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.reader = sock.makefile("r")

    def send(self, **message) -> None:
        self.sock.sendall((json.dumps(message) + "\n").encode())

    def receive(self) -> dict:
        line = self.reader.readline()
        if not line:
            raise ConnectionError("peer process went away")
        return json.loads(line)


def transfer(sock: socket.socket, size: int, chunk: int) -> dict:
    """Send ``size`` random bytes in ``chunk`` writes while receiving ``size`` bytes.

    Errors are kept in the order they happened: the first is the cause (a recv() that failed and
    shut the socket down makes this side's own send fail with EPIPE next), the rest follow from it.
    """
    payload = os.urandom(size)
    sent = {"bytes": 0}
    errors: list[str] = []  # appended by both threads; list.append is atomic

    def stop_both_directions() -> None:
        # The other thread and the peer end now (EOF, EPIPE) instead of at the timeout.
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def sender() -> None:
        view = memoryview(payload)
        try:
            for start in range(0, size, chunk):
                sock.sendall(view[start:start + chunk])
                sent["bytes"] = start + len(view[start:start + chunk])
        except OSError as exc:
            errors.append(f"send: {exc}")
            stop_both_directions()

    thread = threading.Thread(target=sender)
    thread.start()
    received, digest = 0, hashlib.sha256()
    try:
        while received < size:
            # Not retried: an EAGAIN from this blocking recv() is an error an application sees.
            data = sock.recv(min(1 << 20, size - received))
            if not data:
                errors.append(f"recv: peer closed after {received} bytes")
                break
            digest.update(data)
            received += len(data)
    except OSError as exc:
        errors.append(f"recv: {exc}")
        stop_both_directions()
    thread.join()
    error = None
    if errors:
        error = errors[0] + "".join(f" (then {later})" for later in errors[1:])
    return {"sent": sent["bytes"], "sent_sha256": hashlib.sha256(payload).hexdigest(),
            "received": received, "received_sha256": digest.hexdigest(), "error": error,
            "data_segs_out": data_segs_out(sock)}


SO_COOKIE = 57  # <asm-generic/socket.h>


def describe(sock: socket.socket, cgroup: str | None) -> dict:
    """Addresses as the map keys show them, and the cookie a sockhash value holds."""
    return {"pid": os.getpid(), "cgroup": cgroup,
            "family": "AF_INET6" if sock.family == socket.AF_INET6 else "AF_INET",
            "sockname": address(sock.getsockname()), "peername": address(sock.getpeername()),
            "cookie": struct.unpack("Q", sock.getsockopt(socket.SOL_SOCKET, SO_COOKIE, 8))[0]}


def run_server(channel: Channel, args) -> None:
    family, bind_address = FAMILIES[args.family][:2]
    join_cgroup(args.server_cgroup)
    listener = socket.socket(family, socket.SOCK_STREAM)
    if family == socket.AF_INET6:
        listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if bind_address == "::" else 1)
    listener.bind((bind_address, args.port))
    listener.listen(1)
    channel.send(port=listener.getsockname()[1])
    conn, _ = listener.accept()
    listener.close()
    serve_connection(channel, conn, args, args.server_cgroup)


def run_client(channel: Channel, args) -> None:
    family, connect_address = FAMILIES[args.family][2:]
    join_cgroup(args.client_cgroup)
    port = channel.receive()["port"]
    conn = socket.socket(family, socket.SOCK_STREAM)
    conn.connect((connect_address, port))
    serve_connection(channel, conn, args, args.client_cgroup)


def serve_connection(channel: Channel, conn: socket.socket, args, cgroup: str | None) -> None:
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    channel.send(**describe(conn, cgroup))
    channel.receive()  # go
    channel.send(**transfer(conn, args.bytes, args.chunk))
    channel.receive()  # close
    conn.close()
    channel.send(closed=True)


def child(role: str, channel: Channel, args) -> None:
    def timed_out(signum, frame):
        raise TimeoutError(f"no end within {args.timeout}s (a stalled transfer?)")

    # Reported to the parent like any other error, instead of SIGALRM's silent death.
    signal.signal(signal.SIGALRM, timed_out)
    signal.alarm(args.timeout)
    code = 0
    try:
        (run_server if role == "server" else run_client)(channel, args)
    except BaseException as exc:  # reported to the parent, which prints it in the JSON
        code = 1
        try:
            channel.send(error=f"{role}: {type(exc).__name__}: {exc}")
        except OSError:
            pass
    os._exit(code)


def spawn(role: str, args) -> tuple[int, Channel]:
    parent_end, child_end = socket.socketpair()
    pid = os.fork()
    if pid == 0:
        parent_end.close()
        child(role, Channel(child_end), args)
    child_end.close()
    return pid, Channel(parent_end)


def expect(channel: Channel, role: str) -> dict:
    message = channel.receive()
    if "error" in message and len(message) == 1:
        raise RuntimeError(message["error"])
    return message


def hold(hold_dir: str, state: dict, timeout: float) -> None:
    tmp = os.path.join(hold_dir, ".state.json.tmp")
    with open(tmp, "w") as out:
        json.dump(state, out)
    os.replace(tmp, os.path.join(hold_dir, "state.json"))
    deadline = time.monotonic() + timeout
    while not os.path.exists(os.path.join(hold_dir, "release")):
        if time.monotonic() > deadline:
            raise TimeoutError("nobody released the hold")
        time.sleep(0.02)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", choices=sorted(FAMILIES), default="ipv4")
    parser.add_argument("--bytes", type=int, default=4 << 20, help="bytes each side sends")
    parser.add_argument("--chunk", type=int, default=64 << 10, help="bytes per send call")
    parser.add_argument("--port", type=int, default=0, help="server port (default: any free one)")
    parser.add_argument("--server-cgroup")
    parser.add_argument("--client-cgroup")
    parser.add_argument("--lo-up", action="store_true", help="bring loopback up (fresh netns)")
    parser.add_argument("--hold-dir", help="write state.json here, wait for the file 'release'")
    parser.add_argument("--timeout", type=int, default=120)
    args = parser.parse_args()

    signal.alarm(args.timeout + 5)
    if args.lo_up:
        loopback_up()
    result: dict = {"family": args.family, "bytes": args.bytes, "chunk": args.chunk, "error": None}
    children = {}
    try:
        children["server"] = spawn("server", args)
        port = expect(children["server"][1], "server")["port"]
        children["client"] = spawn("client", args)
        children["client"][1].send(port=port)
        for role, (_, channel) in children.items():
            result[role] = expect(channel, role)
        before = stack_counters()
        for _, channel in children.values():
            channel.send(go=True)
        for role, (_, channel) in children.items():
            # Both sides' outcomes, even when one failed: the first error is often the other's cause.
            try:
                result[role].update(expect(channel, role))
            except (RuntimeError, OSError) as exc:
                result[role]["error"] = str(exc)
        after = stack_counters()
        result["counters_delta"] = {name: after[name] - before[name] for name in before}
        errors = [error if error.startswith(f"{role}:") else f"{role}: {error}"
                  for role in children if (error := result[role].get("error"))]
        if errors:
            result["error"], result["intact"] = "; ".join(errors), False
        else:
            result["intact"] = (result["client"]["sent_sha256"] == result["server"]["received_sha256"]
                                and result["server"]["sent_sha256"] == result["client"]["received_sha256"]
                                and result["client"]["received"] == result["server"]["received"] == args.bytes)
        if args.hold_dir:
            hold(args.hold_dir, result, args.timeout)
        for role, (_, channel) in children.items():
            try:
                channel.send(close=True)
                expect(channel, role)
            except (OSError, RuntimeError, EOFError):
                pass  # a side that already failed has exited; its error is in the result
    except Exception as exc:
        result["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        for pid, channel in children.values():
            channel.sock.close()  # a child still waiting for the parent sees EOF and exits
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
    print(json.dumps(result))
    return 0 if result["error"] is None else 1


if __name__ == "__main__":
    sys.exit(main())
