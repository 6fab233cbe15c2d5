"""What every scenario program shares: rounds, network namespaces, worker processes, phases, snapshots.

Stdlib only; copied to the target next to the scenario programs. A scenario program defines a
``body(ctx)`` and calls ``main(name, body, add_arguments)``. For each round named in ``--rounds``
(``baseline``: no cgroup, so no redirect; ``redirect``: the processes join ``--cgroup``), main()

  1. moves itself into a fresh network namespace (so counters are the round's alone and no port or
     TIME_WAIT socket is left over from the previous round), renames its loopback device to
     ``<tag><round>`` (a name tracepoint filters can select) and brings it up;
  2. calls ``body(ctx)``, which spawns workers (``ctx.spawn``), measures its data phase
     (``with ctx.phase():``) and takes map snapshots (``ctx.snapshot(label)``, redirect rounds only);
  3. stores what body returned, the phase and the snapshots under ``rounds[<round>]``.

One JSON object is printed at the end, whatever happened (``error`` says what went wrong).

Workers are generator functions run in forked children (``ctx.spawn(fn, *args, cgroup=...)``):
every ``yield {...}`` reports a dict to the parent and waits until the parent lets it go on, so the
parent can hold all sockets open while it dumps the map. Tracing is optional: when the environment
names a control file (``SOCKREDIR_TRACE_CONTROL``, written by scenarios/tracefs.sh), the phase also
counts the events of the tracefs instances listed there.
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import fcntl
import hashlib
import json
import os
import resource
import select
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback

CLONE_NEWNET = 0x40000000
SIOCGIFFLAGS, SIOCSIFFLAGS, SIOCSIFNAME, IFF_UP = 0x8913, 0x8914, 0x8923, 0x1
SIOCINQ, SIOCOUTQ = 0x541B, 0x5411
# After one worker's data step fails, how long the others may take to report before they are
# stopped (a transfer here takes seconds even in a TCG guest; see gather()).
PEER_GRACE_SECONDS = 10.0

FAMILIES = {
    # name: (server family, server bind address, client family, client connect address)
    "ipv4": (socket.AF_INET, "127.0.0.1", socket.AF_INET, "127.0.0.1"),
    "ipv6": (socket.AF_INET6, "::1", socket.AF_INET6, "::1"),
    # dual-stack server: an IPv4 client's connection is accepted as AF_INET6 ::ffff:127.0.0.1
    "v4mapped": (socket.AF_INET6, "::", socket.AF_INET, "127.0.0.1"),
    # AF_INET6 client talking to an IPv4 server through a v4-mapped address
    "v4mapped-client": (socket.AF_INET, "127.0.0.1", socket.AF_INET6, "::ffff:127.0.0.1"),
}


class ScenarioError(Exception):
    pass


# ----------------------------------------------------------------------------- namespaces, devices

def new_netns() -> None:
    """Move this process into a fresh network namespace (os.unshare is 3.12+; guests have 3.11)."""
    if hasattr(os, "unshare"):
        os.unshare(CLONE_NEWNET)
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNET) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"unshare(CLONE_NEWNET): {os.strerror(code)}")


def setup_loopback(name: str) -> str:
    """Rename the (down) loopback of a fresh namespace to ``name`` and bring it up."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        if name != "lo":
            fcntl.ioctl(sock, SIOCSIFNAME, struct.pack("16s16s8x", b"lo", name.encode()))
        request = struct.pack("16sH22x", name.encode(), 0)
        flags = struct.unpack("16sH22x", fcntl.ioctl(sock, SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(sock, SIOCSIFFLAGS, struct.pack("16sH22x", name.encode(), flags | IFF_UP))
    return name


def join_cgroup(path: str | None) -> None:
    if path:
        with open(os.path.join(path, "cgroup.procs"), "w") as procs:
            procs.write(str(os.getpid()))


def raise_fd_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


# ----------------------------------------------------------------------------- counters

def stack_counters(device: str, pid: int | str = "self") -> dict[str, int]:
    """TCP segments and the loopback's packets of the network namespace of process ``pid``."""
    with open(f"/proc/{pid}/net/snmp") as snmp:
        rows = [line.split() for line in snmp]
    tcp = [row for row in rows if row[0] == "Tcp:"]
    udp = [row for row in rows if row[0] == "Udp:"]
    counters = {}
    fields = dict(zip(tcp[0][1:], (int(v) for v in tcp[1][1:])))
    counters["tcp_out_segs"], counters["tcp_in_segs"] = fields["OutSegs"], fields["InSegs"]
    counters["tcp_retrans_segs"] = fields["RetransSegs"]
    fields = dict(zip(udp[0][1:], (int(v) for v in udp[1][1:])))
    counters["udp_out_datagrams"] = fields["OutDatagrams"]
    with open(f"/proc/{pid}/net/dev") as dev:
        for line in dev:
            name, _, data = line.partition(":")
            if name.strip() == device:
                values = [int(v) for v in data.split()]
                counters["lo_rx_packets"], counters["lo_tx_packets"] = values[1], values[9]
                counters["lo_tx_bytes"] = values[8]
    if "lo_tx_packets" not in counters:
        raise ScenarioError(f"device {device} not found in /proc/{pid}/net/dev")
    return counters


def sum_counters(sources: list[tuple[str, int | str]]) -> dict[str, int]:
    total: dict[str, int] = {}
    for device, pid in sources:
        for name, value in stack_counters(device, pid).items():
            total[name] = total.get(name, 0) + value
    return total


def memory_figures() -> dict[str, int]:
    """MemAvailable (KiB) and the TCP memory in use (pages), for the slow-reader measurement."""
    figures = {}
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemAvailable:"):
                figures["mem_available_kib"] = int(line.split()[1])
    with open("/proc/net/sockstat") as sockstat:
        for line in sockstat:
            if line.startswith("TCP:"):
                parts = line.split()
                figures["tcp_mem_pages"] = int(parts[parts.index("mem") + 1])
    return figures


class Trace:
    """The tracefs instances set up by tracefs.sh: one instance per event, so per-CPU stats count it.

    Control file lines: ``EVENT INSTANCE_DIR MODE``; MODE ``pid`` means the instance only records
    this process tree (set_event_pid + event-fork), ``all`` means a field filter selects the events.
    """

    def __init__(self, path: str | None):
        self.instances: list[tuple[str, str, str]] = []
        if path:
            with open(path) as control:
                self.instances = [tuple(line.split()) for line in control if line.strip()]

    def claim_pid(self) -> None:
        for _, directory, mode in self.instances:
            if mode == "pid":
                with open(os.path.join(directory, "set_event_pid"), "w") as pids:
                    pids.write(str(os.getpid()))

    def counts(self) -> dict[str, int]:
        """Events recorded so far per event (entries + overwritten + dropped, over all CPUs)."""
        totals = {}
        for event, directory, _ in self.instances:
            total = 0
            per_cpu = os.path.join(directory, "per_cpu")
            for cpu in os.listdir(per_cpu):
                with open(os.path.join(per_cpu, cpu, "stats")) as stats:
                    for line in stats:
                        key, _, value = line.partition(":")
                        if key.strip() in ("entries", "overrun", "dropped events"):
                            total += int(value.split()[0])
            totals[event] = total
        return totals


def delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {name: after[name] - before.get(name, 0) for name in after}


# ----------------------------------------------------------------------------- workers

class Channel:
    """JSON lines over one end of a socketpair between the parent and a child."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.reader = sock.makefile("r")

    def send(self, message: dict) -> None:
        self.sock.sendall((json.dumps(message) + "\n").encode())

    def receive(self) -> dict:
        line = self.reader.readline()
        if not line:
            raise ScenarioError("the peer process went away")
        return json.loads(line)


class Worker:
    """A forked child running a generator function; see the module docstring."""

    def __init__(self, name: str, pid: int, channel: Channel):
        self.name, self.pid, self.channel = name, pid, channel
        self.reaped = False

    def kill(self) -> None:
        os.kill(self.pid, signal.SIGKILL)
        os.waitpid(self.pid, 0)
        self.reaped = True

    def report(self) -> dict:
        message = self.channel.receive()
        if "worker_error" in message:
            raise ScenarioError(f"{self.name}: {message['worker_error']}")
        if message.get("worker_done"):
            raise ScenarioError(f"{self.name} ended before reporting")
        return message

    def resume(self, **message) -> None:
        """Let the worker go on; its pending ``yield`` evaluates to ``{"go": True, **message}``."""
        self.channel.send({"go": True, **message})

    def finish(self) -> None:
        """Close the channel (a child waiting at a yield sees EOF and exits); kill a stuck child."""
        try:
            self.resume()  # a generator at its last yield ends normally
        except OSError:
            pass
        self.channel.sock.close()
        if self.reaped:
            return
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            pid, _ = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                return
            time.sleep(0.01)
        os.kill(self.pid, signal.SIGKILL)
        os.waitpid(self.pid, 0)


def on_alarm(signum, frame):
    raise TimeoutError(f"the scenario's --timeout expired (a hang?); {stuck_state(frame)}")


def stuck_state(interrupted) -> str:
    """Where this process's threads wait, in Python (the innermost frames of each thread) and in
    the kernel (wchan; the thread running this handler shows none), and its namespace's TCP
    sockets' queues, so a hang says what it is: a reader asleep with bytes in rx_queue is a lost
    wake-up, a sender asleep with a full tx_queue is backpressure, a worker waiting on its channel
    with no socket left is waiting for the parent."""
    frames = sys._current_frames()
    frames[threading.get_ident()] = interrupted  # not this handler's own frames
    waits = []
    for thread in threading.enumerate():
        frame = frames.get(thread.ident)
        where = " < ".join(f"{f.name}:{f.lineno}" for f in reversed(traceback.extract_stack(frame)[-4:]))
        kernel = "running"
        # By ident: a forked child keeps its parent's native_id on the thread that forked (3.11).
        if thread.ident != threading.get_ident():
            try:
                with open(f"/proc/self/task/{thread.native_id}/wchan") as wchan:
                    kernel = wchan.read().strip() or "running"
            except OSError as exc:
                kernel = f"unreadable: {exc}"
        waits.append(f"{thread.name} in {where} (kernel: {kernel})")
    sockets = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as lines:
                for line in list(lines)[1:]:
                    fields = line.split()
                    if fields[3] != "0A":  # listening sockets say nothing here
                        tx, rx = (int(q, 16) for q in fields[4].split(":"))
                        sockets.append(f"{fields[1]}->{fields[2]} state {fields[3]} tx {tx} rx {rx}")
        except OSError as exc:
            sockets.append(f"{table} unreadable: {exc}")
    return f"threads: {'; '.join(waits)}; sockets: {'; '.join(sockets) or 'none'}"


def _run_child(name, channel: Channel, function, args, cgroup, netns_device, timeout) -> None:
    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(timeout)
    code = 0
    try:
        if netns_device:
            new_netns()
            setup_loopback(netns_device)
        join_cgroup(cgroup)
        steps = function(*args)
        report = next(steps)
        while True:
            channel.send(report)
            reply = channel.receive()  # wait until the parent lets us go on
            try:
                report = steps.send(reply)  # a yield evaluates to the parent's message
            except StopIteration:
                break
        channel.send({"worker_done": True})
    except BaseException as exc:  # reported to the parent, which puts it in the JSON
        code = 1
        try:
            detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
            channel.send({"worker_error": detail})
        except OSError:
            pass
    os._exit(code)


# ----------------------------------------------------------------------------- rounds

class Round:
    """What a scenario body gets: its arguments, the round's cgroups, phases and snapshots."""

    def __init__(self, args, name: str, index: int, trace: Trace):
        self.args, self.name, self.index, self.trace = args, name, index, trace
        self.redirect = name != "baseline"
        self.device = f"{args.tag}{index}" if args.tag else "lo"
        self.client_cgroup = (args.client_cgroup or args.cgroup) if self.redirect else None
        self.server_cgroup = (args.server_cgroup or args.cgroup) if self.redirect else None
        if args.client_cgroup == "none":
            self.client_cgroup = None
        if args.server_cgroup == "none":
            self.server_cgroup = None
        self.workers: list[Worker] = []
        self.phases: dict[str, dict] = {}
        self.snapshots: dict[str, dict] = {}
        self.counter_sources: list[tuple[str, int | str]] = [(self.device, "self")]

    def spawn(self, function, *args, cgroup: str | None = None, name: str | None = None,
              netns_device: str | None = None) -> Worker:
        parent_end, child_end = socket.socketpair()
        pid = os.fork()
        if pid == 0:
            parent_end.close()
            for other in self.workers:  # else a sibling's EOF never comes while this child lives
                other.channel.sock.close()
            _run_child(name or function.__name__, Channel(child_end), function, args, cgroup,
                       netns_device, self.args.timeout)
        child_end.close()
        worker = Worker(name or function.__name__, pid, Channel(parent_end))
        self.workers.append(worker)
        return worker

    def phase(self, label: str = "data") -> "Phase":
        return Phase(self, label)

    def snapshot(self, label: str, what: tuple[str, ...] = ("sockhash", "counters")) -> None:
        """Dump the sockhash and/or the counters now (redirect rounds with pins given only)."""
        pins = {"sockhash": self.args.map_pin, "counters": self.args.counters_pin}
        wanted = {name: pins[name] for name in what if pins.get(name)}
        if not self.redirect or not wanted:
            return
        shot = bpftool_dumps(wanted)
        shot["time"] = time.monotonic()
        self.snapshots[label] = shot

    # The shape most scenarios share: one server worker, one client worker.
    def start_pair(self, server_fn, server_args: tuple, client_fn, client_args: tuple):
        """Spawn the server (its first report is ``{"port": P}``), then the client with that port
        as its first argument; both then report what they connected. Returns (server, client,
        {"client": ..., "server": ...})."""
        server = self.spawn(server_fn, *server_args, cgroup=self.server_cgroup, name="server")
        port = server.report()["port"]
        server.resume()
        client = self.spawn(client_fn, port, *client_args, cgroup=self.client_cgroup, name="client")
        return server, client, {"client": client.report(), "server": server.report()}

    def data_phase(self, workers: list[Worker], label: str = "data") -> dict:
        """Let the workers do their data step inside a measured phase; their reports by name."""
        with self.phase(label):
            for worker in workers:
                worker.resume()
            return gather(workers)

    def close(self, workers: list[Worker], open_snapshot: bool = False) -> None:
        """Snapshot the map while open, let the workers close their sockets, snapshot again."""
        if open_snapshot:
            self.snapshot("open", ("sockhash",))
        for worker in workers:
            worker.resume()
        for worker in workers:
            worker.report()
        self.snapshot("closed")

    def finish(self) -> None:
        for worker in self.workers:
            worker.finish()
        self.workers = []


def gather(workers: list[Worker], grace: float = PEER_GRACE_SECONDS) -> dict:
    """Each worker's next report, in whatever order they come. Once one reports an error, the
    others get ``grace`` seconds; a worker still silent then is stopped and the round fails with
    the first error as its cause. (A side whose recv failed stops reading; its peer's send then
    blocks on a closed window for good, and the peer's timeout would hide the error that caused it.)"""
    reports: dict[str, dict] = {}
    waiting = {worker.channel.sock: worker for worker in workers}
    first_error, deadline = None, None
    while waiting:
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        ready, _, _ = select.select(list(waiting), [], [], timeout)
        if not ready:
            stuck = sorted(waiting.values(), key=lambda w: w.name)
            for worker in stuck:
                worker.kill()
            raise ScenarioError(f"{first_error}; {', '.join(w.name for w in stuck)} still blocked "
                                f"{grace:.0f} s later (stopped)")
        for sock in ready:
            worker = waiting.pop(sock)
            reports[worker.name] = worker.report()
            error = reports[worker.name].get("error")
            if error and first_error is None:
                first_error, deadline = f"{worker.name}: {error}", time.monotonic() + grace
    return reports


class Phase:
    """Counters and trace events of the round's namespaces between enter and exit."""

    def __init__(self, round_: Round, label: str):
        self.round, self.label = round_, label

    def __enter__(self) -> "Phase":
        self.counters = sum_counters(self.round.counter_sources)
        self.events = self.round.trace.counts()
        self.started = time.monotonic()
        return self

    def __exit__(self, *exc) -> None:
        seconds = time.monotonic() - self.started
        events = self.round.trace.counts()
        counters = sum_counters(self.round.counter_sources)
        self.round.phases[self.label] = {"seconds": round(seconds, 6),
                                         "counters": delta(counters, self.counters),
                                         "trace": delta(events, self.events)}


def bpftool_dumps(pins: dict[str, str]) -> dict:
    """``bpftool -j map dump pinned`` of several maps in one bpftool process (batch mode).

    bpftool 7.1 on some kernels ends every batch with ``{"error": "reading batch file failed: Bad
    file descriptor"}`` and exit 255 after running all commands; that trailing error is ignored
    when every command has its output.
    """
    with tempfile.NamedTemporaryFile("w", prefix="sockredir-dump-", suffix=".batch") as script:
        script.write("".join(f"map dump pinned {pin}\n" for pin in pins.values()))
        script.flush()
        proc = subprocess.run(["bpftool", "-j", "batch", "file", script.name],
                              capture_output=True, text=True, timeout=60)
    items = json.loads(proc.stdout) if proc.stdout.strip() else []
    outputs = [item for item in items if "command" in item]
    if len(outputs) != len(pins):
        errors = [item.get("error") for item in items if "error" in item]
        raise ScenarioError(f"bpftool batch map dump of {sorted(pins)} failed (exit {proc.returncode}): "
                            f"{(proc.stderr.strip() or str(errors))[:300]}")
    dumps = {}
    for name, output in zip(pins, outputs):
        body = output.get("output")
        if isinstance(body, dict) and "error" in body:
            raise ScenarioError(f"bpftool map dump {pins[name]}: {body['error']}")
        dumps[name] = body or []
    return dumps


def base_parser(description: str, rounds: bool = True) -> argparse.ArgumentParser:
    """The options every scenario takes (``rounds=False``: a program of one round, pair.py)."""
    parser = argparse.ArgumentParser(description=description)
    if rounds:
        parser.add_argument("--rounds", default="baseline,redirect",
                            help="comma-separated: baseline (no cgroup) and/or redirect (in --cgroup)")
    parser.add_argument("--cgroup", help="cgroup of both sides in redirect rounds")
    parser.add_argument("--client-cgroup", help="override for the client side ('none': stay outside)")
    parser.add_argument("--server-cgroup", help="override for the server side ('none': stay outside)")
    parser.add_argument("--tag", default="", help="loopback name prefix (tracepoint filters select it)")
    parser.add_argument("--port", type=int, default=0, help="server port (0: any)")
    parser.add_argument("--family", choices=sorted(FAMILIES), default="ipv4")
    parser.add_argument("--map-pin", help="pinned sockhash to dump at snapshots")
    parser.add_argument("--counters-pin", help="pinned counters map to dump at snapshots")
    parser.add_argument("--timeout", type=int, default=120)
    return parser


def main(name: str, body, add_arguments=None) -> int:
    program_started = time.monotonic()
    parser = base_parser(f"scenario {name}")
    if add_arguments:
        add_arguments(parser)
    args = parser.parse_args()
    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(args.timeout + 5)  # workers time out first and say which one hung
    raise_fd_limit()
    trace = Trace(os.environ.get("SOCKREDIR_TRACE_CONTROL"))
    trace.claim_pid()
    result: dict = {"scenario": name, "args": vars(args), "rounds": {}, "error": None}
    for index, round_name in enumerate(args.rounds.split(",")):
        ctx = Round(args, round_name, index, trace)
        outcome: dict = {"error": None}
        started = time.monotonic()
        try:
            new_netns()
            setup_loopback(ctx.device)
            outcome.update(body(ctx) or {})
        except Exception as exc:
            outcome["error"] = f"{type(exc).__name__}: {exc}"
            result["error"] = f"{round_name}: {outcome['error']}"
        finally:
            ctx.finish()
        outcome["phases"], outcome["snapshots"] = ctx.phases, ctx.snapshots
        outcome["seconds"] = round(time.monotonic() - started, 3)
        result["rounds"][round_name] = outcome
        if result["error"]:
            break
    result["seconds"] = round(time.monotonic() - program_started, 3)
    print(json.dumps(result))
    return 0 if result["error"] is None else 1


# ----------------------------------------------------------------------------- sockets and data

def listen(family_name: str, port: int, backlog: int = 128) -> socket.socket:
    family, bind_address = FAMILIES[family_name][:2]
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if bind_address == "::" else 1)
    listener.bind((bind_address, port))
    listener.listen(backlog)
    return listener


def connect(family_name: str, port: int, bind_port: int | None = None,
            rcvbuf: int | None = None) -> socket.socket:
    family, address_ = FAMILIES[family_name][2:]
    conn = socket.socket(family, socket.SOCK_STREAM)
    if rcvbuf:  # before connect(): the window it announces in the handshake follows it
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    if bind_port:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        conn.bind((address_, bind_port))
    conn.connect((address_, port))
    return conn


def nodelay(conn: socket.socket) -> socket.socket:
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return conn


SO_COOKIE = 57  # <asm-generic/socket.h>; the socket's cookie, what a sockhash returns as its value


def cookie(sock: socket.socket) -> int:
    return struct.unpack("Q", sock.getsockopt(socket.SOL_SOCKET, SO_COOKIE, 8))[0]


def describe(sock: socket.socket) -> dict:
    """The socket's addresses as the map keys show them, and its cookie: the map must hold *this*
    socket under its key, not just some socket."""
    return {"family": "AF_INET6" if sock.family == socket.AF_INET6 else "AF_INET",
            "sockname": list(sock.getsockname()[:2]), "peername": list(sock.getpeername()[:2]),
            "cookie": cookie(sock)}


def accept_one(family_name: str, port: int):
    """A worker's server prologue: listen, report the port, accept one connection (TCP_NODELAY),
    report its addresses. Use as ``conn = yield from accept_one(family, port)``."""
    listener = listen(family_name, port)
    yield {"port": listener.getsockname()[1]}
    conn, _ = listener.accept()
    listener.close()
    nodelay(conn)
    yield describe(conn)
    return conn


class SpuriousEagain(OSError):
    """A blocking recv()/send() failed with EAGAIN: an application would see this error, so a
    scenario never retries it (the conformance suite probes for it: blocking_recv*)."""


def recv(conn: socket.socket, size: int) -> bytes:
    try:
        return conn.recv(size)
    except BlockingIOError as exc:
        if conn.gettimeout() is None:
            raise SpuriousEagain(exc.errno, f"blocking recv() failed with EAGAIN: {exc.strerror}") from None
        raise


def send_all(conn: socket.socket, data) -> None:
    try:
        conn.sendall(data)
    except BlockingIOError as exc:
        if conn.gettimeout() is None:
            raise SpuriousEagain(exc.errno, f"blocking send() failed with EAGAIN: {exc.strerror}") from None
        raise


def recv_exactly(conn: socket.socket, size: int, digest=None) -> int:
    """Receive ``size`` bytes (or until EOF); returns how many arrived."""
    received = 0
    while received < size:
        data = recv(conn, min(1 << 20, size - received))
        if not data:
            break
        if digest is not None:
            digest.update(data)
        received += len(data)
    return received


def recv_bytes(conn: socket.socket, size: int) -> bytes:
    """Exactly ``size`` bytes, or fewer if the peer closed first."""
    data = bytearray()
    while len(data) < size:
        chunk = recv(conn, size - len(data))
        if not chunk:
            break
        data += chunk
    return bytes(data)


def recv_until_eof(conn: socket.socket, digest=None) -> int:
    received = 0
    while True:
        data = recv(conn, 1 << 20)
        if not data:
            return received
        if digest is not None:
            digest.update(data)
        received += len(data)


def bulk_sizes(total: int, chunk: int) -> list[int]:
    return [chunk] * (total // chunk) + ([total % chunk] if total % chunk else [])


def small_sizes(count: int, largest: int = 4096) -> list[int]:
    """``count`` write sizes spread over 1..largest bytes (a fixed stride through the range, so
    both 1-byte and 4-KiB writes occur), the same on every run."""
    return [1 + (index * 997) % largest for index in range(count)]


def transfer(sock: socket.socket, sizes: list[int], hook=None) -> dict:
    """Send random bytes in writes of ``sizes`` while receiving as many bytes from the peer.

    ``hook = (at_bytes, callable)``: the sender calls it once, after at least at_bytes were sent,
    and waits for it (e.g. detach the redirect in the middle of the stream); its return value is
    reported under ``hook``.
    """
    total = sum(sizes)
    payload = os.urandom(total)
    sent = {"bytes": 0, "sends": 0, "error": None, "hook": None}

    def sender() -> None:
        view, start = memoryview(payload), 0
        try:
            for size in sizes:
                if hook and sent["hook"] is None and start >= hook[0]:
                    sent["hook"] = hook[1]()
                send_all(sock, view[start:start + size])
                start += size
                sent["bytes"], sent["sends"] = start, sent["sends"] + 1
        except OSError as exc:
            sent["error"], sent["error_at"] = f"send: {exc}", time.monotonic()
            try:  # unblock both ends: the peer's recv() sees EOF instead of waiting for the timeout
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    thread = threading.Thread(target=sender)
    started = time.monotonic()
    thread.start()
    digest, error = hashlib.sha256(), None
    try:
        received = recv_exactly(sock, total, digest)
        if received < total:
            error = f"recv: peer closed after {received} of {total} bytes"
    except OSError as exc:
        received, error = -1, f"recv: {exc}"
    error_at = time.monotonic()
    thread.join()
    # The first error is the cause: a send that failed shuts the socket down, and the recv then
    # ends early because of it (and the other way round for the peer).
    first = sent["error"] or error
    if sent["error"] and error and sent["error_at"] > error_at:
        first = error
    return {"sent": sent["bytes"], "sends": sent["sends"], "sent_sha256": sha256(payload),
            "received": received, "received_sha256": digest.hexdigest(),
            "seconds": round(time.monotonic() - started, 6), "hook": sent["hook"],
            "data_segs_out": data_segs_out(sock), "error": first}


# struct tcp_info (linux/tcp.h): tcpi_data_segs_out, the segments TCP sent that carried payload
# (since 4.6). A connection whose payload the redirect carried has none: program-independent,
# per-connection evidence (handshake and FIN carry no payload).
TCP_INFO_DATA_SEGS_OUT = 156


def data_segs_out(sock: socket.socket) -> int:
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    if len(info) < TCP_INFO_DATA_SEGS_OUT + 4:
        return -1  # a kernel older than 4.6: unknown
    return struct.unpack_from("I", info, TCP_INFO_DATA_SEGS_OUT)[0]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def queue_sizes(conn: socket.socket) -> dict[str, int]:
    """Bytes in the socket's receive and send queues (SIOCINQ/SIOCOUTQ)."""
    sizes = {}
    for name, request in (("inq", SIOCINQ), ("outq", SIOCOUTQ)):
        try:
            sizes[name] = struct.unpack("i", fcntl.ioctl(conn, request, b"\0" * 4))[0]
        except OSError as exc:
            sizes[name] = -exc.errno if exc.errno else -errno.EIO
    return sizes


def run(name: str, body, add_arguments=None) -> None:
    sys.exit(main(name, body, add_arguments))
