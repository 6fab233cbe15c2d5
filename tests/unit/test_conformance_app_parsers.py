"""Applications through the redirect (lab/conformance/apps.py): the readers on outputs captured on the
host kernel 6.18 through the redirect (tests/unit/app_outputs/: nginx 1.22 + curl 7.88, redis 7.0,
scenarios/splice_proxy.py), the judging, and run_apps end to end with a stand-in target."""

import json
from pathlib import Path

import pytest

from lab import api
from lab.bench import peers
from lab.conformance import apps, defects
from lab.vm.target import Result, Target

OUTPUTS = Path(__file__).parent / "app_outputs"
NGINX_FILE_SHA256 = "c5e9fd550b89692b95dcc80d37cde35c67706efd4177ec2dcf5979c3cf557d1c"
SIZE = 64 << 20  # the captured nginx outputs served a file of this size
REDIS_REQUESTS = 100_000  # and the captured redis-benchmark made this many requests


@pytest.fixture(autouse=True)
def captured_sizes(monkeypatch):
    """The judging expects the sizes the lab uses today; the captures used these."""
    monkeypatch.setattr(apps, "NGINX_FILE_MIB", SIZE >> 20)
    monkeypatch.setattr(apps, "REDIS_REQUESTS", REDIS_REQUESTS)


def output(name: str) -> str:
    return (OUTPUTS / name).read_text()


# ----------------------------------------------------------------------------- readers

def test_sections_split_on_their_headers():
    assert apps.sections("noise\n### a\n1\n2\n### b\n### c\nx\n") == {"a": "1\n2", "b": "", "c": "x"}


def test_nginx_output_shows_three_bodies_intact_two_over_one_connection():
    observed = apps.observe_nginx(output("nginx-fetch.txt"), NGINX_FILE_SHA256)
    assert observed["checked"] == apps.nginx_expected(SIZE)
    assert observed["figures"]["body_sha256"] == [NGINX_FILE_SHA256] * 3
    assert observed["figures"]["client_ports"] == [49182, 49182, 49184]  # the slow reader: its own


def test_nginx_bodies_are_compared_with_the_served_file():
    checked = apps.observe_nginx(output("nginx-fetch.txt"), "0" * 64)["checked"]
    assert checked["bodies_match_file"] == [False] * 3


def test_curl_transfers_and_a_timed_out_fetch():
    assert apps.parse_curl_transfers("transfer 200 5 1 40000\ntransfer 000 0 0 0\n") == [
        {"status": 200, "bytes": 5, "new_connections": 1, "port": 40000},
        {"status": 0, "bytes": 0, "new_connections": 0, "port": 0}]
    # curl ran out of --max-time in the first transfer: one line, exit 28, one body missing.
    cut = ("### curl\ncurl: (28) Operation timed out\ntransfer 200 1048576 1 40000\n### curl-exit\n28\n"
           "### bodies\nsha256sum: /tmp/x/body1: No such file or directory\n### access-log\n### error-log\n")
    checked = apps.observe_nginx(cut, NGINX_FILE_SHA256)["checked"]
    assert checked["curl_exit"] == 28 and checked["http_status"] == [200]
    assert checked["bodies_match_file"] == [False] and checked["connections"] == 1
    assert checked["nginx_served"] == [] and checked["nginx_connections"] == 0


def test_nginx_access_log_and_errors():
    assert apps.parse_access_log("3 1 200 10\n3 2 404 153\ngarbage line\n") == [
        {"connection": 3, "request": 1, "status": 200, "bytes": 10},
        {"connection": 3, "request": 2, "status": 404, "bytes": 153}]
    text = output("nginx-fetch.txt") + "2026/12/02 10:00:00 [alert] 1#1: sendfile() failed\n"
    assert apps.observe_nginx(text, NGINX_FILE_SHA256)["checked"]["nginx_errors"] == [
        "2026/12/02 10:00:00 [alert] 1#1: sendfile() failed"]


def test_redis_output_shows_every_request_executed_and_the_values_read_back():
    observed = apps.observe_redis(output("redis-check.txt"))
    assert observed["checked"] == apps.redis_expected(REDIS_REQUESTS, 10_000)
    assert observed["figures"]["requests_per_second"] == {"SET": 2127659.75, "GET": 2127659.75}


def test_redis_readers():
    info = ("# Commandstats\r\ncmdstat_set:calls=7,usec=1,usec_per_call=0.1\r\n"
            "cmdstat_config|get:calls=2,usec=1\r\n")
    assert apps.parse_commandstats(info) == {"set": 7, "config|get": 2}
    assert apps.parse_pipe_summary("All data transferred.\nerrors: 3, replies: 10000\n") == {
        "errors": 3, "replies": 10000}
    assert apps.parse_pipe_summary("Error writing to the server: Connection reset by peer\n") is None
    assert apps.parse_digest_line("a" * 64 + " 12\n") == ("a" * 64, 12)
    assert apps.parse_digest_line(" 0\n") is None


def test_redis_broken_run_differs_where_it_broke():
    # redis-benchmark cut by its limit, the read-back short: every difference is visible.
    without_get = "\n".join(line for line in output("redis-check.txt").splitlines()
                            if not line.startswith('"GET"'))
    text = (without_get
            .replace("### benchmark-exit\n0", "### benchmark-exit\n124")
            .replace("cmdstat_get:calls=100000", "cmdstat_get:calls=99984")
            .replace("ef5a209fc21f947c3ec40c20a717bfcad82e0d2f26dba980d94fa5f61062daea 10000\n### readback",
                     "ef5a209fc21f947c3ec40c20a717bfcad82e0d2f26dba980d94fa5f61062daea 10000\n### readback\n"
                     "0000000000000000000000000000000000000000000000000000000000000000 9999\n### ignored"))
    checked = apps.observe_redis(text)["checked"]
    assert checked["benchmark_exit"] == 124 and checked["benchmark_tests"] == ["SET"]
    assert checked["server_calls"] == {"set": 100_000, "get": 99_984}
    assert checked["readback_values"] == 9999 and checked["readback_matches_written"] is False
    no_csv = apps.observe_redis("### benchmark\nCould not connect to Redis at 127.0.0.1:1\n")["checked"]
    assert no_csv["benchmark_tests"].startswith('redis-benchmark --csv output has no "test","rps" header')
    assert no_csv["pipe"] is None and no_csv["dbsize"] is None and no_csv["readback_matches_written"] is False


def test_splice_proxy_over_tcp_is_intact():
    observed = apps.observe_splice_proxy(output("splice-proxy-tcp.json"))
    assert observed["checked"] == apps.splice_proxy_expected(16 << 20)


def test_splice_proxy_through_the_redirect_lost_everything_silently():
    # Captured on the host: the proxy's splice read returned 0 (as at EOF) once the client's FIN came;
    # the client got an empty echo and a clean end.
    checked = apps.observe_splice_proxy(output("splice-proxy-redirect.json"))["checked"]
    assert checked["finished"] is True and checked["sent"] == 16 << 20 and checked["echoed"] == 0
    assert checked["upstream_received"] == 0 and checked["upstream_intact"] is False
    assert checked["proxy"]["client->upstream"] == {"spliced_in": 0, "spliced_out": 0, "state": "done"}


def test_splice_proxy_garbage_is_an_error_observation():
    assert apps.observe_splice_proxy("Traceback (most recent call last):\n  boom\n")["checked"] == {
        "error": "splice_proxy.py printed no JSON result: 'Traceback (most recent call last):\\n  boom'"}
    assert apps.last_json('noise\n{"finished": false}\n', "splice_proxy.py") == {"finished": False}


# ----------------------------------------------------------------------------- the splice-read symptom

def hung_proxy() -> dict:
    """The other face of the defect: the proxy blocked in splice(2) until the client's deadline."""
    doc = json.loads(output("splice-proxy-redirect.json"))
    doc.update(finished=False, seconds=20.0, upstream=None)
    doc["proxy"] = [{"name": "client->upstream", "spliced_in": 0, "spliced_out": 0, "state": "reading"}]
    return apps.observe_splice_proxy(json.dumps(doc))["checked"]


def test_splice_read_symptom_both_faces():
    returned_zero = apps.observe_splice_proxy(output("splice-proxy-redirect.json"))["checked"]
    assert apps.splice_read_defect(returned_zero, "6.18.14") is defects.by_name("splice-read")
    assert apps.splice_read_defect(hung_proxy(), "5.10.240") is defects.by_name("splice-read")


def test_other_differences_are_not_the_splice_read_defect():
    partial = hung_proxy()
    partial["proxy"]["client->upstream"]["spliced_in"] = 65536
    assert apps.splice_read_defect(partial, "6.18.14") is None
    echoed_anyway = apps.observe_splice_proxy(output("splice-proxy-redirect.json"))["checked"]
    echoed_anyway["echoed"] = 100
    assert apps.splice_read_defect(echoed_anyway, "6.18.14") is None
    assert apps.splice_read_defect(hung_proxy(), "4.19.0") is None   # before tcp_bpf_recvmsg existed
    assert apps.splice_read_defect({"error": "no JSON"}, "6.18.14") is None


# ----------------------------------------------------------------------------- judging

COUNTERS = {"inserted_v4": 2, "inserted_v6": 0, "inserted_v4mapped": 0, "bytes_redirected": 201327592,
            "msgs_missed": 0}


def results(app: apps.App, tcp_checked: dict, redirect_checked: dict, counters=COUNTERS, release="6.1.176",
            transport="redirect", watch=None, seconds=(2.0, 2.0), patches=frozenset()):
    tcp = apps.AppResult("6.1", app.name, "tcp", "pass", {"checked": tcp_checked, "figures": {}}, app.expected,
                         seconds=seconds[0])
    apps.judge_tcp(tcp)
    redirect = apps.AppResult("6.1", app.name, transport, "pass",
                              {"checked": redirect_checked, "figures": {}, "redirect_counters": counters,
                               "watch_counters": watch}, {}, seconds=seconds[1])
    apps.judge_through(app, redirect, tcp, release, patches)
    return tcp, redirect


def _nginx_as_captured() -> apps.App:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(apps, "NGINX_FILE_MIB", SIZE >> 20)
        return apps.nginx_app(NGINX_FILE_SHA256)


NGINX = _nginx_as_captured()


def test_same_as_tcp_and_carried_by_the_redirect_passes():
    good = apps.nginx_expected(SIZE)
    tcp, redirect = results(NGINX, good, dict(good))
    assert (tcp.status, redirect.status, redirect.reason) == ("pass", "pass", "")
    assert redirect.expected == good


def test_a_difference_from_tcp_fails_and_says_what_differs():
    bad = dict(apps.nginx_expected(SIZE), connections=3)
    _, redirect = results(NGINX, apps.nginx_expected(SIZE), bad)
    assert redirect.status == "fail"
    assert redirect.reason == ("differs from plain TCP on the same kernel; no known kernel defect explains "
                               "it: connections: 3, expected 2")


def test_a_failed_reference_fails_the_app_as_a_set_up_problem():
    broken = dict(apps.nginx_expected(SIZE), curl_exit=7)
    tcp, redirect = results(NGINX, broken, apps.nginx_expected(SIZE))
    assert tcp.status == "fail" and "set-up problem" in tcp.reason and "curl_exit: 7, expected 0" in tcp.reason
    assert redirect.status == "fail" and redirect.reason.startswith("the reference run over plain TCP failed: ")


def test_a_run_the_redirect_did_not_carry_fails():
    good = apps.nginx_expected(SIZE)
    _, redirect = results(NGINX, good, dict(good), counters=dict(COUNTERS, bytes_redirected=1000))
    assert redirect.status == "fail"
    assert redirect.reason == ("the redirect's counters do not show it carried this run: 2 sockets inserted "
                               "(at least 2 expected), 1000 bytes redirected for 201326592 bytes the "
                               "application moved")


def test_the_same_bytes_in_more_than_twice_plain_tcps_time_is_a_stall():
    good = apps.nginx_expected(SIZE)
    assert results(NGINX, good, dict(good), seconds=(2.0, 4.9))[1].status == "pass"
    _, slow = results(NGINX, good, dict(good), seconds=(2.0, 5.2))
    assert slow.status == "fail" and slow.reason.startswith("stalled: 5.2 s against plain TCP's 2.0 s")


PASSED = {"msgs_passed": 4000, "bytes_passed": 201327592, "skbs_passed": 0, "skb_bytes": 0}
WATCHED = dict(COUNTERS, bytes_redirected=0)


def test_a_passthrough_run_is_judged_by_the_watching_programs_counters():
    good = apps.nginx_expected(SIZE)
    _, passed = results(NGINX, good, dict(good), counters=WATCHED, transport="passthrough", watch=PASSED)
    assert (passed.status, passed.reason) == ("pass", "")
    for counters, watch in ((WATCHED, dict(PASSED, bytes_passed=0)), (COUNTERS, PASSED)):
        _, missed = results(NGINX, good, dict(good), counters=counters, transport="passthrough", watch=watch)
        assert missed.status == "fail" and missed.reason.startswith("the watching programs' counters do not show")
    # the splice-read defect is the redirect's: a passthrough run that loses the data fails
    proxy = apps.splice_proxy_app()
    lost = apps.observe_splice_proxy(output("splice-proxy-redirect.json"))["checked"]
    _, passed = results(proxy, proxy.expected, lost, counters=WATCHED, transport="passthrough",
                        watch=dict(PASSED, bytes_passed=16 << 20))
    assert passed.status == "fail"


def test_the_runtimes_http_clients_report_every_body_intact_over_one_connection():
    for name, requests, size in (("go_http", apps.GO_HTTP_REQUESTS, apps.GO_HTTP_BYTES),
                                 ("node_http", apps.NODE_HTTP_REQUESTS, apps.NODE_HTTP_BYTES)):
        checked = apps.observe_json_client(output(f"{name}-tcp.txt"), name, apps.HTTP_CLIENT_FIELDS)["checked"]
        assert checked == apps.http_client_expected(requests, size)
    broken = apps.observe_json_client('{"statuses": [200], "intact": [false], "bytes": 5, "connections": 2, '
                                      '"error": "GET /body #2: EOF"}', "x", apps.HTTP_CLIENT_FIELDS)["checked"]
    assert broken["error"] == "GET /body #2: EOF" and broken != apps.http_client_expected(1, 5)
    assert apps.observe_json_client("panic: boom", "goapps http-client",
                                    apps.HTTP_CLIENT_FIELDS)["checked"]["error"].startswith(
        "goapps http-client printed no JSON result")


def test_go_io_copy_meeting_splice_read_is_its_named_xfail_and_nothing_else_is():
    proxy = apps.go_proxy_app()
    tcp = proxy.observe(output("go_proxy-tcp.txt"))["checked"]
    assert tcp == apps.go_proxy_expected(apps.GO_PROXY_BYTES)
    lost = proxy.observe(output("go_proxy-redirect.txt"))["checked"]   # the host, 6.18.44: EOF at once
    assert apps.go_splice_read_defect(lost, "6.18.44").name == "splice-read"
    hung = dict(lost, finished=False, proxy={"client_to_upstream": {"copied": 0, "done": False},
                                             "upstream_to_client": {"copied": 0, "done": False}})
    assert apps.go_splice_read_defect(hung, "6.1.176").name == "splice-read"
    for near_miss in (dict(lost, echoed=5), dict(lost, sent=0), tcp,
                      dict(lost, proxy={"client_to_upstream": {"copied": 7, "done": True}})):
        assert apps.go_splice_read_defect(near_miss, "6.18.44") is None
    assert apps.go_splice_read_defect(lost, "4.19.0") is None   # before tcp_bpf_recvmsg existed
    app = apps.go_proxy_app()
    _, redirect = results(app, app.expected, lost, counters=dict(COUNTERS, bytes_redirected=16 << 20))
    assert redirect.status == "xfail" and redirect.reason == defects.by_name("splice-read").describe()


def test_splice_read_symptom_is_an_xfail_naming_the_defect():
    proxy = apps.splice_proxy_app()
    lost = apps.observe_splice_proxy(output("splice-proxy-redirect.json"))["checked"]
    _, redirect = results(proxy, proxy.expected, lost, counters=dict(COUNTERS, bytes_redirected=16 << 20))
    assert redirect.status == "xfail"
    assert redirect.reason == defects.by_name("splice-read").describe()
    # On a kernel built with the defect's kernel-fixes/ patch the symptom is a failure, not the defect.
    _, patched = results(proxy, proxy.expected, lost, counters=dict(COUNTERS, bytes_redirected=16 << 20),
                         patches=frozenset({defects.SPLICE_FIX}))
    assert patched.status == "fail"
    # The same symptom in another app is not this defect.
    redis = apps.redis_app()
    _, redirect = results(redis, redis.expected, dict(redis.expected, dbsize=0),
                          counters=dict(COUNTERS, bytes_redirected=1 << 30))
    assert redirect.status == "fail"


# ----------------------------------------------------------------------------- run_apps, stand-in target

class FakeTarget(Target):
    """A 6.1 guest that has every binary and answers the few commands run_apps makes itself."""

    name = "fake"

    def __init__(self, missing=()):
        super().__init__()
        self.missing = set(missing)
        self.commands = []

    def _run(self, cmd, timeout, input):
        self.commands.append(cmd)
        if cmd.startswith("command -v "):
            return Result(cmd, 1 if cmd.split()[-1] in self.missing else 0, "", "")
        if cmd == "cat /proc/version":
            return Result(cmd, 0, "Linux version 6.1.0-50-amd64 (gcc-12 (Debian 12.2.0-14)) "
                                  "Debian 6.1.176-1\n", "")
        if cmd.startswith("sha256sum "):
            return Result(cmd, 0, f"{NGINX_FILE_SHA256}  {cmd.split()[-1]}\n", "")
        return Result(cmd, 0, "", "")

    def put(self, local, remote):
        pass


CAPTURED = {"nginx": "nginx-fetch.txt", "redis": "redis-check.txt", "go_http": "go_http-tcp.txt",
            "go_proxy": "go_proxy-tcp.txt", "node_http": "node_http-tcp.txt"}


def fake_runs(monkeypatch, answer):
    """peer.sh runs answered by ``answer(app, cgroup) -> Result``; the redirect's counters grow by a
    fixed step per status read, as if each redirect run carried 1 GiB over one connection."""
    calls = []
    reads = [0]

    def run_peer_script(target, name, server, client, client_limit, cgroup):
        calls.append((name, cgroup))
        return answer(name, cgroup)

    def redirect_status(target, cgroup):
        reads[0] += 1
        watching = cgroup == "watching"  # the passthrough cgroup: its program passes, never redirects
        return {"counters": {"inserted_v4": 2 * reads[0], "inserted_v6": 0, "inserted_v4mapped": 0,
                             "bytes_redirected": 0 if watching else reads[0] << 30, "msgs_missed": 0},
                "watch": {"msgs_passed": reads[0], "bytes_passed": reads[0] << 30} if watching else None}

    monkeypatch.setattr(peers, "run_peer_script", run_peer_script)
    monkeypatch.setattr(api, "redirect_status", redirect_status)
    return calls


def captured(name: str, cgroup: str) -> Result:
    if name in ("splice_proxy", "go_proxy") and cgroup == "fast":  # the redirect: splice-read
        return Result("", 0, output({"splice_proxy": "splice-proxy-redirect.json",
                                     "go_proxy": "go_proxy-redirect.txt"}[name]), "")
    if name == "splice_proxy":
        return Result("", 0, output("splice-proxy-tcp.json"), "")
    return Result("", 0, output(CAPTURED[name]), "")


def test_run_apps_records_every_app_over_tcp_then_the_redirect(monkeypatch):
    calls = fake_runs(monkeypatch, captured)
    target = FakeTarget()
    records = apps.run_apps(target, "plain", "fast", "6.1", progress=lambda _: None)
    assert calls == [(name, cgroup) for name in apps.APPS for cgroup in ("plain", "fast")]
    assert [(r["app"], r["transport"], r["status"]) for r in records] == [
        ("nginx", "tcp", "pass"), ("nginx", "redirect", "pass"), ("redis", "tcp", "pass"),
        ("redis", "redirect", "pass"), ("splice_proxy", "tcp", "pass"), ("splice_proxy", "redirect", "xfail"),
        ("go_http", "tcp", "pass"), ("go_http", "redirect", "pass"), ("go_proxy", "tcp", "pass"),
        ("go_proxy", "redirect", "xfail"), ("node_http", "tcp", "pass"), ("node_http", "redirect", "pass")]
    assert set(records[0]) == {"kernel", "app", "transport", "status", "observed", "expected", "reason",
                               "seconds"}
    assert records[1]["observed"]["redirect_counters"]["bytes_redirected"] == 1 << 30
    assert apps.verdict(records, "splice_proxy")["reason"].startswith("kernel defect splice-read: ")
    assert target.commands[-1] == f"rm -rf {apps.SERVED_DIR}"


def test_run_apps_adds_the_passthrough_transport_when_given_its_cgroup(monkeypatch):
    calls = fake_runs(monkeypatch, lambda name, cgroup: captured(name, "plain" if cgroup == "watching" else cgroup))
    records = apps.run_apps(FakeTarget(), "plain", "fast", "6.1", progress=lambda _: None,
                            passthrough_cgroup="watching")
    assert calls == [(name, cgroup) for name in apps.APPS for cgroup in ("plain", "fast", "watching")]
    passthrough = [r for r in records if r["transport"] == "passthrough"]
    assert [(r["app"], r["status"]) for r in passthrough] == [(name, "pass") for name in apps.APPS]
    assert passthrough[0]["observed"]["watch_counters"]["bytes_passed"] == 1 << 30


def test_a_run_peer_sh_had_to_cut_is_a_difference(monkeypatch):
    def answer(name, cgroup):
        if cgroup == "fast":
            return Result("", 124, "### curl\n", "peer.sh: nginx: client gave no result within 90s: sh x\n")
        return captured(name, cgroup)

    fake_runs(monkeypatch, answer)
    record = apps.verdict(apps.run_apps(FakeTarget(), "plain", "fast", "6.1", apps=("nginx",),
                                        progress=lambda _: None), "nginx")
    assert record["status"] == "fail"
    assert record["observed"]["checked"]["peer.sh"] == "nginx: client gave no result within 90s: sh x"


def test_a_missing_binary_fails_both_runs_and_runs_nothing(monkeypatch):
    calls = fake_runs(monkeypatch, lambda name, cgroup: pytest.fail("nothing should run"))
    records = apps.run_apps(FakeTarget(missing={"curl"}), "plain", "fast", "6.1", apps=("nginx",),
                            progress=lambda _: None)
    assert not calls and [r["status"] for r in records] == ["fail", "fail"]
    assert records[0]["reason"] == ("curl is not installed on fake; add curl to images/rootfs.toml (guests) "
                                    "or scripts/debian-packages.txt (host)")
    assert records[1]["reason"] == f"the reference run over plain TCP failed: {records[0]['reason']}"


def test_unknown_app_is_refused():
    with pytest.raises(apps.LabError, match="unknown app.s. haproxy; the apps are nginx, redis, splice_proxy, go_http"):
        apps.run_apps(FakeTarget(), "plain", "fast", "6.1", apps=("haproxy",))
