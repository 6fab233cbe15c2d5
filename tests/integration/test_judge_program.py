"""Judging a redirect the lab did not write (``suite --program``): no lab counters, keys of a
layout the lab does not decode, values it cannot read back, so every verdict rests on what the
kernel shows (map entries, each connection side's TCP data segments, loopback packets, Tcp
OutSegs, tracepoints, the kprobe, the bytes).

- a correct program in the classic public style (bpf/examples/classic_sockhash.bpf.c), one over a
  SOCKMAP (bpf/examples/sockmap_slots.bpf.c: bpf_msg_redirect_map into slots it keeps itself) and
  the seed port pass every scenario that applies to a program of unknown design;
- a broken object handed over as a bare ``.o`` (the wrong_port_order mutant's build: to the lab
  just someone's object) fails, on the kernel-side evidence alone;
- a program that leaves about one connection in a hundred out of the map (the classic example
  built with LEAK_ONE_IN=101) fails the many-connection scenarios: no percentage lets it through.

On the host by default; ``--checks-all`` on every kernel."""

from __future__ import annotations

import pytest

from lab import BPF_DIR
from lab.bpf import mutants
from lab.bpf.program import UserProgram
from lab.kernel.config import REDIRECT
from lab.pytest_plugin import HostKernel
from lab.scenario.definitions import SCENARIOS, run_check
from lab.scenario.env import Env

pytestmark = pytest.mark.requires_kernel_config(*REDIRECT)

EXAMPLES = {
    "classic": UserProgram(BPF_DIR / "examples" / "classic_sockhash.bpf.c"),
    "seed": UserProgram(BPF_DIR / "seed" / "sockredir_seed.bpf.c"),
    # the other map type: a SOCKMAP of slots, bpf_msg_redirect_map (its empty slots are not entries)
    "sockmap": UserProgram(BPF_DIR / "examples" / "sockmap_slots.bpf.c"),
}


@pytest.fixture
def judged(kernel, target, request):
    if not isinstance(kernel, HostKernel) and not request.config.option.checks_all:
        pytest.skip("programs are judged on the host by default; --checks-all on every kernel")
    return target


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_a_correct_program_the_lab_never_saw_passes(judged, artifacts, name):
    with Env(judged, artifacts=artifacts, program=EXAMPLES[name]) as env:
        verdicts = {sid: run_check(env, sid) for sid in SCENARIOS}
    for sid, verdict in verdicts.items():
        print(f"{sid}: {verdict.status} {verdict.reason or verdict.summary()}")
    judged_here = {sid: v for sid, v in verdicts.items() if v.status != "gated"}
    assert len(judged_here) >= 12, sorted(judged_here)
    failed = {sid: v.failures for sid, v in judged_here.items() if v.status == "fail"}
    assert not failed, failed
    # judged without the lab's counters: that is said, and the kernel-side figures were measured
    assert any("no lab counters" in note for note in verdicts["bulk"].notes)
    assert verdicts["bulk"].figures["data segs"].startswith("0/0 vs ")


def test_a_broken_object_fails_on_kernel_side_evidence_alone(judged, artifacts):
    broken_object = mutants.build(mutants.by_name("wrong_port_order"), "production")
    with Env(judged, artifacts=artifacts, program=UserProgram(broken_object)) as env:
        verdict = run_check(env, "echo-ipv4")
    print("\n".join(verdict.failures))
    assert verdict.status == "fail"
    failures = "\n".join(verdict.failures)
    assert "program counter" not in failures  # it has none the lab knows of
    assert "redirect: TCP data segments carrying the client's payload (not redirected)" in failures
    assert "the payload went through the TCP/IP stack" in failures


def test_a_program_that_leaves_one_connection_in_a_hundred_out_of_the_map_fails(judged, artifacts):
    leaky = UserProgram(BPF_DIR / "examples" / "classic_sockhash.bpf.c", defines=("LEAK_ONE_IN=101",))
    with Env(judged, artifacts=artifacts, program=leaky) as env:
        verdicts = {sid: run_check(env, sid) for sid in ("concurrent", "churn")}
    for sid, verdict in verdicts.items():
        print(f"{sid}: {verdict.status}: " + "\n  ".join(verdict.failures))
        assert verdict.status == "fail", sid
        # caught by TCP's own count per socket (and the map), not by a counter of the program's
        assert any("sockets whose payload took TCP" in f or "took the wrong path" in f for f in verdict.failures), sid
