"""``sockredir-lab report``: JUnit XML of separate runs merged into one kernel x test report
(lab.matrix.junit, lab.matrix.report), on small runs written the way pytest and the plugin write
them (tests/unit/junit_samples)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from lab import LabError
from lab.cli import main as cli_main
from lab.kernel.catalog import split_test_name
from lab.matrix import junit, report

SAMPLES = Path(__file__).parent / "junit_samples"


@pytest.mark.parametrize("name, expected", [
    ("test_x[kernel_6_1-seed]", ("test_x[seed]", "kernel_6_1")),
    ("test_x[seed-kernel_host]", ("test_x[seed]", "kernel_host")),
    ("test_x[kernel_5_10]", ("test_x", "kernel_5_10")),
    ("test_x[v4mapped-kernel_7_2-client-inserted2]", ("test_x[v4mapped-client-inserted2]", "kernel_7_2")),
    ("test_x[a-b]", ("test_x[a-b]", None)),
    ("test_x", ("test_x", None)),
])
def test_the_kernel_is_split_from_the_other_parameters(name, expected):
    assert split_test_name(name) == expected


def test_kernel_ids_come_back_with_their_dots():
    assert junit.kernel_id_of("kernel_6_12") == "6.12"
    assert junit.kernel_id_of("kernel_host") == "host"


def test_each_outcome_is_read_with_its_reason():
    by_test = {(o.module, o.test, o.kernel): o for o in junit.parse(SAMPLES / "run_6_1.xml")}
    redirect = "tests.integration.test_redirect"
    assert by_test[(redirect, "test_two_entries[seed]", "6.1")].status == "pass"
    failed = by_test[(redirect, "test_two_entries[production]", "6.1")]
    assert (failed.status, failed.reason) == ("fail", "AssertionError: 3 entries, expected 2")
    assert by_test[(redirect, "test_guest_died", "6.1")].status == "error"
    xfail = by_test[("tests.integration.test_conformance", "test_fionread[redirected]", "6.1")]
    assert xfail.status == "xfail" and "929e30f93125" in xfail.reason
    assert by_test[("tests.integration.test_api", "test_api", "5.15")].reason == "kernel 5.15 image not provided"
    # A run of the plugin names its kernel tests: a unit test's kernel-like parameter is no kernel.
    assert by_test[("tests.unit.test_catalog", "test_test_ids[6.1-rc2-kernel_6_1_rc2]", junit.NO_KERNEL)]
    assert by_test[("tests.unit.test_cache", "test_lock", junit.NO_KERNEL)].status == "skip"


def test_a_run_without_the_plugins_properties_is_read_from_the_test_ids():
    outcomes = {(o.test, o.kernel) for o in junit.parse(SAMPLES / "old_style.xml")}
    assert outcomes == {("test_bulk[ipv6-client]", "host"), ("test_keys", junit.NO_KERNEL)}


def test_two_runs_on_different_days_merge_into_one_table_the_newest_wins():
    merged = report.collect([SAMPLES / "run_6_1.xml", SAMPLES / "run_7_2.xml"])
    assert merged.kernels == ["5.15", "6.1", "7.2", junit.NO_KERNEL]
    tests = merged.rows()["tests.integration.test_redirect"]
    assert tests["test_two_entries[seed]"]["6.1"].status == "pass"
    assert tests["test_two_entries[seed]"]["7.2"].status == "pass"
    # run_7_2 (2026-12-03) ran production on 6.1 again and it passed: the newer outcome is the cell
    assert tests["test_two_entries[production]"]["6.1"].status == "pass"
    assert merged.totals() == {"fail": 0, "error": 1, "xpass": 0, "xfail": 1, "skip": 2, "pass": 4}
    assert merged.failed


def test_the_files_agree_with_the_runs(tmp_path):
    merged = report.collect([SAMPLES])
    written = report.write(merged, tmp_path)
    doc = json.loads(written["json"].read_text())
    cells = {(row["test"], kernel): cell["status"] for row in doc["rows"] for kernel, cell in row["cells"].items()}
    assert cells[("test_guest_died", "6.1")] == "error"
    assert cells[("test_fionread[redirected]", "6.1")] == "xfail"
    assert doc["totals"]["pass"] == sum(1 for status in cells.values() if status == "pass")
    markdown = written["md"].read_text()
    assert "| `test_guest_died` |" in markdown and "ERROR [" in markdown
    assert "kernel 5.15 image not provided" in markdown  # the reason as a footnote
    page = written["html"].read_text()
    assert page.count('data-status="error"') == 1 and 'title="ERROR: failed on setup' in page
    assert "<script" not in page and "http" not in page  # self-contained


def test_artifacts_moved_with_the_runs_are_linked(tmp_path):
    runs = tmp_path / "downloaded"
    runs.mkdir()
    shutil.copy(SAMPLES / "run_6_1.xml", runs / "junit.xml")
    moved = runs / "artifacts" / "run-a" / "tests" / "tests_integration_test_redirect.py_test_two_entries[kernel_6_1-seed]"
    moved.mkdir(parents=True)
    merged = report.collect([runs])
    written = report.write(merged, tmp_path / "out")
    link = "../downloaded/artifacts/run-a/tests/tests_integration_test_redirect.py_test_two_entries[kernel_6_1-seed]"
    assert f"[pass]({link})" in written["md"].read_text()
    assert f'<a href="{link}">pass</a>' in written["html"].read_text()


def test_bad_input_is_named(tmp_path):
    (tmp_path / "broken.xml").write_text("<testsuite><testcase")
    with pytest.raises(LabError, match="broken.xml: not a readable JUnit XML"):
        report.collect([tmp_path / "broken.xml"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(LabError, match="no JUnit XML file or suite.json under"):
        report.collect([tmp_path / "empty"])
    with pytest.raises(LabError, match="no such file"):
        report.collect([tmp_path / "missing"])


def test_the_command_writes_the_report_and_fails_on_failed_cells(tmp_path, capsys):
    assert cli_main(["report", str(SAMPLES / "run_7_2.xml"), "--out", str(tmp_path)]) == 0
    assert cli_main(["report", str(SAMPLES), "--out", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "3 run(s)" in out and (tmp_path / "report.html").exists()


SUITE_RUN = [
    {"kernel": "6.1", "release": "6.1.0-50-cloud-amd64", "error": None, "unavailable": None,
     "splats": [], "seconds": 70.2,
     "verdicts": [{"scenario": "bulk", "status": "pass", "reason": None, "failures": [], "seconds": 4.1},
                  {"scenario": "echo-ipv6", "status": "fail", "reason": None, "seconds": 3.0,
                   "failures": ["map entries: got 0, expected 2", "bypass ratio 0.1"]},
                  {"scenario": "netns", "status": "gated", "reason": "no bpf_get_netns_cookie",
                   "failures": [], "seconds": 0},
                  {"scenario": "outside-client", "status": "xfail", "reason": "kernel defect blocking-eagain",
                   "failures": ["server: recv: EAGAIN"], "seconds": 17.0}]},
    {"kernel": "5.15", "release": "", "error": None, "unavailable": "kernel 5.15 image not provided",
     "splats": [], "seconds": 0, "verdicts": []},
    {"kernel": "7.2", "release": "", "error": "guest did not boot: the kernel panicked",
     "unavailable": None, "splats": [], "seconds": 20, "verdicts": []},
]


def test_the_suites_own_json_merges_with_junit(tmp_path):
    # `sockredir-lab main/suite` runs write suite.json: its verdicts become rows of their own
    # beside pytest's, each kernel with a "kernel run" row (error, not provided, splat).
    suite_dir = tmp_path / "suite-run"
    (suite_dir / "kernel_6_1" / "scenarios").mkdir(parents=True)
    (suite_dir / "suite.json").write_text(json.dumps(SUITE_RUN))
    (suite_dir / "kernel_6_1" / "tests" / "x").mkdir(parents=True)  # a test's own material: not a run
    (suite_dir / "kernel_6_1" / "tests" / "x" / "suite.json").write_text("[]")
    merged = report.collect([suite_dir, SAMPLES / "run_7_2.xml"])
    assert merged.runs[0] == str(suite_dir / "suite.json") and len(merged.runs) == 2
    cells = {(o.test, o.kernel): (o.status, o.reason) for o in merged.outcomes.values()
             if o.module == "sockredir-lab suite"}
    assert cells == {
        ("kernel run", "6.1"): ("pass", ""),
        ("bulk", "6.1"): ("pass", ""),
        ("echo-ipv6", "6.1"): ("fail", "map entries: got 0, expected 2; bypass ratio 0.1"),
        ("netns", "6.1"): ("skip", "no bpf_get_netns_cookie"),
        ("outside-client", "6.1"): ("xfail", "kernel defect blocking-eagain"),
        ("kernel run", "5.15"): ("skip", "kernel 5.15 image not provided"),
        ("kernel run", "7.2"): ("error", "guest did not boot: the kernel panicked")}
    bulk = next(o for o in merged.outcomes.values() if o.test == "bulk")
    assert bulk.artifacts == str(suite_dir / "kernel_6_1" / "scenarios")
    assert merged.failed and "7.2" in merged.kernels and "5.15" in merged.kernels
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "suite.json").write_text('{"not": "a list"}')
    with pytest.raises(LabError, match="not a suite.json of sockredir-lab"):
        report.collect([tmp_path / "bad"])


XPASS_TESTS = '''
import pytest

def test_always(request):
    request.node.add_marker(pytest.mark.xfail(reason="defect table says so", strict=True))

def test_sometimes(request):
    request.node.add_marker(pytest.mark.xfail(reason="intermittent defect", strict=False))

@pytest.mark.xfail(reason="shows")
def test_shows():
    assert False
'''


def test_an_xpass_is_its_own_state_from_pytests_junit_and_a_strict_one_fails(pytester):
    """JUnit has no XPASS: pytest writes a strict one as a failure and a non-strict one as a pass.
    The plugin's property tells the report; a strict xpass fails it, a non-strict one does not."""
    pytester.makepyfile(test_xpass=XPASS_TESTS)
    run = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--junitxml=out.xml")
    run.assert_outcomes(failed=1, xpassed=1, xfailed=1)
    outcomes = {o.test: o for o in junit.parse(pytester.path / "out.xml")}
    assert outcomes["test_always"].status == "xpass" and outcomes["test_always"].reason.startswith("strict")
    assert outcomes["test_sometimes"].status == "xpass" and outcomes["test_sometimes"].reason.startswith("non-strict")
    assert outcomes["test_always"].strict and not outcomes["test_sometimes"].strict
    assert outcomes["test_shows"].status == "xfail"
    merged = report.collect([pytester.path / "out.xml"])
    assert merged.totals()["xpass"] == 2 and merged.failed
    assert not report.failing(outcomes["test_sometimes"]) and report.failing(outcomes["test_always"])
