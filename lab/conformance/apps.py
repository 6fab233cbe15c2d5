"""Does an application survive the redirect? Real programs through it and without it, judged by bytes.

    nginx          serves a 64 MiB file with sendfile(2) to curl, twice over one keep-alive connection,
                   then to a curl that reads slowly (nginx waits for write space: EPOLLOUT)
    redis          redis-server under redis-benchmark's pipelined SET/GET, then known values written
                   with ``redis-cli --pipe`` and read back with one MGET
    splice_proxy   scenarios/splice_proxy.py copies between two TCP sockets with splice(2) (like Go's
                   io.Copy or haproxy), 16 MiB from a client to an echo server and back
    go_http        Go's net/http: a server and a keep-alive client, 8 x 4 MiB (scenarios/apps/goapps)
    go_proxy       Go's io.Copy between two TCP connections (splice(2) on Linux), 16 MiB to an echo
                   upstream and back
    node_http      Node.js's http module: a server and a keep-alive client, 8 x 2 MiB
                   (scenarios/apps/node-http.js)

Each runs on the target once per transport, every process of a run in one cgroup: the plain one
(``tcp``, the reference, nothing attached), the one the caller installed the redirect on
(``redirect``) and, when the caller gives one, a cgroup with the lab's pass-only watching programs
(``passthrough``: the sockets in a sockhash, an sk_msg program that passes every message). A run
is one bench/peer.sh round trip, like the bench's real peers: the server in the background, the
client once it listens, the server stopped by its PID on every path; every step has a time limit,
and a hang is a result, never retried.

What is compared (``checked``) is bytes and counts: SHA-256 of what arrived against what was sent,
HTTP statuses, connections made, requests the server executed. A tcp run must show what the
application has to do (``expected``); if it does not, the app fails as a set-up problem. A redirect
run must show the same as the tcp run of the same kernel, and the redirect's counters must have
grown by at least the bytes the application moved (so the run really went through it); a
passthrough run's watching program must have passed bytes and redirected none (not all bytes: see
``watched``). A
run that differs is a failure, unless it is exactly the symptom of the known kernel defect
splice-read (``lab.conformance.defects``): then it is an xfail naming it. A run that moved the same
bytes but took more than twice plain TCP's time (plus a second, for runs of a second or less) is a
stall, and a failure too (a lost wake-up shows as a stall, not as wrong bytes).
"""

from __future__ import annotations

import functools
import json
import re
import shlex
import time
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

from lab import LabError, api
from lab.bench import peers
from lab.bpf import keys
from lab.vm.target import CommandTimeout, RUN_DIR, Result, Target
from lab.conformance import defects, gobuild
from lab.conformance.behaviours import inserted
from lab.vm.staging import SCENARIOS_ON_TARGET, ensure_on_target

APPS = ("nginx", "redis", "splice_proxy", "go_http", "go_proxy", "node_http")
TRANSPORTS = ("tcp", "redirect", "passthrough")   # tcp is the reference of the others
STALL_FACTOR = 2      # a run slower than this times plain TCP's, plus STALL_GRACE seconds, stalled
STALL_GRACE = 1.0
# Copied to the target (scenarios/...): the apps' shell halves, nginx's configuration, the proxy.
FILES = ("apps/nginx.conf", "apps/nginx-serve.sh", "apps/nginx-fetch.sh", "apps/redis-check.sh",
         "apps/node-http.js", "splice_proxy.py")
APPS_ON_TARGET = f"{SCENARIOS_ON_TARGET}/apps"
PROXY_ON_TARGET = f"{SCENARIOS_ON_TARGET}/splice_proxy.py"
GOAPPS_ON_TARGET = f"{APPS_ON_TARGET}/goapps"   # built on the host (lab/conformance/gobuild.py)
SERVED_DIR = f"{RUN_DIR}/www"   # nginx's root: made once per run_apps, removed after

# nginx: a multi-MB response (the size users saw stall under pass-through programs, grafana/beyla
# #2941), large enough that sendfile(2) moves it in many pieces; the slow reader takes it at 32 MiB/s,
# so nginx runs out of send buffer and waits for EPOLLOUT again and again (about 2 s).
NGINX_FILE_MIB = 64
NGINX_FILE = f"{NGINX_FILE_MIB}MiB.bin"
NGINX_SLOW_RATE = "32M"
CURL_MAX_TIME = 60
# redis: 24000 pipelined SETs and GETs of 256 bytes (thousands of pipelined batches of 16, a few
# seconds in a TCG guest); 10000 known values
# (redis-check.sh makes each of 32 random bytes, written as 64 hex digits: 640 kB in one MGET reply).
REDIS_REQUESTS = 24_000  # a multiple of 50 clients x 16 pipelined: redis-benchmark rounds up
REDIS_VALUE_BYTES = 256
REDIS_KEYS = 10_000
REDIS_KNOWN_VALUE_BYTES = 64
REDIS_TOOL_LIMIT = 60     # seconds for each of redis-check.sh's five tool invocations
# splice_proxy: 16 MiB through the proxy and back; the client gives up after 20 s (a splice read
# that never sees its data blocks for good).
SPLICE_BYTES = 16 << 20
SPLICE_DEADLINE = 20
SLACK = 30                # seconds peer.sh gives a client beyond its own limits before cutting it
# The runtimes: HTTP bodies over one keep-alive connection, and Go's io.Copy proxy (which gives up
# after GO_PROXY_DEADLINE: under the redirect its splice never sees the client's data).
GO_HTTP_REQUESTS, GO_HTTP_BYTES = 8, 4 << 20
NODE_HTTP_REQUESTS, NODE_HTTP_BYTES = 8, 2 << 20
GO_PROXY_BYTES = 16 << 20
GO_PROXY_DEADLINE = 10
RUNTIME_LIMIT = 60         # seconds for an HTTP client

Progress = Callable[[str], None]


@dataclass(frozen=True)
class App:
    name: str
    binaries: dict[str, str]                 # binary -> the Debian package that brings it
    server: str                              # shell commands for bench/peer.sh ($PORT, $WORKDIR)
    client: str
    client_limit: int                        # seconds peer.sh gives the client
    observe: Callable[[str], dict]           # client output -> {"checked": {...}, "figures": {...}}
    expected: dict                           # what "checked" must be over plain TCP
    moved: Callable[[dict], int]             # checked -> bytes the app moved (the redirect's minimum)
    # The known defect whose exact symptom a redirect run shows (checked, kernel release), if any.
    defect: Callable[[dict, str], "defects.Defect | None"] = lambda checked, release: None


@dataclass
class AppResult:
    kernel: str
    app: str
    transport: str                           # tcp | redirect | passthrough
    status: str                              # pass | fail | xfail
    observed: dict
    expected: dict
    reason: str = ""
    seconds: float | None = None

    def as_dict(self) -> dict:
        return asdict(self)


# ----------------------------------------------------------------------------- reading outputs

def sections(text: str) -> dict[str, str]:
    """The client scripts' output: ``### NAME`` lines open a section; its body follows."""
    found: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        if line.startswith("### "):
            current = found.setdefault(line[4:].strip(), [])
        elif current is not None:
            current.append(line)
    return {name: "\n".join(lines) for name, lines in found.items()}


def parse_int(text: str | None) -> int | None:
    text = (text or "").strip()
    return int(text) if re.fullmatch(r"-?\d+", text) else None


CURL_TRANSFER = re.compile(r"^transfer (\d{3}) (\d+) (\d+) (\d+)$", re.M)


def parse_curl_transfers(text: str) -> list[dict]:
    """nginx-fetch.sh's ``curl -w`` lines, one per transfer: status, bytes, new connections, port.
    num_connects counts connections the transfer had to open: 0 when it reused one."""
    return [{"status": int(status), "bytes": int(size), "new_connections": int(connects), "port": int(port)}
            for status, size, connects, port in CURL_TRANSFER.findall(text)]


def parse_sha256sums(text: str) -> list[str | None]:
    """The digests of ``sha256sum FILE...``, None where it could not read a file."""
    return [match.group(1) if (match := re.match(r"([0-9a-f]{64}) ", line)) else None
            for line in text.splitlines() if line.strip()]


def parse_access_log(text: str) -> list[dict]:
    """nginx.conf's ``app`` log format: connection number, request number on it, status, body bytes."""
    entries = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) == 4 and all(f.isdigit() for f in fields):
            connection, request, status, sent = map(int, fields)
            entries.append({"connection": connection, "request": request, "status": status, "bytes": sent})
    return entries


def observe_nginx(output: str, file_sha256: str) -> dict:
    parts = sections(output)
    transfers = parse_curl_transfers(parts.get("curl", ""))
    bodies = parse_sha256sums(parts.get("bodies", ""))
    served = parse_access_log(parts.get("access-log", ""))
    checked = {
        "curl_exit": parse_int(parts.get("curl-exit")),
        "http_status": [t["status"] for t in transfers],
        "body_bytes": [t["bytes"] for t in transfers],
        "bodies_match_file": [sha == file_sha256 for sha in bodies],
        "connections": sum(t["new_connections"] for t in transfers),
        # nginx's side: its request number on the connection, status and bytes per request.
        "nginx_served": [[entry["request"], entry["status"], entry["bytes"]] for entry in served],
        "nginx_connections": len({entry["connection"] for entry in served}),
        "nginx_errors": [line for line in parts.get("error-log", "").splitlines() if line.strip()],
    }
    return {"checked": checked, "figures": {"file_sha256": file_sha256, "body_sha256": bodies,
                                            "client_ports": [t["port"] for t in transfers]}}


def nginx_expected(size: int) -> dict:
    """Two transfers over one keep-alive connection, then the slow reader's on a connection of its own."""
    return {"curl_exit": 0, "http_status": [200] * 3, "body_bytes": [size] * 3,
            "bodies_match_file": [True] * 3, "connections": 2,
            "nginx_served": [[1, 200, size], [2, 200, size], [1, 200, size]], "nginx_connections": 2,
            "nginx_errors": []}


COMMANDSTAT = re.compile(r"^cmdstat_([\w|]+):calls=(\d+),", re.M)
PIPE_SUMMARY = re.compile(r"^errors: (\d+), replies: (\d+)\s*$", re.M)


def parse_commandstats(text: str) -> dict[str, int]:
    """Calls per command from ``INFO commandstats`` (its lines end in CRLF, unless text mode ate the CR)."""
    return {command: int(calls) for command, calls in COMMANDSTAT.findall(text.replace("\r", ""))}


def parse_pipe_summary(text: str) -> dict | None:
    """``redis-cli --pipe``'s last words: ``errors: E, replies: R``."""
    found = PIPE_SUMMARY.findall(text.replace("\r", ""))
    return {"errors": int(found[-1][0]), "replies": int(found[-1][1])} if found else None


def parse_digest_line(text: str) -> tuple[str, int] | None:
    """redis-check.sh's ``SHA256 LINES`` line."""
    match = re.fullmatch(r"([0-9a-f]{64}) (\d+)", (text or "").strip())
    return (match.group(1), int(match.group(2))) if match else None


def benchmark_rates(text: str) -> dict[str, float] | str:
    """Requests per second by test from redis-benchmark --csv, or why there are none."""
    try:
        return peers.parse_redis_csv(text)
    except peers.PeerOutputError as exc:
        return str(exc)


def observe_redis(output: str) -> dict:
    parts = sections(output)
    rates = benchmark_rates(parts.get("benchmark", ""))
    calls = parse_commandstats(parts.get("commandstats", ""))
    written = parse_digest_line(parts.get("values", ""))
    read = parse_digest_line(parts.get("readback", ""))
    checked = {
        "benchmark_exit": parse_int(parts.get("benchmark-exit")),
        "benchmark_tests": sorted(rates) if isinstance(rates, dict) else rates,
        # The server's count: every pipelined request arrived and was executed.
        "server_calls": {"set": calls.get("set"), "get": calls.get("get")},
        "pipe": parse_pipe_summary(parts.get("pipe", "")),
        "dbsize": parse_int(parts.get("dbsize")),
        "readback_values": read[1] if read else None,
        "readback_matches_written": bool(read and written and read == written),
    }
    return {"checked": checked,
            "figures": {"requests_per_second": rates if isinstance(rates, dict) else None}}


def redis_expected(requests: int, keys: int) -> dict:
    return {"benchmark_exit": 0, "benchmark_tests": ["GET", "SET"],
            "server_calls": {"set": requests, "get": requests}, "pipe": {"errors": 0, "replies": keys},
            "dbsize": keys, "readback_values": keys, "readback_matches_written": True}


def redis_moved(checked: dict) -> int:
    """Value bytes that crossed a connection at least once: SET values and GET replies of the
    benchmark, the known values written and read back."""
    calls = checked["server_calls"]
    return (REDIS_VALUE_BYTES * ((calls["set"] or 0) + (calls["get"] or 0))
            + 2 * REDIS_KNOWN_VALUE_BYTES * (checked["readback_values"] or 0))


def last_json(text: str, program: str) -> dict:
    """The last JSON object a client printed, or {"error": why there is none}."""
    for line in reversed(text.strip().splitlines()):
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if isinstance(doc, dict):
            return doc
    return {"error": f"{program} printed no JSON result: {text.strip()[-300:]!r}"}


def observe_splice_proxy(output: str) -> dict:
    doc = last_json(output, "splice_proxy.py")
    if "error" in doc:
        return {"checked": {"error": doc["error"]}, "figures": {}}
    upstream = doc.get("upstream") or {}
    proxy = doc.get("proxy")
    checked = {
        "finished": doc["finished"],
        "sent": doc["sent"],
        "echoed": doc["echoed"],
        "echo_intact": doc["echoed"] == doc["payload"] and doc["echoed_sha256"] == doc["payload_sha256"],
        "upstream_received": upstream.get("received"),
        "upstream_intact": upstream.get("sha256") == doc["payload_sha256"],
        # Per direction: bytes splice(2) read from the source socket and wrote to the other, and
        # the call it was in when the client stopped it ("reading" when it never returned).
        "proxy": ({d["name"]: {key: d[key] for key in ("spliced_in", "spliced_out", "state")} for d in proxy}
                  if isinstance(proxy, list) else proxy),
    }
    figures = {"transfer_seconds": doc["seconds"], "payload_sha256": doc["payload_sha256"],
               "echoed_sha256": doc["echoed_sha256"], "upstream_sha256": upstream.get("sha256")}
    return {"checked": checked, "figures": figures}


def splice_proxy_expected(size: int) -> dict:
    done = {"spliced_in": size, "spliced_out": size, "state": "done"}
    return {"finished": True, "sent": size, "echoed": size, "echo_intact": True, "upstream_received": size,
            "upstream_intact": True, "proxy": {"client->upstream": done, "upstream->client": done}}


def observe_json_client(output: str, program: str, fields: tuple[str, ...]) -> dict:
    """A client that reports one JSON object (goapps, node-http.js): ``fields`` of it are what is
    compared, and its "error" when it has one."""
    doc = last_json(output, program)
    checked = {key: doc.get(key) for key in fields}
    if "error" in doc:
        checked["error"] = doc["error"]
    return {"checked": checked, "figures": {}}


# goapps http-client's and node-http.js client's report: statuses, bodies intact (against the
# server's own SHA-256 of what it serves), bytes, connections opened.
HTTP_CLIENT_FIELDS = ("statuses", "intact", "bytes", "connections")
GO_PROXY_FIELDS = ("sent", "echoed", "intact", "finished", "proxy")


def http_client_expected(requests: int, size: int) -> dict:
    return {"statuses": [200] * requests, "intact": [True] * requests, "bytes": requests * size,
            "connections": 1}


def go_proxy_expected(size: int) -> dict:
    done = {"copied": size, "done": True}
    return {"sent": size, "echoed": size, "intact": True, "finished": True,
            "proxy": {"client_to_upstream": done, "upstream_to_client": done}}


def go_splice_read_defect(checked: dict, release: str) -> defects.Defect | None:
    """splice-read in Go's io.Copy: the client sent its bytes, but the copy from the client's socket
    (a splice) moved nothing: it blocked (the client gave up at its deadline) or met EOF at once (the
    client's FIN came over TCP; the proxy closed as after an empty stream, the client read a clean
    EOF: silent data loss, seen on the host), and nothing came back."""
    proxy = checked.get("proxy")
    if not isinstance(proxy, dict) or not isinstance(proxy.get("client_to_upstream"), dict):
        return None
    from_client = proxy["client_to_upstream"]
    symptom = ((checked.get("sent") or 0) > 0 and from_client.get("copied") == 0
               and from_client.get("done") in (True, False) and checked.get("echoed") == 0
               and checked.get("finished") in (True, False))
    defect = defects.by_name("splice-read")
    return defect if symptom and defect.affects(defects.kernel_version(release)) else None


# ----------------------------------------------------------------------------- the apps

def nginx_app(file_sha256: str) -> App:
    size = NGINX_FILE_MIB << 20
    return App(
        "nginx", {"nginx": "nginx", "curl": "curl"},
        shlex.join(["sh", f"{APPS_ON_TARGET}/nginx-serve.sh", SERVED_DIR]),
        shlex.join(["sh", f"{APPS_ON_TARGET}/nginx-fetch.sh", NGINX_FILE, str(CURL_MAX_TIME), NGINX_SLOW_RATE]),
        2 * CURL_MAX_TIME + SLACK, functools.partial(observe_nginx, file_sha256=file_sha256),
        nginx_expected(size), lambda checked: sum(checked["body_bytes"]))


def redis_app() -> App:
    steps = 5  # redis-check.sh's tool invocations, each limited to REDIS_TOOL_LIMIT
    return App(
        "redis", {"redis-server": "redis-server", "redis-benchmark": "redis-tools", "redis-cli": "redis-tools"},
        peers.REDIS_SERVER,
        shlex.join(["sh", f"{APPS_ON_TARGET}/redis-check.sh", str(REDIS_REQUESTS), str(REDIS_KEYS),
                    str(REDIS_TOOL_LIMIT)]),
        steps * REDIS_TOOL_LIMIT + SLACK, observe_redis, redis_expected(REDIS_REQUESTS, REDIS_KEYS),
        redis_moved)


def splice_proxy_app() -> App:
    report = '"$WORKDIR/upstream.json"'
    client = shlex.join(["python3", "-S", PROXY_ON_TARGET, "client", "--bytes", str(SPLICE_BYTES),
                         "--deadline", str(SPLICE_DEADLINE)])
    return App(
        "splice_proxy", {"python3": "python3"},
        shlex.join(["python3", "-S", PROXY_ON_TARGET, "echo"]) + f' --port "$PORT" --report {report}',
        client + f' --upstream-port "$PORT" --upstream-report {report}',
        SPLICE_DEADLINE + SLACK, observe_splice_proxy, splice_proxy_expected(SPLICE_BYTES),
        lambda checked: checked.get("sent") or 0, splice_read_defect)


def go_http_app() -> App:
    return App(
        "go_http", {},
        f'{GOAPPS_ON_TARGET} http-server --port "$PORT" --bytes {GO_HTTP_BYTES}',
        f'{GOAPPS_ON_TARGET} http-client --port "$PORT" --requests {GO_HTTP_REQUESTS} --deadline {RUNTIME_LIMIT}s',
        RUNTIME_LIMIT + SLACK,
        functools.partial(observe_json_client, program="goapps http-client", fields=HTTP_CLIENT_FIELDS),
        http_client_expected(GO_HTTP_REQUESTS, GO_HTTP_BYTES), lambda checked: checked.get("bytes") or 0)


def go_proxy_app() -> App:
    return App(
        "go_proxy", {},
        f'{GOAPPS_ON_TARGET} echo --port "$PORT"',
        f'{GOAPPS_ON_TARGET} proxy-client --upstream-port "$PORT" --bytes {GO_PROXY_BYTES} '
        f'--deadline {GO_PROXY_DEADLINE}s',
        GO_PROXY_DEADLINE + SLACK,
        functools.partial(observe_json_client, program="goapps proxy-client", fields=GO_PROXY_FIELDS),
        go_proxy_expected(GO_PROXY_BYTES),
        lambda checked: checked.get("sent") or 0, go_splice_read_defect)


def node_http_app() -> App:
    script = f"{APPS_ON_TARGET}/node-http.js"
    return App(
        "node_http", {"node": "nodejs"},
        f'node {script} server "$PORT" {NODE_HTTP_BYTES}',
        f'node {script} client "$PORT" {NODE_HTTP_REQUESTS}',
        RUNTIME_LIMIT + SLACK,
        functools.partial(observe_json_client, program="node-http.js client", fields=HTTP_CLIENT_FIELDS),
        http_client_expected(NODE_HTTP_REQUESTS, NODE_HTTP_BYTES), lambda checked: checked.get("bytes") or 0)


def serve_file(target: Target) -> str:
    """nginx's file (random bytes, so any lost, repeated or reordered piece changes the digest);
    its SHA-256."""
    path = f"{SERVED_DIR}/{NGINX_FILE}"
    target.make_dirs(SERVED_DIR)
    target.run(["dd", "if=/dev/urandom", f"of={path}", "bs=1M", f"count={NGINX_FILE_MIB}", "status=none"],
               timeout=120, check=True)
    return target.run(["sha256sum", path], timeout=120, check=True).stdout.split()[0]


def make_app(target: Target, name: str) -> App:
    if name == "nginx":
        return nginx_app(serve_file(target))
    return {"redis": redis_app, "splice_proxy": splice_proxy_app, "go_http": go_http_app,
            "go_proxy": go_proxy_app, "node_http": node_http_app}[name]()


# ----------------------------------------------------------------------------- judging

def differences(seen: dict, expected: dict) -> str:
    return "; ".join(f"{key}: {seen.get(key)!r}, expected {expected.get(key)!r}"
                     for key in sorted(set(seen) | set(expected)) if seen.get(key) != expected.get(key))


def splice_read_defect(checked: dict, release: str) -> defects.Defect | None:
    """The splice-read defect, when the run shows exactly its symptom: the proxy's splice(2) reads
    from the client's socket moved nothing although the client sent data (they blocked: "reading",
    or returned 0 as at EOF once the client's FIN came: "done"), so nothing reached the upstream
    and nothing came back."""
    proxy = checked.get("proxy")
    if not isinstance(proxy, dict) or "client->upstream" not in proxy:
        return None
    from_client = proxy["client->upstream"]
    symptom = ((checked.get("sent") or 0) > 0 and from_client["state"] in ("reading", "done")
               and not checked.get("upstream_received") and checked.get("echoed") == 0)
    defect = defects.by_name("splice-read")
    if (symptom and from_client["spliced_in"] == 0
            and defect.affects(defects.kernel_version(release))):
        return defect
    return None


def carried(app: App, checked: dict, delta: dict) -> str:
    """Why the redirect's counters do not show it carried the run, or ""."""
    moved = app.moved(checked)
    if inserted(delta) < 2 or delta["bytes_redirected"] < moved:
        return (f"the redirect's counters do not show it carried this run: {inserted(delta)} sockets "
                f"inserted (at least 2 expected), {delta['bytes_redirected']} bytes redirected for "
                f"{moved} bytes the application moved")
    return ""


def watched(app: App, checked: dict, delta: dict, watch: dict) -> str:
    """Why the watching programs' counters do not show the run went through them, or "".

    Not "every byte": after a passed message that TCP took only in part (a non-blocking sender, a
    full send buffer), tcp_bpf keeps the verdict and sends the next write without running the
    program (seen: nginx's sendfile on the host, 89 KB of 32 MiB), so a pass-only program sees
    most bytes, not all; run_app records the rest as ``unseen_bytes``."""
    moved = app.moved(checked)
    if inserted(delta) < 2 or not watch.get("bytes_passed") or delta["bytes_redirected"]:
        return (f"the watching programs' counters do not show this run went through them: "
                f"{inserted(delta)} sockets inserted (at least 2 expected), {watch.get('bytes_passed', 0)} "
                f"bytes passed (of {moved} the application moved), {delta['bytes_redirected']} "
                "redirected (none expected)")
    return ""


def stalled(result: AppResult, reference: AppResult) -> str:
    """Why ``result`` took too long against plain TCP's run, or ""."""
    limit = STALL_FACTOR * (reference.seconds or 0) + STALL_GRACE
    if result.seconds is not None and result.seconds > limit:
        return (f"stalled: {result.seconds:.1f} s against plain TCP's {reference.seconds:.1f} s in the same "
                f"run (more than {STALL_FACTOR}x + {STALL_GRACE:.0f} s), although the bytes were the same")
    return ""


def judge_tcp(result: AppResult) -> None:
    checked = result.observed["checked"]
    if checked != result.expected:
        result.status = "fail"
        result.reason = ("over plain TCP the application did not do what it must, a set-up problem "
                         f"(the redirect is not involved): {differences(checked, result.expected)}")


def judge_through(app: App, result: AppResult, reference: AppResult, release: str,
                  patches: frozenset[str] = frozenset()) -> None:
    """A redirect or passthrough run against the tcp run of the same kernel (built with
    ``patches``: a defect whose kernel-fixes/ patch it carries is not there to name)."""
    checked = result.observed["checked"]
    result.expected = reference.observed["checked"]
    if reference.status != "pass":
        result.status, result.reason = "fail", f"the reference run over plain TCP failed: {reference.reason}"
        return
    counters = result.observed["redirect_counters"]
    not_through = (carried(app, checked, counters) if result.transport == "redirect"
                   else watched(app, checked, counters, result.observed.get("watch_counters") or {}))
    if not_through:
        result.status, result.reason = "fail", not_through
        return
    if checked == result.expected:
        slow = stalled(result, reference)
        if slow:
            result.status, result.reason = "fail", slow
        return
    defect = app.defect(checked, release) if result.transport == "redirect" else None
    if defect and defect.fix_patch not in patches:
        result.status, result.reason = "xfail", defect.describe()
    else:
        result.status = "fail"
        result.reason = ("differs from plain TCP on the same kernel; no known kernel defect explains it: "
                         + differences(checked, result.expected))


# ----------------------------------------------------------------------------- running

def run_once(target: Target, app: App, transport: str, cgroup: str, kernel: str) -> AppResult:
    """One peer.sh run of ``app`` in ``cgroup``; a tool's failure or a hang is in the observation."""
    started = time.monotonic()
    try:
        result = peers.run_peer_script(target, app.name, app.server, app.client, app.client_limit, cgroup)
    except CommandTimeout as exc:  # peer.sh's own limits failed to end the run
        result = Result("", 124, "", f"peer.sh: {app.name}: {exc}")
    observed = app.observe(result.stdout)
    ours = [line.removeprefix("peer.sh: ") for line in result.stderr.splitlines()
            if line.startswith("peer.sh: ")]
    if result.rc in (124, 125):  # peer.sh's verdicts: a client it had to cut, a server that never listened
        observed["checked"]["peer.sh"] = " | ".join(ours) or f"exit {result.rc}"
    return AppResult(kernel, app.name, transport, "pass", observed, app.expected,
                     seconds=round(time.monotonic() - started, 2))


def run_app(target: Target, app: App, cgroups: dict[str, str], kernel: str, release: str,
            progress: Progress, patches: frozenset[str] = frozenset()) -> list[AppResult]:
    """``app`` over each transport of ``cgroups`` (transport -> cgroup; tcp first, the reference)."""
    missing = peers.missing_package(target, app.binaries)
    if missing:
        return [AppResult(kernel, app.name, "tcp", "fail", {}, app.expected, reason=missing)] + [
            AppResult(kernel, app.name, transport, "fail", {}, {},
                      reason=f"the reference run over plain TCP failed: {missing}")
            for transport in cgroups if transport != "tcp"]
    reference = run_once(target, app, "tcp", cgroups["tcp"], kernel)
    judge_tcp(reference)
    results = [reference]
    for transport, cgroup in cgroups.items():
        if transport == "tcp":
            continue
        before = api.redirect_status(target, cgroup)
        result = run_once(target, app, transport, cgroup, kernel)
        after = api.redirect_status(target, cgroup)
        result.observed["redirect_counters"] = keys.counters_delta(before["counters"], after["counters"])
        if transport == "passthrough":
            watch = keys.counters_delta(before["watch"], after["watch"])
            result.observed["watch_counters"] = watch
            result.observed["figures"]["unseen_bytes"] = max(0, app.moved(result.observed["checked"])
                                                             - watch["bytes_passed"])
        judge_through(app, result, reference, release, patches)
        results.append(result)
    for result in results:
        progress(f"apps: {app.name} over {result.transport}: {result.status} ({result.seconds} s)"
                 + (f": {result.reason}" if result.reason else ""))
    return results


def run_apps(target: Target, plain_cgroup: str, redirect_cgroup: str, kernel: str,
             apps: Sequence[str] = APPS, progress: Progress = print,
             passthrough_cgroup: str | None = None, patches: frozenset[str] = frozenset()) -> list[dict]:
    """Records of every app in ``apps`` on ``target``: over plain TCP (in ``plain_cgroup``),
    through the redirect the caller installed on ``redirect_cgroup`` (``lab.api.install_redirect``)
    and, given ``passthrough_cgroup`` (the ``passthrough`` variant installed there), through the
    watching programs. ``patches``: the kernel-fixes/ patches the kernel is built with.

    A record: kernel, app, transport (tcp | redirect | passthrough), status (pass | fail | xfail), observed
    ({"checked": what is compared, "figures": digests and rates, "redirect_counters": the counters'
    growth during a redirect or passthrough run, "watch_counters": the watching programs' during a
    passthrough run}), expected (tcp: what the app must do; the others: the tcp run's checked),
    reason, seconds. Each transport's record carries the app's verdict there."""
    unknown = [name for name in apps if name not in APPS]
    if unknown:
        raise LabError(f"unknown app(s) {', '.join(unknown)}; the apps are {', '.join(APPS)}")
    release = defects.upstream_version(target)
    peers.install_peer_script(target)
    for name in FILES:
        ensure_on_target(target, name)
    if any(name.startswith("go_") for name in apps):  # one binary serves every Go app
        target.put(gobuild.goapps_binary(), GOAPPS_ON_TARGET)
        target.run(["chmod", "+x", GOAPPS_ON_TARGET], check=True)
    cgroups = {"tcp": plain_cgroup, "redirect": redirect_cgroup}
    if passthrough_cgroup is not None:
        cgroups["passthrough"] = passthrough_cgroup
    results: list[AppResult] = []
    try:
        for name in apps:
            results += run_app(target, make_app(target, name), cgroups, kernel, release, progress, patches)
    finally:
        target.run(["rm", "-rf", SERVED_DIR])
    return [result.as_dict() for result in results]


def verdict(records: Sequence[dict], app: str, transport: str = "redirect") -> dict:
    """The app's result over ``transport`` among ``run_apps``' records (which fails when the
    reference failed)."""
    return next(r for r in records if r["app"] == app and r["transport"] == transport)
