"""lab.bpf.verifier_log on real output: every capture in verifier_logs/ (bpftool 7.1 on kernels
5.10 to 7.2) through the one parser that the verification survey and the redirect installer share."""

from __future__ import annotations

from pathlib import Path

import pytest

from lab.bpf import pins
from lab.bpf import verifier_log
from lab.bpf import verify
from lab.vm.target import Result

LOGS = Path(__file__).parent / "verifier_logs"

# capture -> {program: (outcome, key line, processed insns)}, for every program with a verifier log.
# An accepted program's key line is just the last line verified: only a rejection has a reason.
EXPECTED = {
    "5.10-lookup_no_null_check": {
        "count_no_check": ("rejected", "R0 invalid mem access 'map_value_or_null'", 7)},
    "5.10-netns_cookie_sockops": {
        "netns_ops": ("rejected", "unknown func bpf_get_netns_cookie#122", 11)},
    # libbpf stops at the rejected sockops program: sredir_msg_ns has no log.
    "5.10-sockredir-netns": {
        "sredir_ops_ns": ("rejected", "unknown func bpf_get_netns_cookie#122", 46)},
    "6.1-seed": {
        "bpf_sockmap": ("accepted", "from 5 to 70: safe", 66),
        "bpf_redir": ("accepted", "21: (95) exit", 21)},
    "6.12-sock_hash_update_skmsg": {
        "update_from_msg": ("rejected", "program of this type cannot use helper bpf_sock_hash_update#70", 7)},
    # 6.18 prints its stack-liveness pass ("(0) live stack update done in 2 iterations") after the
    # last exit: bookkeeping, not the program's last line.
    "6.18-lookup_no_null_check": {
        "count_no_check": ("accepted", "11: (95) exit", 11)},
    # libbpf refuses the legacy maps section: no program reaches the verifier.
    "7.2-legacy_map_def": {},
    # 7.2 prints "stack depth 8 max 0" and "insns processed 9" before the classic statistics line.
    "7.2-lookup_no_null_check_hash": {
        "hash_no_check": ("rejected", "R0 invalid mem access 'map_value_or_null'", 9)},
    "host6.18-key_padding_holes_capbpf": {
        "hole_ops": ("rejected", "invalid read from stack R3 off -40+9 size 32", 24)},
    # The one-section copy: hole_ops (now "?sockops") is skipped and has no log.
    "host6.18-key_padding_holes_capbpf-only-sk_msg": {
        "hole_msg": ("rejected", "invalid read from stack R3 off -40+9 size 32", 18)},
}
REJECTIONS = [(name, program, key) for name, programs in EXPECTED.items()
              for program, (outcome, key, _) in programs.items() if outcome == "rejected"]


def captured(name: str) -> str:
    return (LOGS / f"{name}.txt").read_text()


def test_every_capture_has_its_expectation():
    assert {path.stem for path in LOGS.glob("*.txt")} == EXPECTED.keys()


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_key_line_and_processed_insns_of_every_captured_log(name):
    parsed = verifier_log.parse_loadall(captured(name))
    found = {program: ("rejected" if program in parsed.failed else "accepted",
                       verifier_log.key_line(log), verifier_log.verifier_stats(log).processed_insns)
             for program, log in parsed.logs.items()}
    assert found == EXPECTED[name]


@pytest.mark.parametrize("name,stats", [
    ("6.1-seed", verifier_log.VerifierStats(66, 3, 3, "64", 7174)),
    ("7.2-lookup_no_null_check_hash", verifier_log.VerifierStats(9, 0, 0, "8", 4462)),
    ("5.10-sockredir-netns", verifier_log.VerifierStats(46, 3, 3, "48", 5379)),
])
def test_statistics_of_the_first_program(name, stats):
    log = next(iter(verifier_log.parse_loadall(captured(name)).logs.values()))
    assert verifier_log.verifier_stats(log) == stats


def test_key_line_without_statistics_is_the_last_line():
    assert verifier_log.key_line("0: (b7) r0 = 0\nR0 !read_ok\n") == "R0 !read_ok"


def test_key_line_of_a_log_without_reasoning_is_none():
    assert verifier_log.key_line("") is None
    assert verifier_log.key_line("func#0 @0\nLive regs before insn:\nprocessed 0 insns (limit 1000000)\n") is None


@pytest.mark.parametrize("name,program,key", REJECTIONS, ids=[r[0] for r in REJECTIONS])
def test_redirect_and_survey_name_the_same_key_line(name, program, key):
    output = captured(name)
    error = pins.classify_load_failure(Result("bpftool -d prog loadall", 255, "", output), "x.bpf.o")
    assert isinstance(error, pins.VerifierRejected)
    assert (error.program, error.key_line) == (program, key)
    survey = verify.program_verdicts(verifier_log.parse_loadall(output), 255)
    assert [v.key_line for v in survey if v.outcome == "rejected"] == [key]


def test_redirect_names_an_empty_verifier_log():
    output = ("libbpf: prog 'p': -- BEGIN PROG LOAD LOG --\n-- END PROG LOAD LOG --\n"
              "libbpf: prog 'p': failed to load: -22\n")
    error = pins.classify_load_failure(Result("bpftool", 255, "", output), "x.bpf.o")
    assert isinstance(error, pins.VerifierRejected) and error.key_line == "(empty verifier log)"


def test_redirect_reports_a_refusal_before_the_verifier():
    error = pins.classify_load_failure(Result("bpftool", 255, "", captured("7.2-legacy_map_def")), "x.bpf.o")
    assert isinstance(error, pins.ObjectRefused) and "legacy map definitions" in error.key_line
