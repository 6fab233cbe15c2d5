"""conformance --compare: which cells a kernel fix flipped, and nothing else."""

from __future__ import annotations

import json

import pytest

from lab import LabError
from lab.conformance import compare, defects


def cell(behaviour, situation, status, observed, kernel="6.12-src"):
    return {"kernel": kernel, "behaviour": behaviour, "situation": situation, "status": status,
            "observed": observed}


def test_only_cells_whose_status_or_observation_moved_are_listed():
    stock = [cell("msg_waitall", "redirected", "xfail", {"returned": 1024}),
             cell("fionread", "redirected", "pass", {"fionread": 1024}),
             cell("splice_from_socket", "redirected", "xfail", {"hung": "5 s"})]
    fixed = [cell("msg_waitall", "redirected", "pass", {"returned": 4096}, "6.12-fix"),
             cell("fionread", "redirected", "pass", {"fionread": 1024}, "6.12-fix"),
             cell("splice_from_socket", "redirected", "xfail", {"hung": "5 s"}, "6.12-fix"),
             cell("new_probe", "plain", "pass", {}, "6.12-fix")]
    found = compare.differences(stock, fixed)
    assert [(d.behaviour, d.a_status, d.b_status) for d in found] == [
        ("msg_waitall", "xfail", "pass"), ("new_probe", None, "pass")]
    text = compare.format_differences("6.12-src", "6.12-fix", found, 4)
    assert text.startswith("6.12-src -> 6.12-fix: 2 of 4 cells differ")
    assert "{'returned': 4096}" in text


def test_a_side_is_one_kernels_document(tmp_path):
    one = tmp_path / "one.json"
    one.write_text(json.dumps({"results": [cell("fionread", "plain", "pass", {})]}))
    assert compare.read_side(one)[0] == "6.12-src"
    two = tmp_path / "two.json"
    two.write_text(json.dumps({"results": [cell("fionread", "plain", "pass", {}),
                                           cell("fionread", "plain", "pass", {}, "7.2")]}))
    with pytest.raises(LabError, match="holds the matrices of 6.12-src, 7.2"):
        compare.read_side(two)
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    with pytest.raises(LabError, match="not a conformance document"):
        compare.read_side(bad)


FIX = compare.fixed_between(frozenset(), frozenset({defects.WAITALL_FIX}), defects.KNOWN)


def test_the_fixed_defects_are_those_only_b_is_patched_for():
    assert [d.name for d in FIX] == ["waitall-ignored"]
    both = frozenset({defects.WAITALL_FIX})
    assert compare.fixed_between(both, both, defects.KNOWN) == []


def test_a_fix_is_proven_by_its_cell_flipping_and_nothing_else():
    stock = [cell("msg_waitall", "redirected", "xfail", {"returned": 1024}),
             cell("blocking_recv_stream", "redirected", "xfail", {"result": "EAGAIN"}),
             cell("fionread", "redirected", "pass", {"fionread": 1024})]
    fixed = [cell("msg_waitall", "redirected", "pass", {"returned": 4096}, "6.12-fix"),
             cell("blocking_recv_stream", "redirected", "xpass", {"result": "ok"}, "6.12-fix"),
             cell("fionread", "redirected", "pass", {"fionread": 1024}, "6.12-fix")]
    found = compare.differences(stock, fixed)
    # the intermittent defect's xfail -> non-strict xpass is both kernels' defect showing once
    assert compare.judge_fix(stock, fixed, found, FIX) == []


def test_another_cell_moving_or_the_fixed_cell_staying_disproves_the_fix():
    stock = [cell("msg_waitall", "redirected", "xfail", {"returned": 1024}),
             cell("fionread", "redirected", "pass", {"fionread": 1024})]
    fixed = [cell("msg_waitall", "redirected", "xfail", {"returned": 2048}, "6.12-fix"),
             cell("fionread", "redirected", "fail", {"fionread": 0}, "6.12-fix")]
    problems = compare.judge_fix(stock, fixed, compare.differences(stock, fixed), FIX)
    assert problems == [
        "fionread [redirected]: pass -> fail, which no fix explains",
        "msg_waitall [redirected]: still not like plain TCP with the fix for waitall-ignored"]


def test_a_strict_xpass_is_never_noise():
    stock = [cell("fionread", "redirected", "xfail", {"fionread": 0})]
    fixed = [dict(cell("fionread", "redirected", "xpass", {"fionread": 8}, "6.12-fix"), strict=True)]
    assert compare.judge_fix(stock, fixed, compare.differences(stock, fixed), FIX) == [
        "fionread [redirected]: xfail -> xpass, which no fix explains"]


def test_a_fixed_intermittent_defect_that_did_not_show_before_is_explained():
    # blocking-eagain, fixed by 0003, did not show in the stock run (a non-strict xpass) and is
    # not listed on the fixed kernel (a pass): the fix explains it; another intermittent defect's
    # xpass -> pass would not be
    fix = compare.fixed_between(frozenset(), frozenset({defects.BLOCKING_FIX}), defects.KNOWN)
    stock = [cell("blocking_recv", "redirected", "xpass", {"outcomes": {"100 bytes": 20}}),
             cell("blocking_recv_stream", "passthrough", "xfail", {"result": "EAGAIN"})]
    fixed = [cell("blocking_recv", "redirected", "pass", {"outcomes": {"100 bytes": 20}}, "6.12-fix"),
             cell("blocking_recv_stream", "passthrough", "pass", {"result": "all data"}, "6.12-fix")]
    assert compare.judge_fix(stock, fixed, compare.differences(stock, fixed), fix) == []
    assert compare.judge_fix(stock, fixed, compare.differences(stock, fixed), FIX) == [
        "blocking_recv [redirected]: xpass -> pass, which no fix explains",
        "blocking_recv_stream [passthrough]: xfail -> pass, which no fix explains"]
