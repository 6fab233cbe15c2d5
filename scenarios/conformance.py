#!/usr/bin/env python3
"""conformance: socket behaviours an application relies on, probed on one fresh connection each.

Runs on the target (stdlib only, next to common.py), in a fresh network namespace. For every probe
this one process makes a connection whose two ends belong to the cgroups given: it moves itself into
``--app-cgroup`` and listens, moves into ``--peer-cgroup`` and connects, then accepts. A socket
belongs to the cgroup its creator was in (an accepted one to its listener's), so the accepted socket,
the *app* socket whose behaviour is observed, is in the app cgroup and its *peer* in the peer
cgroup. With the redirect installed on a cgroup, that decides which ends are in the sockhash:

    plain          both ends in a cgroup without the redirect (the reference)
    redirected     both ends in the redirect's cgroup
    peer_outside   the app socket in the map, its peer outside (plain TCP data reaching a
                   map-held socket, and its own sends falling back to TCP)

Each probe prints one JSON line: {"behaviour", "observed", "error", "seconds", "path"}. ``path`` is
the kernel's word on where the payload went: the TCP data segments each end sent
(``tcpi_data_segs_out``, 0 when the redirect carried that end's payload). With
``--guard-counters PIN`` (the guarded variant) the record also holds that map's dumps before and
after the probe: where its guard sent bytes over TCP, TCP data segments are its doing. ``observed`` holds
only what an application would see and can compare (values, errno names, readiness masks), never
timings beyond a coarse class, so the plain-TCP run of the same kernel is the expected value.
Nothing is retried: an EAGAIN, a hang (the probe's alarm), a short read is the observation.
``--break fionread`` reports a deliberately wrong FIONREAD value (to prove the comparison can fail).
"""

from __future__ import annotations

import argparse
import errno
import fcntl
import hashlib
import json
import os
import select
import signal
import socket
import struct
import sys
import tempfile
import threading
import time
import traceback

from common import SIOCINQ, SIOCOUTQ, bpftool_dumps, data_segs_out, join_cgroup, new_netns, setup_loopback

PROBE_SECONDS = 5           # a probe still blocked after this is reported as hung
SETTLE = 0.2                # time for loopback delivery / ACKs before an observation
BACKPRESSURE_CAP = 64 << 20  # a non-reading peer: stop queueing here if the kernel never says EAGAIN
FILL_CAP = 4 << 20           # the write-readiness probes: TCP pushes back far below this (4 KiB SO_SNDBUF)
PAYLOAD = bytes(range(256)) * 4  # 1000 + 24 bytes of known content
PROBES = {}


class Hung(Exception):
    pass


def probe(function):
    PROBES[function.__name__] = function
    return function


# ----------------------------------------------------------------------------- connections

class Pair:
    """One connection: ``app`` (accepted, in the app cgroup) and ``peer`` (in the peer cgroup)."""

    def __init__(self, app_cgroup: str | None, peer_cgroup: str | None):
        join_cgroup(app_cgroup)
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        join_cgroup(peer_cgroup)
        self.peer = socket.create_connection(listener.getsockname())
        self.app, _ = listener.accept()
        listener.close()

        self.segs: dict[str, int] | None = None

    def mark_path(self) -> None:
        """Take the path evidence now: the probe's payload has moved, and what follows (a send
        after the peer closed, a reset) is the observation, not the payload."""
        self.segs = {"app": _segs(self.app), "peer": _segs(self.peer)}

    def close_peer(self) -> None:
        if self.segs is None:
            self.mark_path()
        self.peer.close()

    def path(self) -> dict[str, int]:
        """The TCP data segments each end sent (tcpi_data_segs_out): 0 for an end whose payload
        the redirect carried, whatever program did it; taken at mark_path() or now."""
        if self.segs is None:
            self.mark_path()
        return self.segs

    def close(self) -> None:
        for sock in (self.app, self.peer):
            try:
                sock.close()
            except OSError:
                pass


def _segs(sock: socket.socket) -> int | None:
    """tcpi_data_segs_out, or None for a socket the probe closed without close_peer()."""
    try:
        return data_segs_out(sock)
    except OSError:
        return None


def errno_name(exc: OSError) -> str:
    return errno.errorcode.get(exc.errno, str(exc.errno))


def ioctl_int(sock: socket.socket, request: int) -> int:
    return struct.unpack("i", fcntl.ioctl(sock.fileno(), request, b"\0" * 4))[0]


def wait_readable(sock: socket.socket, seconds: float = 2.0) -> bool:
    return bool(select.select([sock], [], [], seconds)[0])


def later(seconds: float, action) -> threading.Thread:
    """Run ``action`` after ``seconds`` in a thread (the other end of a blocking call). Once the
    probe has ended (and closed the sockets) the action's errors concern nobody."""
    def run():
        time.sleep(seconds)
        try:
            action()
        except OSError:
            pass
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def read_all(sock: socket.socket, limit: int = 1 << 26) -> bytes:
    data = bytearray()
    while len(data) < limit:
        chunk = sock.recv(1 << 16)
        if not chunk:
            break
        data += chunk
    return bytes(data)


POLL_BITS = {"IN": select.POLLIN, "OUT": select.POLLOUT, "ERR": select.POLLERR, "HUP": select.POLLHUP,
             "RDHUP": getattr(select, "POLLRDHUP", 0x2000)}
EPOLL_BITS = {"IN": select.EPOLLIN, "OUT": select.EPOLLOUT, "ERR": select.EPOLLERR,
              "HUP": select.EPOLLHUP, "RDHUP": select.EPOLLRDHUP}


def bits(mask: int, table: dict[str, int]) -> list[str]:
    return sorted(name for name, bit in table.items() if mask & bit)


def epoll_events(ep, timeout: float) -> list[str]:
    events = ep.poll(timeout)
    return bits(events[0][1], EPOLL_BITS) if events else []


# ----------------------------------------------------------------------------- probes: reading

@probe
def fionread(pair: Pair, broken: set[str]) -> dict:
    """FIONREAD (SIOCINQ) with 1024 bytes queued, before any read."""
    pair.peer.sendall(PAYLOAD)
    wait_readable(pair.app)
    time.sleep(SETTLE)
    value = ioctl_int(pair.app, SIOCINQ)
    return {"fionread": value + 1 if "fionread" in broken else value}


@probe
def fionread_after_partial_read(pair: Pair, broken: set[str]) -> dict:
    """FIONREAD after reading 100 of 1024 queued bytes."""
    pair.peer.sendall(PAYLOAD)
    wait_readable(pair.app)
    time.sleep(SETTLE)
    pair.app.recv(100)
    return {"fionread": ioctl_int(pair.app, SIOCINQ)}


@probe
def siocoutq(pair: Pair, broken: set[str]) -> dict:
    """SIOCOUTQ of the sender after its 1024 bytes reached a peer that does not read."""
    pair.app.sendall(PAYLOAD)
    time.sleep(SETTLE)
    return {"siocoutq": ioctl_int(pair.app, SIOCOUTQ)}


@probe
def poll_readiness(pair: Pair, broken: set[str]) -> dict:
    """poll() before a write, after it, and after the peer's shutdown(SHUT_WR)."""
    events = select.POLLIN | select.POLLOUT | POLL_BITS["RDHUP"]
    poller = select.poll()
    poller.register(pair.app, events)

    def mask(timeout_ms: int) -> list[str]:
        found = poller.poll(timeout_ms)
        return bits(found[0][1], POLL_BITS) if found else []
    before = mask(0)
    pair.peer.sendall(PAYLOAD)
    after_write = mask(2000)
    pair.app.recv(len(PAYLOAD), socket.MSG_WAITALL)
    drained = mask(0)
    pair.peer.shutdown(socket.SHUT_WR)
    time.sleep(SETTLE)
    return {"before": before, "after_write": after_write, "drained": drained, "after_shutdown": mask(2000)}


@probe
def select_readiness(pair: Pair, broken: set[str]) -> dict:
    """select() for reading before and after a write."""
    before = bool(select.select([pair.app], [], [], 0)[0])
    pair.peer.sendall(PAYLOAD)
    return {"before": before, "after_write": wait_readable(pair.app)}


@probe
def epoll_level(pair: Pair, broken: set[str]) -> dict:
    """Level-triggered EPOLLIN: reported while data is left, gone once it is all read."""
    with select.epoll() as ep:
        ep.register(pair.app.fileno(), select.EPOLLIN)
        pair.peer.sendall(PAYLOAD)
        first = epoll_events(ep, 2)
        time.sleep(SETTLE)
        pair.app.recv(100)
        still = epoll_events(ep, 0)
        pair.app.recv(len(PAYLOAD) - 100, socket.MSG_WAITALL)
        return {"after_write": first, "after_partial_read": still, "after_full_read": epoll_events(ep, 0)}


@probe
def epoll_edge(pair: Pair, broken: set[str]) -> dict:
    """Edge-triggered EPOLLIN: one event per arrival, none while nothing new arrives."""
    with select.epoll() as ep:
        ep.register(pair.app.fileno(), select.EPOLLIN | select.EPOLLET)
        pair.peer.sendall(PAYLOAD)
        first = epoll_events(ep, 2)
        repeated = epoll_events(ep, 0.2)
        pair.peer.sendall(PAYLOAD)
        return {"first_write": first, "no_new_data": repeated, "second_write": epoll_events(ep, 2)}


@probe
def epoll_rdhup(pair: Pair, broken: set[str]) -> dict:
    """EPOLLRDHUP (and EPOLLIN) after the peer's shutdown(SHUT_WR) with nothing queued."""
    with select.epoll() as ep:
        ep.register(pair.app.fileno(), select.EPOLLIN | select.EPOLLRDHUP)
        pair.peer.shutdown(socket.SHUT_WR)
        return {"after_peer_shutdown": epoll_events(ep, 2)}


@probe
def epoll_hup(pair: Pair, broken: set[str]) -> dict:
    """EPOLLHUP once both directions are shut down (peer SHUT_WR, then our SHUT_WR)."""
    with select.epoll() as ep:
        ep.register(pair.app.fileno(), select.EPOLLIN | select.EPOLLRDHUP)
        pair.peer.shutdown(socket.SHUT_WR)
        time.sleep(SETTLE)
        pair.app.shutdown(socket.SHUT_WR)
        time.sleep(SETTLE)
        return {"after_both_shutdown": epoll_events(ep, 2)}


@probe
def msg_peek(pair: Pair, broken: set[str]) -> dict:
    """MSG_PEEK leaves the data in place: the following read returns the same bytes."""
    pair.peer.sendall(PAYLOAD)
    wait_readable(pair.app)
    time.sleep(SETTLE)
    peeked = pair.app.recv(4096, socket.MSG_PEEK)
    again = pair.app.recv(4096, socket.MSG_PEEK)
    read = pair.app.recv(4096)
    return {"peeked": len(peeked), "peek_twice_same": peeked == again, "read": len(read),
            "read_equals_peek": read == peeked, "intact": read == PAYLOAD}


@probe
def msg_waitall(pair: Pair, broken: set[str]) -> dict:
    """recv(4096, MSG_WAITALL) while the peer sends four 1024-byte writes 50 ms apart."""
    def send_slowly():
        for _ in range(4):
            pair.peer.sendall(PAYLOAD)
            time.sleep(0.05)
    later(0.05, send_slowly)
    data = pair.app.recv(4 * len(PAYLOAD), socket.MSG_WAITALL)
    return {"returned": len(data), "intact": data == PAYLOAD * 4}


@probe
def so_rcvlowat(pair: Pair, broken: set[str]) -> dict:
    """SO_RCVLOWAT 1500: not readable with 1024 bytes queued, readable with 2048."""
    pair.app.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, 1500)
    pair.peer.sendall(PAYLOAD)
    time.sleep(SETTLE)
    below = wait_readable(pair.app, 0.3)
    pair.peer.sendall(PAYLOAD)
    above = wait_readable(pair.app, 2)
    return {"readable_below_lowat": below, "readable_above_lowat": above}


@probe
def dontwait_empty(pair: Pair, broken: set[str]) -> dict:
    """recv(MSG_DONTWAIT) on an empty socket."""
    try:
        data = pair.app.recv(100, socket.MSG_DONTWAIT)
        return {"result": f"{len(data)} bytes"}
    except OSError as exc:
        return {"result": errno_name(exc)}


@probe
def blocking_recv(pair: Pair, broken: set[str]) -> dict:
    """20 blocking recv() calls, each waiting for a write the peer makes 20 ms later: every one
    returns the data; an EAGAIN on a blocking socket is the observation, not something to retry."""
    outcomes = {}
    for _ in range(20):
        later(0.02, lambda: pair.peer.sendall(b"x" * 100))
        try:
            outcome = f"{len(pair.app.recv(100))} bytes"
        except OSError as exc:
            outcome = errno_name(exc)
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        # Whatever arrived late (a short read) is drained so the next round starts empty.
        time.sleep(0.03)
        while select.select([pair.app], [], [], 0)[0]:
            pair.app.recv(4096)
    return {"outcomes": outcomes}


@probe
def blocking_recv_stream(pair: Pair, broken: set[str]) -> dict:
    """Blocking recv(1 MiB) calls while the peer streams 32 MiB in 64 KiB writes and we stream as
    much back (both directions at once, as a proxy or an RPC pipeline does): each call returns
    data until all has arrived; the first error (EAGAIN on a blocking socket) ends the read."""
    total, chunk = 32 << 20, b"\0" * (64 << 10)

    def stream(sock):
        for _ in range(total // len(chunk)):
            sock.sendall(chunk)
    later(0, lambda: stream(pair.peer))
    later(0, lambda: stream(pair.app))
    ReadAll(pair.peer)
    received = 0
    try:
        while received < total:
            data = pair.app.recv(1 << 20)
            if not data:
                return {"result": "EOF before all data"}
            received += len(data)
    except OSError as exc:
        return {"result": errno_name(exc)}
    return {"result": "all data"}


@probe
def so_rcvtimeo(pair: Pair, broken: set[str]) -> dict:
    """SO_RCVTIMEO 300 ms on an empty socket: EAGAIN after about the timeout."""
    pair.app.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 0, 300_000))
    started = time.monotonic()
    try:
        pair.app.recv(100)
        result = "data"
    except OSError as exc:
        result = errno_name(exc)
    waited = time.monotonic() - started
    return {"result": result, "waited": "early" if waited < 0.25 else "on time" if waited < 3 else "late"}


@probe
def shutdown_eof(pair: Pair, broken: set[str]) -> dict:
    """The peer writes 1024 bytes and shuts down: all of them, then EOF (b"")."""
    pair.peer.sendall(PAYLOAD)
    pair.peer.shutdown(socket.SHUT_WR)
    data = read_all(pair.app)
    try:
        after = f"{len(pair.app.recv(100))} bytes"
    except OSError as exc:
        after = errno_name(exc)
    return {"read": len(data), "intact": data == PAYLOAD, "read_after_eof": after}


@probe
def close_with_unread_data(pair: Pair, broken: set[str]) -> dict:
    """We send 1024 bytes, the peer closes without reading them: TCP answers with a reset."""
    pair.app.sendall(PAYLOAD)
    time.sleep(SETTLE)
    pair.close_peer()
    time.sleep(SETTLE)
    return {"recv": _recv_outcome(pair.app), "send": _send_outcome(pair.app)}


@probe
def linger_zero(pair: Pair, broken: set[str]) -> dict:
    """The peer closes with SO_LINGER {on, 0}: a reset, seen by our next recv."""
    pair.peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    pair.close_peer()
    time.sleep(SETTLE)
    return {"recv": _recv_outcome(pair.app)}


def _recv_outcome(sock: socket.socket) -> str:
    try:
        data = sock.recv(100, socket.MSG_DONTWAIT)
        return "EOF" if not data else f"{len(data)} bytes"
    except OSError as exc:
        return errno_name(exc)


def _send_outcome(sock: socket.socket) -> str:
    try:
        sock.send(b"x", socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL)
        return "sent"
    except OSError as exc:
        return errno_name(exc)


@probe
def splice_from_socket(pair: Pair, broken: set[str]) -> dict:
    """splice(2) from the socket into a pipe (Go's io.Copy does this since Go 1.22)."""
    pair.peer.sendall(PAYLOAD)
    wait_readable(pair.app)
    read_end, write_end = os.pipe()
    try:
        moved = os.splice(pair.app.fileno(), write_end, len(PAYLOAD))
        data = os.read(read_end, 65536) if moved else b""
    finally:
        os.close(read_end)
        os.close(write_end)
    return {"spliced": moved, "intact": data == PAYLOAD[:moved]}


@probe
def splice_into_socket(pair: Pair, broken: set[str]) -> dict:
    """splice(2) from a pipe into the socket: the peer receives the bytes."""
    read_end, write_end = os.pipe()
    try:
        os.write(write_end, PAYLOAD)
        moved = os.splice(read_end, pair.app.fileno(), len(PAYLOAD))
    finally:
        os.close(read_end)
        os.close(write_end)
    pair.app.shutdown(socket.SHUT_WR)
    data = read_all(pair.peer)
    return {"spliced": moved, "received": len(data), "intact": data == PAYLOAD}


@probe
def sendfile_into_socket(pair: Pair, broken: set[str]) -> dict:
    """sendfile(2) of a 1 MiB file into the socket: the peer receives it intact."""
    content = os.urandom(1 << 20)
    with tempfile.TemporaryFile() as handle:
        handle.write(content)
        handle.flush()
        reader = ReadAll(pair.peer)
        sent = 0
        while sent < len(content):
            sent += os.sendfile(pair.app.fileno(), handle.fileno(), sent, len(content) - sent)
    pair.app.shutdown(socket.SHUT_WR)
    data = reader.result()
    return {"sent": sent, "received": len(data), "intact": data == content}


class ReadAll:
    """Read a socket to EOF in a thread (the peer of a writer that could block)."""

    def __init__(self, sock: socket.socket):
        self.data = b""
        self.thread = threading.Thread(target=self._run, args=(sock,), daemon=True)
        self.thread.start()

    def _run(self, sock):
        self.data = read_all(sock)

    def result(self) -> bytes:
        self.thread.join(PROBE_SECONDS)
        return self.data


@probe
def readv_writev(pair: Pair, broken: set[str]) -> dict:
    """writev of three buffers, twice; readv into two buffers across the write boundaries."""
    parts = [PAYLOAD[:100], PAYLOAD[100:400], PAYLOAD[400:]]
    os.writev(pair.peer.fileno(), parts)
    os.writev(pair.peer.fileno(), parts)
    wait_readable(pair.app)
    time.sleep(SETTLE)
    first, second = bytearray(700), bytearray(2 * len(PAYLOAD) - 700)
    got = os.readv(pair.app.fileno(), [first, second])
    return {"readv": got, "intact": bytes(first + second)[:got] == (PAYLOAD * 2)[:got]}


@probe
def small_buffer_reads(pair: Pair, broken: set[str]) -> dict:
    """A 1024-byte write read back with 100-byte recv() calls."""
    pair.peer.sendall(PAYLOAD)
    pair.peer.shutdown(socket.SHUT_WR)
    wait_readable(pair.app)
    time.sleep(SETTLE)
    sizes, data = [], b""
    while True:
        chunk = pair.app.recv(100)
        if not chunk:
            break
        sizes.append(len(chunk))
        data += chunk
    return {"sizes": sizes, "intact": data == PAYLOAD}


@probe
def write_larger_than_sndbuf(pair: Pair, broken: set[str]) -> dict:
    """One blocking sendall() of 1 MiB with SO_SNDBUF at its minimum, the peer reading: all of it
    arrives, intact."""
    pair.app.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    content = os.urandom(1 << 20)
    reader = ReadAll(pair.peer)
    pair.app.sendall(content)
    pair.app.shutdown(socket.SHUT_WR)
    data = reader.result()
    return {"received": len(data), "intact": hashlib.sha256(data).digest() == hashlib.sha256(content).digest()}


@probe
def nonreading_peer(pair: Pair, broken: set[str]) -> dict:
    """Non-blocking 64 KiB writes to a peer that reads nothing: TCP pushes back with EAGAIN once
    the window and the send buffer are full; how far a sender gets without EAGAIN is bounded here."""
    stopped_by, queued = fill(pair.app, BACKPRESSURE_CAP)
    # Stopping before 16 MiB is what TCP's buffers allow here; the exact figure varies with memory.
    return {"stopped_by": stopped_by, "queued_under_16mib": queued < (16 << 20)}


def fill(sock: socket.socket, cap: int) -> tuple[str, int]:
    """Non-blocking 64 KiB writes until the kernel pushes back: (what stopped them, bytes queued).
    "cap" when it never did within ``cap`` bytes (the redirect has no backpressure)."""
    sock.setblocking(False)
    chunk = b"\0" * (64 << 10)
    queued = 0
    while queued < cap:
        try:
            queued += sock.send(chunk)
        except BlockingIOError:
            return "EAGAIN", queued
        except OSError as exc:
            return errno_name(exc), queued
    return "cap", queued


# ----------------------------------------------------------------------------- probes: writing

def filled_sender(pair: Pair) -> str:
    """The app's send buffer made small and filled against a peer that is not reading yet."""
    pair.app.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    stopped_by, _ = fill(pair.app, FILL_CAP)
    pair.mark_path()
    return stopped_by


def drain(sock: socket.socket) -> int:
    """Read everything the peer has and will get, until nothing more arrives for a moment."""
    total = 0
    while wait_readable(sock, SETTLE * 2):
        chunk = sock.recv(1 << 20)
        if not chunk:
            break
        total += len(chunk)
    return total


@probe
def epollout_level_after_drain(pair: Pair, broken: set[str]) -> dict:
    """Level-triggered EPOLLOUT on a sender whose buffer is full: absent, then reported once the
    peer has read everything (the write-space wake-up a server waits for before its next write)."""
    filled_by = filled_sender(pair)
    with select.epoll() as ep:
        ep.register(pair.app.fileno(), select.EPOLLOUT)
        before = epoll_events(ep, 0)
        drain(pair.peer)
        return {"filled_by": filled_by, "before_drain": before, "after_drain": epoll_events(ep, 2)}


@probe
def epollout_edge_after_drain(pair: Pair, broken: set[str]) -> dict:
    """Edge-triggered EPOLLOUT on a full sender: no event, one event when the drain frees space,
    then none until the buffer fills again (a lost edge stalls an event loop for good)."""
    filled_by = filled_sender(pair)
    with select.epoll() as ep:
        ep.register(pair.app.fileno(), select.EPOLLOUT | select.EPOLLET)
        before = epoll_events(ep, 0)
        drain(pair.peer)
        after = epoll_events(ep, 2)
        return {"filled_by": filled_by, "before_drain": before, "after_drain": after,
                "no_new_space": epoll_events(ep, 0.2)}


@probe
def blocking_writer_woken(pair: Pair, broken: set[str]) -> dict:
    """A blocking sendall() of 1 MiB with a minimal send buffer blocks while the peer does not read,
    and completes, intact, once the peer reads (the drain wakes the writer)."""
    pair.app.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    content = os.urandom(1 << 20)
    writer = threading.Thread(target=pair.app.sendall, args=(content,), daemon=True)
    writer.start()
    writer.join(SETTLE * 2)
    blocked = writer.is_alive()
    pair.peer.settimeout(PROBE_SECONDS - 1)
    data = bytearray()
    while len(data) < len(content):
        chunk = pair.peer.recv(1 << 20)
        if not chunk:
            break
        data += chunk
    writer.join(1)
    return {"blocked_until_read": blocked, "completed": not writer.is_alive(), "intact": bytes(data) == content}


@probe
def siocoutq_drains(pair: Pair, broken: set[str]) -> dict:
    """SIOCOUTQ of a full sender: bytes are waiting in its queue, and none once the peer has read
    everything (how a sender learns its data left)."""
    filled_by = filled_sender(pair)
    waiting = ioctl_int(pair.app, SIOCOUTQ)
    drain(pair.peer)
    time.sleep(SETTLE)
    return {"filled_by": filled_by, "waiting_when_full": waiting > 0, "after_drain": ioctl_int(pair.app, SIOCOUTQ)}


# ----------------------------------------------------------------------------- driver

def on_alarm(signum, frame):
    raise Hung()


def run_probe(name: str, args) -> dict:
    started = time.monotonic()
    record = {"behaviour": name, "observed": None, "error": None}
    pair = None
    guard_before = bpftool_dumps({"guard": args.guard_counters}) if args.guard_counters else None
    signal.alarm(PROBE_SECONDS)
    try:
        pair = Pair(args.app_cgroup, args.peer_cgroup)
        record["observed"] = PROBES[name](pair, set(args.broken))
    except Hung:
        record["observed"] = {"hung": f"no result within {PROBE_SECONDS} s"}
    except Exception as exc:  # noqa: BLE001 - one probe's failure is its result; the others go on
        record["error"] = f"{type(exc).__name__}: {exc}"
        record["traceback"] = traceback.format_exc(limit=4)
    finally:
        signal.alarm(0)
        if pair is not None:
            record["path"] = pair.path()
            pair.close()
    if guard_before is not None:
        record["guard_counters"] = {"before": guard_before["guard"],
                                    "after": bpftool_dumps({"guard": args.guard_counters})["guard"]}
    record["seconds"] = round(time.monotonic() - started, 3)
    return record


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--app-cgroup", help="cgroup of the observed (accepted) socket")
    parser.add_argument("--peer-cgroup", help="cgroup of its peer")
    parser.add_argument("--behaviour", action="append", choices=sorted(PROBES),
                        help="probe only these (default: all)")
    parser.add_argument("--break", dest="broken", action="append", default=[], choices=["fionread"],
                        help="report a deliberately wrong value for this behaviour")
    parser.add_argument("--guard-counters", metavar="PIN",
                        help="the guarded variant's pinned guard counters: dumped around each probe, "
                             "so the lab can tell the bytes its guard sent over TCP")
    parser.add_argument("--list", action="store_true", help="print the behaviours and exit")
    args = parser.parse_args()
    if args.list:
        print(json.dumps({name: PROBES[name].__doc__.split("\n")[0] for name in PROBES}))
        return 0
    new_netns()
    setup_loopback("lo")
    signal.signal(signal.SIGALRM, on_alarm)
    for name in args.behaviour or PROBES:
        print(json.dumps(run_probe(name, args)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
