"""Checks of the checks: every rule that turns a failure into an xfail (or a pass into an xpass) fed
the shapes a reviewer would try (the symptom alone; the symptom beside an unrelated failure; the
symptom in the baseline round or on a socket outside the map; an exception; a hang; a plain-equal
observation on an affected kernel), so reopening any of these holes fails here."""

from __future__ import annotations

import pytest

from lab import LabError
from lab.bpf import keys
from lab.conformance import defects, behaviours
from lab.scenario import xfail
from lab.scenario.checks import Failure, Verdict

RELEASE = "6.12.117+deb13-cloud-amd64"
RECV_EAGAIN = "recv: [Errno 11] blocking recv() failed with EAGAIN: Resource temporarily unavailable"
SEND_EAGAIN = "send: [Errno 11] blocking send() failed with EAGAIN: Resource temporarily unavailable"
HANG = {"hung": "no result within 5 s"}
EXCEPTION = {"exception": "ConnectionResetError: [Errno 104] Connection reset by peer"}


# ----------------------------------------------------------------------------- defect matchers

SYMPTOMS = {  # defect -> (behaviour, the exact symptom, near misses that are not it)
    "fionread-sockmap": ("fionread", {"fionread": 0}, [{"fionread": 1}, {"fionread": 0, "extra": 1}]),
    "splice-read": ("splice_from_socket", {"spliced": 0, "intact": True},
                    [{"spliced": 0, "intact": False}, {"spliced": 512, "intact": True}]),
    "no-backpressure": ("nonreading_peer", {"stopped_by": "cap", "queued_under_16mib": False},
                        [{"stopped_by": "EAGAIN", "queued_under_16mib": True},
                         {"stopped_by": "ECONNRESET", "queued_under_16mib": False},
                         {"stopped_by": "cap", "queued_under_16mib": True}]),
    "blocking-eagain": ("blocking_recv", {"outcomes": {"100 bytes": 17, "EAGAIN": 3}},
                        [{"outcomes": {"100 bytes": 20}}, {"outcomes": {"50 bytes": 1, "EAGAIN": 19}},
                         {"outcomes": {"EAGAIN": 3, "ECONNRESET": 17}}, {"outcomes": {"100 bytes": 1, "EAGAIN": 3}},
                         {"result": "EOF before all data"}, {"outcomes": "EAGAIN"}]),
    "waitall-ignored": ("msg_waitall", {"returned": 1024, "intact": False},
                        [{"returned": 0, "intact": False}, {"returned": 4096, "intact": True},
                         {"returned": None, "intact": False}]),
    "waitall-ignored-verdict": ("msg_waitall", {"returned": 1024, "intact": False},
                                [{"returned": 0, "intact": False}, {"returned": 4096, "intact": True}]),
    "rcvlowat-ignored": ("so_rcvlowat", {"readable_below_lowat": True, "readable_above_lowat": True},
                         [{"readable_below_lowat": True, "readable_above_lowat": False}]),
    "close-without-reset": ("close_with_unread_data", {"recv": "EOF", "send": "sent"},
                            [{"recv": "ECONNRESET", "send": "EPIPE"}, {"recv": "EOF", "send": "ETIMEDOUT"},
                             {"recv": "EOF"}]),
}


@pytest.mark.parametrize("name", sorted(SYMPTOMS))
def test_each_matcher_takes_its_exact_symptom_and_nothing_else(name):
    defect = defects.by_name(name)
    _, symptom, near_misses = SYMPTOMS[name]
    assert defect.matches(symptom)
    for other in near_misses + [EXCEPTION, None, "EAGAIN"]:
        assert not defect.matches(other), other
    # a hang is the symptom of splice-read only (a splice that never sees the data blocks)
    assert defect.matches(HANG) == (name == "splice-read")


def test_every_defect_has_a_symptom_checked_here_and_the_stream_shape_too():
    assert set(SYMPTOMS) | {"fionread-no-verdict", "fionread-verdict"} == {d.name for d in defects.KNOWN}
    eagain = defects.by_name("blocking-eagain")
    assert eagain.matches({"result": "EAGAIN"}) and not eagain.matches({"result": "ECONNRESET"})
    assert eagain.intermittent and not defects.by_name("waitall-ignored").intermittent
    assert defects.by_name("no-backpressure").matches({"stopped_by": "ENOMEM", "queued_under_16mib": False})


# ----------------------------------------------------------------------------- conformance cells

def judged(behaviour, seen, situation="redirected", path=None, release=RELEASE):
    plain = {"app": 0, "peer": 3}
    paths = {"plain": plain, "redirected": {"app": 0, "peer": 0}, "peer_outside": plain,
             "passthrough": plain, "verdict": plain}
    if path is not None:
        paths[situation] = path
    reference = behaviours.EXPECTED_PLAIN[behaviour]
    observed = {s: {behaviour: {"behaviour": behaviour, "observed": seen if s == situation else reference,
                                "error": None, "path": paths[s]}} for s in behaviours.SITUATIONS}
    return {c.situation: c for c in behaviours.judge("k", release, observed)}[situation]


def test_a_cell_is_an_xfail_only_for_the_exact_symptom():
    assert judged("msg_waitall", {"returned": 1024, "intact": False}).status == "xfail"
    assert judged("msg_waitall", {"returned": 0, "intact": False}).status == "fail"
    hung = judged("msg_waitall", HANG)
    assert hung.status == "fail" and "no known kernel defect" in hung.reason
    assert judged("blocking_recv", EXCEPTION).status == "fail"


def test_a_plain_equal_cell_where_the_table_lists_a_defect_is_an_xpass():
    always = judged("msg_waitall", {"returned": 4096, "intact": True})
    assert always.status == "xpass" and always.strict and "out of date" in always.reason
    sometimes = judged("blocking_recv", {"outcomes": {"100 bytes": 20}})
    assert sometimes.status == "xpass" and not sometimes.strict and "intermittent" in sometimes.reason
    # where no defect is listed (fionread-sockmap is fixed in 6.12.75) equal is a plain pass
    assert judged("fionread", {"fionread": 1024}).status == "pass"


def test_a_cell_whose_payload_took_tcp_is_not_redirected_whatever_it_observed():
    cell = judged("fionread", {"fionread": 1024}, path={"app": 0, "peer": 2})
    assert cell.status == "fail" and cell.reason.startswith("not redirected")
    # not even a defect's symptom makes it an xfail: the situation was not what it claims
    assert judged("msg_waitall", {"returned": 1024, "intact": False}, path={"app": 0, "peer": 4}).status == "fail"
    outside = judged("fionread", {"fionread": 1024}, "peer_outside", path={"app": 0, "peer": 0})
    assert outside.status == "fail" and "not the peer_outside situation" in outside.reason
    unproven = judged("fionread", {"fionread": 1024}, path={"app": None, "peer": 0})
    assert unproven.status == "fail" and "no evidence of the path" in unproven.reason
    for watching in ("passthrough", "verdict"):  # a program that only watches: the data takes TCP
        redirected_anyway = judged("fionread", {"fionread": 1024}, watching, path={"app": 0, "peer": 0})
        assert redirected_anyway.status == "fail", redirected_anyway
        assert f"not the {watching} situation" in redirected_anyway.reason
        assert judged("fionread", {"fionread": 1024}, watching).status == "pass"


def test_a_watching_situation_is_proven_by_its_programs_counters():
    def status(inserted, passed, redirected=0, skbs=0):
        counters = dict.fromkeys(keys.COUNTER_FIELDS, 0)
        after = dict(counters, inserted_v4=inserted, msgs_redirected=redirected)
        return ({"counters": counters, "watch": dict.fromkeys(keys.WATCH_FIELDS, 0)},
                {"counters": after, "watch": dict(dict.fromkeys(keys.WATCH_FIELDS, 0),
                                                  msgs_passed=passed, skbs_passed=skbs)})
    behaviours.check_situation("passthrough", *status(6, 9), 3, "host")
    behaviours.check_situation("verdict", *status(6, 9, skbs=4), 3, "host")
    for situation, counted, wrong in (("passthrough", status(4, 9), "inserted 4 sockets for 3"),
                                      ("passthrough", status(6, 0), "passed 0 messages"),
                                      ("passthrough", status(6, 9, redirected=1), "1 were redirected"),
                                      ("verdict", status(6, 9), "verdict program saw no skb")):
        with pytest.raises(LabError, match=wrong):
            behaviours.check_situation(situation, *counted, 3, "host")


def test_source_built_kernels_are_judged_by_their_own_version_not_the_compilers():
    built = ("Linux version 6.12.57 (root@lab) (gcc-12 (Debian 12.2.0-14+deb12u1) 12.2.0, GNU ld (GNU "
             "Binutils for Debian) 2.40) #1 SMP PREEMPT_DYNAMIC Mon Dec  7 12:00:00 UTC 2026")
    assert defects.version_from(built, "6.12.57") == "6.12.57"
    assert defects.version_from(built, "6.12.57-lab-fix1") == "6.12.57-lab-fix1"


# ----------------------------------------------------------------------------- scenario verdicts

def eagain(round="redirect", side="client"):
    return Failure(f"{round}: {side} error {RECV_EAGAIN}", round, "error", side)


def data(round="redirect"):
    return Failure(f"{round}: bytes client received from server: got -1, expected 33554432", round, "data")


def named(failures, in_map=("client", "server")):
    defect = xfail.explain_verdict(failures, RELEASE, in_map)
    return defect.name if defect else None


def test_a_scenario_is_an_xfail_only_when_the_symptom_explains_every_failure():
    assert named([eagain()]) == "blocking-eagain"
    assert named([eagain(), data()]) == "blocking-eagain"          # what the cut-short run changed
    assert named([data()]) is None                                  # no symptom: no defect
    unrelated = Failure("map entries connected: got 1, expected 2", "redirect", "check")
    assert named([eagain(), unrelated]) is None                     # the bypass, the map: not explained
    bypass = Failure("Tcp OutSegs in the data phase: 900 with the redirect", None, "check")
    assert named([eagain(), data(), bypass]) is None


def test_the_baseline_round_and_sockets_outside_the_map_are_never_a_tcp_bpf_defect():
    assert named([eagain("baseline")]) is None
    assert named([eagain(), data("baseline")]) is None
    assert named([eagain(side="server")], in_map=("client",)) is None
    assert named([eagain(side="client")], in_map=("client",)) == "blocking-eagain"   # peer_outside too
    assert named([eagain()], in_map=()) is None


def test_a_send_eagain_an_exception_and_a_hang_stay_failures():
    send = Failure(f"redirect: client error {SEND_EAGAIN}", "redirect", "error", "client")
    assert named([send]) is None
    hang = Failure("scenario error: redirect: TimeoutError: the scenario's --timeout expired (a hang?); "
                   "threads: ... EAGAIN ...", "redirect", "error")
    assert named([hang]) is None
    crash = Failure("scenario error: redirect: ScenarioError: client: ConnectionResetError: [Errno 104]",
                    "redirect", "error")
    assert named([crash]) is None
    # the symptom must be the cause, not something said after it
    later = Failure(f"scenario error: redirect: ScenarioError: server: send: [Errno 32] Broken pipe; "
                    f"client: {RECV_EAGAIN}", "redirect", "error")
    assert named([later]) is None


def test_a_scenario_error_names_the_side_whose_blocking_recv_failed():
    text = ("scenario error: redirect: ScenarioError: client: SpuriousEagain: [Errno 11] blocking recv() "
            "failed with EAGAIN: Resource temporarily unavailable; server still blocked 5 s later (stopped)")
    stopped = Failure(text, "redirect", "error")
    assert xfail.symptom_side(stopped) == "client"
    assert named([stopped]) == "blocking-eagain"
    assert named([stopped], in_map=("server",)) is None


def test_slowreader_is_no_backpressure_only_alone():
    verdict = Verdict("slowreader")
    verdict.expect(False, "redirect: no backpressure: queued 256 MiB", "redirect", "error", defect="no-backpressure")
    assert named(verdict.failures) == "no-backpressure"
    assert named(verdict.failures + [data()]) is None   # what was queued must still arrive intact
    assert named(verdict.failures + [eagain()]) is None  # two defects: neither explains everything
    assert named(verdict.failures, in_map=("client",)) is None  # no-backpressure is listed for redirected only


# ----------------------------------------------------------------------------- pair results

def pair(client=None, server=None, run_error=None):
    """A scenarios/pair.py result with these errors, shaped as pair.py shapes it."""
    result = {"client": {"error": client}, "server": {"error": server}, "run_error": run_error}
    joined = "; ".join(f"{r}: {e}" for r, e in (("client", client), ("server", server)) if e)
    result["error"] = run_error or joined or None
    return result


# common.transfer's words for a blocking recv()'s EAGAIN (common.SpuriousEagain), as pair.py reports them
PAIR_EAGAIN = "recv: [Errno 11] blocking recv() failed with EAGAIN: Resource temporarily unavailable"


def pair_named(result, in_map=("client", "server")):
    defect = xfail.explain_pair(result, RELEASE, in_map)
    return defect.name if defect else None


def test_a_pair_is_an_xfail_only_for_a_recv_eagain_on_a_mapped_socket():
    assert pair_named(pair(client=PAIR_EAGAIN)) == "blocking-eagain"
    assert pair_named(pair(client=PAIR_EAGAIN, server=PAIR_EAGAIN)) == "blocking-eagain"  # both: the same defect
    assert pair_named(pair(client=PAIR_EAGAIN, server=PAIR_EAGAIN), in_map=("client",)) is None
    assert pair_named(pair(client=PAIR_EAGAIN), in_map=()) is None            # not in the map
    assert pair_named(pair(server=PAIR_EAGAIN), in_map=("client",)) is None
    assert pair_named(pair(client="send: [Errno 11] blocking send() failed with EAGAIN: "
                                  "Resource temporarily unavailable")) is None
    assert pair_named(pair(client=PAIR_EAGAIN, server="recv: [Errno 110] Connection timed out")) is None
    assert pair_named(pair(client="recv: peer closed after 5 of 10 bytes")) is None
    assert pair_named(pair()) is None


def test_a_kernel_built_with_the_fix_has_no_defect_to_excuse_the_failure():
    from lab.conformance import defects
    fixed = frozenset({defects.BLOCKING_FIX})
    assert xfail.explain_verdict([eagain()], RELEASE, patches=fixed) is None
    assert xfail.explain_pair(pair(client=PAIR_EAGAIN), RELEASE, ("client", "server"), fixed) is None
    other = frozenset({defects.WAITALL_FIX})  # another defect's fix changes nothing here
    assert xfail.explain_verdict([eagain()], RELEASE, patches=other).name == "blocking-eagain"


def test_a_pair_whose_peer_stayed_blocked_is_named_by_the_first_error_of_the_run():
    # common.gather: a side's EAGAIN, then its peer blocked on a full window and stopped
    stuck = f"ScenarioError: client: {PAIR_EAGAIN}; server still blocked 10 s later (stopped)"
    assert pair_named(pair(run_error=stuck)) == "blocking-eagain"
    assert pair_named(pair(run_error=stuck), in_map=("server",)) is None
    assert pair_named(pair(client=PAIR_EAGAIN, run_error="TimeoutError: nobody released the hold")) is None
    assert pair_named(pair(run_error="ScenarioError: server: TimeoutError: the scenario's --timeout expired")) is None
    assert pair_named({"error": "pair.py printed no JSON (exit 1)"}) is None


# ----------------------------------------------------------------------------- mutant kills

def test_a_kill_needs_evidence_a_user_or_the_kernel_shows():
    from lab.scenario.mutant_runs import kill
    counters_only = Verdict("echo-ipv4")
    counters_only.expect(False, "program counter msgs_missed: got 9, expected 0", "redirect", "data", by_program=True)
    assert kill(counters_only) is None
    seen = Verdict("echo-ipv4")
    seen.expect(False, "program counter msgs_missed: got 9, expected 0", "redirect", "data", by_program=True)
    seen.expect(False, "redirect: TCP data segments carrying the client's payload (not redirected): got 9, "
                       "expected 0", "redirect")
    assert kill(seen) == ("killed", seen.failures[1])
    lab = Verdict("echo-ipv4")
    lab.expect(False, "the lab could not run it: guest gone", kind="error")
    assert kill(lab)[0] == "error"
    named_defect = Verdict("slowreader", status="xfail", failures=seen.failures)
    assert kill(named_defect) is None


def test_a_sender_never_pushed_back_is_no_backpressure_in_every_write_probe_and_only_that():
    defect = defects.by_name("no-backpressure")
    for behaviour, symptom in defects.NO_BACKPRESSURE_WRITES.items():
        assert behaviour in defect.behaviours and defect.matches(symptom)
        assert not defect.matches(behaviours.EXPECTED_PLAIN[behaviour])  # TCP's own answer is no symptom
    # a lost EPOLLOUT after a real drain (the pass-through stall) is not this defect
    assert not defect.matches({"filled_by": "EAGAIN", "before_drain": [], "after_drain": []})
