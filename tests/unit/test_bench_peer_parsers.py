"""Real peers (lab/bench/peers.py): the parsers on outputs captured from iperf3 3.12, sockperf 3.7 and
redis-benchmark 7.0 (tests/unit/bench_outputs/), what a run makes of failures, and bench/peer.sh's
guarantees (the server is ours, it is stopped on every path) run locally with stand-in programs."""

import os
import re
import subprocess
from pathlib import Path

import pytest

from lab import api
from lab.bench import peers
from lab.vm.target import Result, Target

OUTPUTS = Path(__file__).parent / "bench_outputs"


def output(name: str) -> str:
    return (OUTPUTS / name).read_text()


# ----------------------------------------------------------------------------- parsers

def test_iperf3_json_gives_the_receivers_rate_and_bytes():
    reading = peers.parse_iperf3_json(output("iperf3.json"))
    assert reading.bytes == 4420403200
    assert reading.value == pytest.approx(35340183800.1623 / 8)


def test_iperf3_error_in_json_is_the_message():
    # iperf3 -J exits 0 when it cannot connect: only the JSON says so.
    with pytest.raises(peers.PeerOutputError, match="^iperf3: unable to connect to server: Connection refused$"):
        peers.parse_iperf3_json(output("iperf3-refused.json"))


@pytest.mark.parametrize("text, message", [
    ("", "not JSON: \\(empty\\)"),
    ("iperf3: error - the server is busy\n", "not JSON: iperf3: error - the server is busy"),
    ("[1, 2]", "not a JSON object"),
    ('{"end": {"sum_sent": {"bytes": 1}}}', "no end.sum_received figures"),
    ('{"end": {"sum_received": {"bytes": 1, "bits_per_second": "fast"}}}', "no end.sum_received figures"),
])
def test_iperf3_garbage_is_a_clear_error(text, message):
    with pytest.raises(peers.PeerOutputError, match=message):
        peers.parse_iperf3_json(text)


def test_sockperf_summary_lines():
    assert peers.parse_sockperf(output("sockperf-pingpong.txt"), "latency") == 30.452
    # sockperf's MBps are MiB/s: 1121817 messages/s of 1472 bytes = 1574.816 MBps.
    assert peers.parse_sockperf(output("sockperf-throughput.txt"), "throughput") == pytest.approx(
        1574.816 * 2 ** 20)
    assert 1574.816 * 2 ** 20 == pytest.approx(1121817 * 1472, rel=1e-5)


def test_sockperf_without_summary_names_its_error_or_shows_the_tail():
    # sockperf exits 0 when it cannot connect; its ERROR line is the reason.
    with pytest.raises(peers.PeerOutputError, match="sockperf: Can`t connect socket .errno=111 Connection refused"):
        peers.parse_sockperf(output("sockperf-refused.txt"), "latency")
    with pytest.raises(peers.PeerOutputError, match="no sockperf latency summary .*output ends: .*<MIN> observation"):
        peers.parse_sockperf(output("sockperf-throughput.txt").replace("BandWidth", "x") + "\n"
                             + output("sockperf-pingpong.txt").replace("Latency is", "Latency was"), "latency")
    with pytest.raises(peers.PeerOutputError, match="no sockperf throughput summary .*found 0.*output ends: \\(empty\\)"):
        peers.parse_sockperf("", "throughput")


def test_sockperf_summary_must_be_exact_and_single():
    loose = "sockperf: Summary: Latency is about 5 usec\n"
    with pytest.raises(peers.PeerOutputError, match="found 0"):
        peers.parse_sockperf(loose, "latency")
    twice = output("sockperf-pingpong.txt") * 2
    with pytest.raises(peers.PeerOutputError, match="found 2"):
        peers.parse_sockperf(twice, "latency")


def test_redis_csv_rates_by_command():
    assert peers.parse_redis_csv(output("redis-pipelined.csv")) == {"SET": 694444.50, "GET": 790513.88}
    assert peers.parse_redis_csv("WARNING: something\n" + output("redis-get.csv")) == {"GET": 68259.38}


@pytest.mark.parametrize("text, message", [
    ("", 'no "test","rps" header: \\(empty\\)'),
    ("Could not connect to Redis at 127.0.0.1:1: Connection refused\n", "no \"test\",\"rps\" header: Could not"),
    ('"test","rps"\n', "header but no results"),
    ('"test","rps"\n"GET","many"\n', "row \\['GET', 'many'\\] has no requests/s figure"),
])
def test_redis_garbage_is_a_clear_error(text, message):
    with pytest.raises(peers.PeerOutputError, match=message):
        peers.parse_redis_csv(text)


# ----------------------------------------------------------------------------- runs, with a stand-in target

class FakeTarget(Target):
    """Answers `command -v`; peer.sh runs are answered by the test through api.run_in."""

    name = "fake"

    def __init__(self, missing=()):
        super().__init__()
        self.missing = set(missing)
        self.copied = []

    def _run(self, cmd, timeout, input):
        binary = cmd.removeprefix("command -v ")
        return Result(cmd, 1 if binary in self.missing else 0, "", "")

    def put(self, local, remote):
        self.copied.append((local, remote))


def fake_runs(monkeypatch, answer):
    """Route peer.sh runs to ``answer(tool, cgroup) -> Result``; the calls are returned."""
    calls = []

    def run_in(target, command, cgroup=None, timeout=60, **_):
        assert command[:2] == ["sh", peers.SCRIPT_ON_TARGET] and timeout > int(command[5])
        calls.append((command[2], cgroup))
        return answer(command[2], cgroup)

    monkeypatch.setattr(api, "run_in", run_in)
    return calls


CAPTURED = {"iperf3": "iperf3.json", "redis-benchmark": "redis-pipelined.csv"}


def test_records_alternate_plain_and_redirect_each_in_its_cgroup(monkeypatch):
    calls = fake_runs(monkeypatch, lambda tool, cgroup: Result("", 0, output(CAPTURED[tool]), ""))
    target = FakeTarget()
    records = peers.run_peers(target, "plain", "fast", "6.1", seconds=1, tools=("iperf3",),
                              progress=lambda _: None)
    assert target.copied == [(peers.SCRIPT, peers.SCRIPT_ON_TARGET)]
    assert calls == [("iperf3", "plain"), ("iperf3", "fast")] * len(peers.IPERF3_WRITE_SIZES)
    assert [(r["transport"], r["detail"]) for r in records] == [
        ("tcp", "iperf3 -l 1K -t 1"), ("redirect", "iperf3 -l 1K -t 1"),
        ("tcp", "iperf3 -l 128K -t 1"), ("redirect", "iperf3 -l 128K -t 1")]
    assert records[0] == {"kernel": "6.1", "tool": "iperf3", "transport": "tcp", "metric": "throughput",
                          "unit": "bytes/s", "detail": "iperf3 -l 1K -t 1",
                          "value": pytest.approx(35340183800.1623 / 8), "bytes": 4420403200, "error": None}


def test_redis_gives_one_record_per_command_and_a_missing_row_is_an_error(monkeypatch):
    fake_runs(monkeypatch, lambda tool, cgroup: Result("", 0, output("redis-pipelined.csv"), ""))
    records = peers.run_peers(FakeTarget(), "plain", "fast", "host", seconds=1, tools=("redis",),
                              progress=lambda _: None)
    assert [(r["detail"], r["value"]) for r in records[:2]] == [
        ("redis-benchmark -t set,get -P 16 -n 400000: SET", 694444.50),
        ("redis-benchmark -t set,get -P 16 -n 400000: GET", 790513.88)]
    # The unpipelined run asks for GET only; a stand-in answering SET,GET is fine. Without GET:
    fake_runs(monkeypatch, lambda tool, cgroup: Result("", 0, output("redis-pipelined.csv").replace('"GET"', '"PING"'), ""))
    records = peers.run_peers(FakeTarget(), "plain", "fast", "host", seconds=1, tools=("redis",),
                              progress=lambda _: None)
    assert all(r["value"] is None for r in records)
    assert "redis-benchmark --csv has no row for GET (rows: SET, PING)" in records[0]["error"]
    assert records[0]["error"] == records[1]["error"]  # one run, two records, one reason


def test_missing_tool_gives_error_records_and_runs_nothing(monkeypatch):
    calls = fake_runs(monkeypatch, lambda tool, cgroup: pytest.fail("nothing should run"))
    records = peers.run_peers(FakeTarget(missing={"redis-benchmark"}), "plain", "fast", "host",
                              tools=("redis",), progress=lambda _: None)
    assert not calls and len(records) == 6 and all(r["value"] is None for r in records)
    assert {r["error"] for r in records} == {
        "redis-benchmark (Debian package redis-tools) is not installed on fake; add redis-tools to "
        "images/rootfs.toml (guests) or scripts/debian-packages.txt (host)"}
    records = peers.run_peers(FakeTarget(missing={"iperf3"}), "plain", "fast", "host",
                              tools=("iperf3",), progress=lambda _: None)
    assert records[0]["error"] == ("iperf3 is not installed on fake; add iperf3 to images/rootfs.toml "
                                   "(guests) or scripts/debian-packages.txt (host)")


def test_failures_are_one_line_errors_and_the_run_goes_on(monkeypatch):
    answers = {
        ("sockperf-pingpong", "plain"): Result("", 125, "", "peer.sh: sockperf-pingpong: server exited before "
                                               "listening on 127.0.0.1:20001: sockperf server\npeer.sh: server: "
                                               "sockperf: ERROR: Can`t bind socket\n"),
        ("sockperf-pingpong", "fast"): Result("", 124, "partial", "peer.sh: sockperf-pingpong: client gave no "
                                              "result within 61s: x\n"),
    }
    calls = fake_runs(monkeypatch, lambda tool, cgroup: answers.get(
        (tool, cgroup), Result("", 2, "", "sockperf: fatal: out of luck\nsecond line\n")))
    records = peers.run_peers(FakeTarget(), "plain", "fast", "host", seconds=1, tools=("sockperf",),
                              progress=lambda _: None)
    assert len(calls) == 4 and all(r["value"] is None and "\n" not in r["error"] for r in records)
    assert records[0]["error"] == (
        "sockperf ping-pong --tcp -m 64 -t 1 over tcp on fake: sockperf-pingpong: server exited before "
        "listening on 127.0.0.1:20001: sockperf server | server: sockperf: ERROR: Can`t bind socket")
    assert records[1]["error"].endswith("over redirect on fake: sockperf-pingpong: client gave no result "
                                        "within 61s: x")
    assert records[2]["error"].endswith("over tcp on fake: exit 2: second line")


def test_failed_iperf3_reports_its_json_error(monkeypatch):
    fake_runs(monkeypatch, lambda tool, cgroup: Result("", 1, output("iperf3-refused.json"), ""))
    records = peers.run_peers(FakeTarget(), "plain", "fast", "host", tools=("iperf3",), progress=lambda _: None)
    assert records[0]["error"] == ("iperf3 -l 1K -t 2 over tcp on fake: iperf3: unable to connect to server: "
                                   "Connection refused")


def test_durations_are_whole_seconds_the_tools_honour():
    # iperf3 and sockperf truncate -t to whole seconds, and `iperf3 -t 0` runs forever.
    assert [m.run for m in peers.iperf3_measurements(0.3)] == ["iperf3 -l 1K -t 1", "iperf3 -l 128K -t 1"]
    assert [m.run for m in peers.sockperf_measurements(2.6)] == ["sockperf ping-pong --tcp -m 64 -t 3",
                                                                 "sockperf throughput --tcp -m 1472 -t 3"]
    assert [m.run for m in peers.redis_measurements(0.5)] == ["redis-benchmark -t set,get -P 16 -n 200000",
                                                              "redis-benchmark -t get -n 20000"]


def test_unknown_tool_is_refused():
    with pytest.raises(peers.LabError, match="unknown peer tool.s. ping; choose from iperf3, sockperf, redis"):
        peers.run_peers(FakeTarget(), "plain", "fast", "host", tools=("ping",))


# ----------------------------------------------------------------------------- bench/peer.sh

def peer_sh(server: str, client: str, listen_wait: int = 5, client_limit: int = 10, first_port: int = 0):
    first_port = first_port or 20000 + os.getpid() % 9000
    return subprocess.run(["sh", str(peers.SCRIPT), "stand-in", str(first_port), str(listen_wait),
                           str(client_limit), server, client], capture_output=True, text=True, timeout=60)


HTTP_SERVER = 'python3 -u -m http.server --bind 127.0.0.1 "$PORT"'
SHOW_LISTENER = 'ss -Hltnp "sport = :$PORT"'


def listener_pid(ss_line: str) -> int:
    return int(re.search(r"pid=(\d+),", ss_line).group(1))


def gone(pid: int) -> bool:
    return not Path(f"/proc/{pid}").exists()


def test_peer_sh_runs_the_client_against_its_own_server_and_stops_it():
    run = peer_sh(HTTP_SERVER, SHOW_LISTENER + ' && test -d "$WORKDIR"')
    assert run.returncode == 0, run.stderr
    assert "python3" in run.stdout and gone(listener_pid(run.stdout))


def test_peer_sh_skips_a_port_somebody_else_listens_on():
    with subprocess.Popen(["python3", "-u", "-m", "http.server", "--bind", "127.0.0.1", "0"],
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) as squatter:
        try:
            port = int(re.search(r"port (\d+)", squatter.stdout.readline()).group(1))
            run = peer_sh(HTTP_SERVER, SHOW_LISTENER, first_port=port)
        finally:
            squatter.terminate()
    assert run.returncode == 0, run.stderr
    assert int(re.search(r"127\.0\.0\.1:(\d+) ", run.stdout).group(1)) > port


def test_peer_sh_server_that_dies_is_named_with_its_stderr():
    run = peer_sh("sh -c 'echo cannot bind, sorry >&2; exit 3'", "true")
    assert run.returncode == 125
    assert re.search(r"^peer.sh: stand-in: server exited before listening on 127.0.0.1:\d+: ", run.stderr, re.M)
    assert "peer.sh: server: cannot bind, sorry" in run.stderr


def test_peer_sh_server_that_never_listens_is_stopped(tmp_path):
    pid_file = tmp_path / "server.pid"
    run = peer_sh(f"sh -c 'echo $$ > {pid_file}; exec sleep 60'", "true", listen_wait=1)
    assert run.returncode == 125 and "server did not listen on 127.0.0.1:" in run.stderr
    assert "within 1s" in run.stderr
    assert gone(int(pid_file.read_text()))


def test_peer_sh_hung_client_is_cut_and_the_server_stopped():
    run = peer_sh(HTTP_SERVER, SHOW_LISTENER + " && sleep 60", client_limit=1)
    assert run.returncode == 124 and "peer.sh: stand-in: client gave no result within 1s" in run.stderr
    assert gone(listener_pid(run.stdout))


def test_peer_sh_failing_client_keeps_its_status_and_shows_the_server():
    run = peer_sh(HTTP_SERVER, "echo broken >&2; exit 7")
    assert run.returncode == 7
    assert run.stderr.splitlines()[0] == "broken" and "peer.sh: server: Serving HTTP" in run.stderr
