"""lab.wait.until: the one polling helper (guest readiness, SSH, QMP, reaping, map release...)."""

from __future__ import annotations

import time

import pytest

from lab import LabError, wait


def test_it_returns_the_first_truthy_answer():
    answers = iter([None, 0, "", "ready", "later"])
    assert wait.until(lambda: next(answers), every=0.001, seconds=5) == "ready"


def test_a_timeout_raises_the_callers_error_or_returns_the_last_answer():
    started = time.monotonic()
    with pytest.raises(LabError, match="no ready line"):
        wait.until(lambda: None, every=0.01, seconds=0.05, fail=lambda: LabError("no ready line"))
    assert time.monotonic() - started < 1
    assert wait.until(lambda: [], every=0.01, deadline=time.monotonic() + 0.03) == []


def test_a_probe_that_finds_the_wait_hopeless_ends_it_at_once():
    def probe():
        raise LabError("QEMU exited")
    with pytest.raises(LabError, match="QEMU exited"):
        wait.until(probe, every=10, seconds=100)


def test_seconds_and_deadline_exclude_each_other():
    with pytest.raises(ValueError):
        wait.until(lambda: True, every=1, seconds=1, deadline=time.monotonic())
