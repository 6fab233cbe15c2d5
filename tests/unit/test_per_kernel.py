"""The one per-kernel loop (lab.per_kernel), without a VM: a stub stands for the booted guest so the
loop's own rules are what is tested: the next kernel runs after an error, a splat fails a kernel
whose work succeeded, an accepted splat is reported, a kernel not provided is not an error, and
``--kernel all|host|ID`` resolves one way."""

from __future__ import annotations

import contextlib
import re
from types import SimpleNamespace

import pytest

from lab import LabError, api, per_kernel
from lab.kernel.fetch import KernelUnavailable
from lab.vm.dmesg import AllowedSplat


class StubTarget:
    def __init__(self, dmesg: str = "", dead_after_work: bool = False):
        self.dmesg, self.dead_after_work, self.cleared, self.worked = dmesg, dead_after_work, False, False
        self.kernel_release = "6.1.0-stub"

    def run(self, argv, timeout):
        if argv == ["dmesg", "-c"]:
            self.cleared = True
            return SimpleNamespace(stdout="boot messages")
        if self.dead_after_work and self.worked:
            raise LabError("guest stopped answering")
        return SimpleNamespace(stdout=self.dmesg)


@pytest.fixture
def guests(monkeypatch):
    """kernel id -> StubTarget, or an exception to raise at boot."""
    table: dict = {}

    @contextlib.contextmanager
    def guest(kernel, settings, workdir):
        booted = table[kernel]
        if isinstance(booted, Exception):
            raise booted
        yield SimpleNamespace(target=booted, accel=SimpleNamespace(name="tcg"), alive=True,
                              give_up_if_lost=lambda error: False)

    monkeypatch.setattr(api, "guest", guest)
    return table


def work_that(fail_on=()):
    def work(kernel, target):
        target.worked = True
        if kernel in fail_on:
            raise LabError(f"{kernel}: the work failed")
        return f"result of {kernel}"
    return work


def test_an_error_on_one_kernel_leaves_the_next_one_running(guests):
    guests.update({"5.10": StubTarget(), "6.1": StubTarget(), "6.12": KernelUnavailable("6.12 not provided")})
    said = []
    runs = list(per_kernel.run_each(["5.10", "6.1", "6.12"], api.Settings(progress=said.append),
                                    work_that(fail_on=("5.10",)), allowed_splats=[]))
    assert [(r.kernel, r.result, r.error, r.unavailable) for r in runs] == [
        ("5.10", None, "5.10: the work failed", None),
        ("6.1", "result of 6.1", None, None),
        ("6.12", None, None, "6.12 not provided")]
    assert runs[1].release == "6.1.0-stub" and runs[1].accel == "tcg" and not runs[1].problem
    assert guests["6.1"].cleared  # the boot's own messages are not judged
    assert said == ["kernel 5.10 (6.1.0-stub, tcg): ready", "kernel 5.10: 5.10: the work failed",
                    "kernel 6.1 (6.1.0-stub, tcg): ready", "kernel 6.12: 6.12 not provided"]


def test_a_splat_fails_a_kernel_whose_work_succeeded_and_an_accepted_one_is_reported(guests, tmp_path):
    dmesg = ("[ 1.0] WARNING: CPU: 0 PID: 1 at net/core/skmsg.c:1 sk_psock_drop\n[ 1.1] Call Trace:\n"
             "[ 2.0] BUG: known thing\n[ 2.1] ---[ end trace 0 ]---\n")
    guests["6.1"] = StubTarget(dmesg)
    allowed = [AllowedSplat(("6.1",), re.compile("known thing"), "a bug outside the lab's tests")]
    said = []
    run, = per_kernel.run_each(["6.1"], api.Settings(progress=said.append), work_that(), allowed_splats=allowed,
                               artifacts_of=lambda kernel: tmp_path / kernel)
    assert run.result == "result of 6.1"
    assert run.splats == ["[ 1.0] WARNING: CPU: 0 PID: 1 at net/core/skmsg.c:1 sk_psock_drop", "[ 1.1] Call Trace:"]
    assert run.accepted_splats == [("[ 2.0] BUG: known thing", "a bug outside the lab's tests")]
    assert run.problem.startswith("kernel splat in dmesg: [ 1.0] WARNING") and "1 more lines" in run.problem
    assert (tmp_path / "6.1" / "dmesg.txt").read_text() == dmesg
    assert said[1:] == [f"kernel 6.1: {run.problem}",
                        "kernel 6.1: accepted splat: [ 2.0] BUG: known thing (a bug outside the lab's tests)"]


def test_a_work_error_keeps_its_message_when_the_guest_no_longer_answers(guests):
    guests["6.1"] = StubTarget(dead_after_work=True)
    run, = per_kernel.run_each(["6.1"], api.Settings(), work_that(fail_on=("6.1",)), allowed_splats=[])
    assert run.error == "6.1: the work failed"
    guests["6.1"] = StubTarget(dead_after_work=True)  # the work passed, then the guest went away: an error
    run, = per_kernel.run_each(["6.1"], api.Settings(), work_that(), allowed_splats=[])
    assert run.error == "guest stopped answering" and run.result == "result of 6.1"


class StubCatalog:
    ids = ["5.10", "5.15", "6.1"]
    entries = [SimpleNamespace(id="5.10", unavailable_reason=lambda: None),
               SimpleNamespace(id="5.15", unavailable_reason=lambda: "kernel 5.15 image not provided"),
               SimpleNamespace(id="6.1", unavailable_reason=lambda: None)]

    def find(self, kernel_id):
        return kernel_id in self.ids


def test_kernel_ids_resolve_one_way():
    said = []
    settings = SimpleNamespace(catalog=StubCatalog, progress=said.append)
    assert per_kernel.resolve([], settings) == [api.HOST]
    assert per_kernel.resolve([], settings, default=["6.1"]) == ["6.1"]
    assert per_kernel.resolve(["all"], settings) == ["5.10", "6.1", api.HOST]
    assert said == ["skipping kernel 5.15: kernel 5.15 image not provided"]
    assert per_kernel.resolve(["6.1", "host", "6.1"], settings) == ["6.1", api.HOST]
    with pytest.raises(LabError, match=r"--kernel 7\.0: not in the catalog \(known: 5\.10, 5\.15, 6\.1"):
        per_kernel.resolve(["7.0"], settings)


def test_a_guest_lost_under_work_that_carried_on_is_that_kernels_error(monkeypatch):
    """Work that records its own errors and goes on (mutants do) still leaves the row failed
    when the guest is gone at its end, naming why."""
    booted = SimpleNamespace(target=StubTarget(), accel=SimpleNamespace(name="tcg"), alive=True,
                             give_up_if_lost=lambda error: False,
                             death=lambda: "it stopped answering (capture in lost-guest.txt)\n--- console ---")

    @contextlib.contextmanager
    def guest(kernel, settings, workdir):
        yield booted

    def work(kernel, target):
        booted.alive = False  # the watchdog gave the guest up meanwhile
        return "recorded its own errors"

    monkeypatch.setattr(api, "guest", guest)
    run, = per_kernel.run_each(["6.1"], api.Settings(), work, allowed_splats=[])
    assert run.result == "recorded its own errors"
    assert run.error == "the guest was lost during the work (it stopped answering (capture in lost-guest.txt))"
