"""``sockredir-lab matrix``: each kernel its own pytest run, then the merged report. Here on a small
project of its own whose tests take the ``kernel`` fixture on the host (no guest: the fixture's
host column needs none), so the whole command runs in seconds; tests/integration/test_matrix.py
runs it with a guest."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lab.matrix import events
from lab.matrix import run as matrix_run

PROJECT = '''
import pytest

def test_the_kernel_column(kernel):
    assert kernel.id == "host"

@pytest.mark.parametrize("size", [1, 64])
def test_sizes(kernel, size):
    assert size != 64, "a failure the report must show"

def test_no_kernel():
    pass
'''


def test_the_kernels_keyword_is_combined_with_the_users():
    assert matrix_run.keyword("6.1", ["-x"]) == ("kernel_6_1", ["-x"])
    assert matrix_run.keyword("host", ["-k", "smoke", "-x"]) == ("kernel_host and (smoke)", ["-x"])
    assert matrix_run.keyword("7.2", ["-kredirect"]) == ("kernel_7_2 and (redirect)", [])


def test_each_run_has_its_own_report_and_artifacts(tmp_path):
    (run,) = matrix_run.plan(["6.12"], tmp_path, ["tests/integration/test_smoke.py"], 1)
    assert run.argv[run.argv.index("--kernel") + 1] == "6.12"
    assert f"--junitxml={tmp_path / '6.12' / 'junit.xml'}" in run.argv
    assert f"--artifacts={tmp_path / '6.12' / 'artifacts'}" in run.argv
    assert run.argv[-1] == "tests/integration/test_smoke.py"


def test_guests_get_their_share_of_the_cpus_unless_the_user_says():
    (run,) = matrix_run.plan(["6.12"], Path("/nonexistent"), [], 1)
    assert "--guest-cpus=1" in run.argv
    (run,) = matrix_run.plan(["6.12"], Path("/nonexistent"), ["--guest-cpus", "2"], 1)
    # pytest keeps an option's last value: the user's, which comes after the matrix's
    assert run.argv.index("--guest-cpus=1") < run.argv.index("--guest-cpus")


@pytest.mark.skipif(os.geteuid() != 0, reason="the host column needs root (the plugin's kernel_host)")
def test_the_command_runs_the_matrix_and_writes_the_report(tmp_path):
    (tmp_path / "test_project.py").write_text(PROJECT)
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "lab.cli", "matrix", "--kernel", "host", "-j", "1",
                           "--out", str(out)], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stdout + done.stderr  # one test failed
    assert "host: started (pid " in done.stderr
    assert "host: FAIL test_project.py::test_sizes[kernel_host-64]" in done.stderr
    assert "host: finished: 3/3 done, exit 1, 1 fail, 2 pass" in done.stderr
    doc = json.loads((out / "report.json").read_text())
    assert doc["kernels"] == ["host"]  # the test without a kernel is not the matrix's
    cells = {row["test"]: row["cells"]["host"]["status"] for row in doc["rows"]}
    assert cells == {"test_the_kernel_column": "pass", "test_sizes[1]": "pass", "test_sizes[64]": "fail"}
    assert (out / "host" / "pytest.log").read_text().count("PASSED") == 2
    assert (out / "report.html").exists() and (out / "report.md").exists()


def test_an_unknown_kernel_is_refused_before_any_run(tmp_path):
    done = subprocess.run([sys.executable, "-m", "lab.cli", "matrix", "--kernel", "9.9", "--out",
                           str(tmp_path)], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--kernel 9.9: not in the catalog" in done.stderr
    assert not list(Path(tmp_path).iterdir())


def test_the_host_runs_beside_the_guests():
    # -j counts guests: the host's run boots none, so it starts at once instead of waiting for a
    # guest slot (at the end it would run alone on an idle machine).
    runs = matrix_run.plan(["5.10", "6.1", "host"], Path("/nonexistent"), [], 1)
    guest_510, guest_61, host = runs
    assert matrix_run._next_startable(runs, [], 1) is guest_510
    assert matrix_run._next_startable([guest_61, host], [guest_510], 1) is host
    assert matrix_run._next_startable([guest_61], [guest_510, host], 1) is None
    assert matrix_run._next_startable([guest_61], [host], 1) is guest_61


EVENTS_PROJECT = '''
import pytest

@pytest.fixture
def breaks_at_teardown():
    yield
    raise RuntimeError("teardown")

def test_pass():
    pass

def test_fail():
    assert False

@pytest.mark.skip(reason="why")
def test_skip():
    pass

@pytest.mark.xfail(reason="a defect", strict=False)
def test_xfail():
    assert False

@pytest.mark.xfail(reason="a defect", strict=False)
def test_xpass():
    pass

def test_teardown_error(breaks_at_teardown):
    pass
'''


@pytest.mark.parametrize("xdist", [[], ["-n", "2"]], ids=["serial", "xdist"])
def test_the_plugin_reports_typed_events_on_the_fd_it_is_given(tmp_path, xdist):
    (tmp_path / "test_events.py").write_text(EVENTS_PROJECT)
    read_end, write_end = os.pipe()
    proc = subprocess.Popen([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", *xdist,
                             f"--progress-fd={write_end}", "test_events.py"], cwd=tmp_path,
                            pass_fds=(write_end,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(write_end)
    with os.fdopen(read_end) as stream:
        received = [events.parse(line) for line in stream]
    assert proc.wait(timeout=120) == 1
    assert received[0] == events.Selected(6)
    statuses = sorted((e.nodeid.split("::")[1], e.status) for e in received[1:])
    assert statuses == [("test_fail", "fail"), ("test_pass", "pass"), ("test_skip", "skip"),
                        ("test_teardown_error", "error"), ("test_teardown_error", "pass"),
                        ("test_xfail", "xfail"), ("test_xpass", "xpass")]


def test_lines_that_are_not_events_are_ignored():
    assert events.parse('{"event": "result", "nodeid": "t.py::x", "status": "pass"}') == events.Result("t.py::x", "pass")
    assert events.parse("collected 3 items") is None
    assert events.parse('{"event": "result", "nodeid": "t.py::x", "status": "PASSED"}') is None
    assert events.parse('{"event": "later", "what": 1}') is None and events.parse("[]") is None
