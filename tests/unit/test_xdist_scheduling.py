"""pytest-xdist with the lab's plugin: one kernel's tests run on one worker (lab/pytest_xdist.py),
proven with a real `pytest -n 3` run whose tests record the worker that ran them."""

from __future__ import annotations

import pytest

from lab.pytest_xdist import scope_of

INNER = """
import os
import pytest

# ids as the plugin's kernel parameter makes them: kernel_a, kernel_b, kernel_c
@pytest.mark.parametrize("name", ["a", "b", "c"], ids=lambda k: f"kernel_{k}")
@pytest.mark.parametrize("case", range(6))
def test_case(name, case):
    with open(os.path.join(os.environ["RECORDS"], f"kernel_{name}-{case}"), "w") as record:
        record.write(os.environ["PYTEST_XDIST_WORKER"])

@pytest.mark.parametrize("case", range(6))
def test_free(case):
    pass
"""


@pytest.mark.parametrize("nodeid, scope", [
    ("t.py::test_x[kernel_6_1]", "kernel_6_1"),
    ("t.py::test_x[kernel_6_1-seed]", "kernel_6_1"),
    ("t.py::test_x[seed-kernel_host]", "kernel_host"),
    ("t.py::test_x[v4mapped-kernel_7_2-client]", "kernel_7_2"),
    ("t.py::test_x[seed]", "t.py::test_x[seed]"),
    ("t.py::test_y", "t.py::test_y"),
])
def test_kernel_tests_share_their_kernels_scope(nodeid, scope):
    assert scope_of(nodeid) == scope


def test_each_kernel_runs_on_one_worker(pytester, tmp_path, monkeypatch):
    records = tmp_path / "records"
    records.mkdir()
    monkeypatch.setenv("RECORDS", str(records))
    pytester.makepyfile(test_inner=INNER)
    result = pytester.runpytest_subprocess("-n", "3", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=24)
    workers: dict[str, set[str]] = {}
    for record in records.iterdir():
        workers.setdefault(record.name.split("-")[0], set()).add(record.read_text())
    assert sorted(workers) == ["kernel_a", "kernel_b", "kernel_c"]
    assert all(len(ran_on) == 1 for ran_on in workers.values()), workers
