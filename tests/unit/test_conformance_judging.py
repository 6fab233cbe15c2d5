"""The conformance matrix's host side without a kernel: the behaviour list agrees with the probe
program, judging turns differences into fail or a named xfail, versions are parsed."""

import json
import subprocess
import sys

import pytest

from lab import SCENARIOS_DIR
from lab.conformance import defects, behaviours


def test_every_probe_has_an_expectation_and_no_expectation_lacks_a_probe():
    out = subprocess.run([sys.executable, str(SCENARIOS_DIR / "conformance.py"), "--list"],
                         capture_output=True, text=True, check=True, cwd=SCENARIOS_DIR).stdout
    assert list(json.loads(out)) == list(behaviours.BEHAVIOURS)
    assert len(behaviours.BEHAVIOURS) >= 15


# TCP data segments per end as the probe reports them when each situation is what it says: the
# peer sent payload; over TCP in plain and peer_outside, redirected (none) with both ends in the map.
PATHS = {"plain": {"app": 0, "peer": 3}, "redirected": {"app": 0, "peer": 0},
         "peer_outside": {"app": 0, "peer": 3}, "passthrough": {"app": 0, "peer": 3},
         "verdict": {"app": 0, "peer": 3}}


def record(behaviour, observed, error=None, path=None):
    return {"behaviour": behaviour, "observed": observed, "error": error, "seconds": 0.1, "path": path}


def situated(situation, behaviour, observed, error=None):
    return record(behaviour, observed, error, PATHS[situation])


def test_judging_compares_with_plain_and_checks_plain_against_linux():
    observed = {"plain": {"fionread": situated("plain", "fionread", {"fionread": 1024})},
                "redirected": {"fionread": situated("redirected", "fionread", {"fionread": 1024})},
                "peer_outside": {"fionread": situated("peer_outside", "fionread", None, "OSError: boom")}}
    cells = {c.situation: c for c in behaviours.judge("test", "1.0.0", observed)}
    assert cells["plain"].status == cells["redirected"].status == "pass"
    assert cells["peer_outside"].status == "fail"
    assert cells["peer_outside"].observed == {"exception": "OSError: boom"}
    observed["plain"]["fionread"] = situated("plain", "fionread", {"fionread": 1000})
    cells = {c.situation: c for c in behaviours.judge("test", "1.0.0", observed)}
    assert cells["plain"].status == "fail" and "Linux TCP" in cells["plain"].reason
    # The situations are compared with what plain TCP showed in this run, not with the book.
    assert cells["redirected"].expected == {"fionread": 1000}


def test_a_known_defect_makes_an_xfail_only_on_the_versions_and_symptom_it_names(monkeypatch):
    defect = defects.Defect("test-defect", ("fionread",), ("redirected",), "FIONREAD 0",
                            lambda seen: seen == {"fionread": 0}, "commit X (test)",
                            introduced=(5, 10, 0), fixed=(6, 8, 0), stable_fixed={(6, 6): 20})
    monkeypatch.setattr(defects, "KNOWN", (defect,))

    def judged(release, value):
        observed = {s: {"fionread": situated(s, "fionread", {"fionread": 1024 if s == "plain" else value})}
                    for s in behaviours.SITUATIONS}
        return {c.situation: c for c in behaviours.judge("k", release, observed)}
    for release, status, plain_equal in (("6.1.0-50-cloud-amd64", "xfail", "xpass"), ("6.8.0", "fail", "pass"),
                                         ("5.4.0", "fail", "pass"), ("6.6.19", "xfail", "xpass"),
                                         ("6.6.20", "fail", "pass")):
        cells = judged(release, 0)
        assert cells["redirected"].status == status, release
        assert cells["peer_outside"].status == "fail"  # the defect names one situation only
        # where the table lists the defect, a cell that behaves like plain TCP is a strict xpass
        same = judged(release, 1024)
        assert same["redirected"].status == plain_equal, release
        assert same["redirected"].strict == (plain_equal == "xpass")
        assert same["peer_outside"].status == "pass"
    assert "commit X (test)" in judged("6.1.0", 0)["redirected"].reason
    # Another symptom of the same behaviour is not explained by it.
    assert judged("6.1.0", 7)["redirected"].status == "fail"


def test_the_fionread_defects_follow_their_stable_backports():
    def explained(situation, release):
        return defects.explaining("fionread", situation, release, {"fionread": 0})
    assert explained("redirected", "6.1.0-50-cloud-amd64").name == "fionread-sockmap"
    assert explained("redirected", "6.12.74") is not None and explained("redirected", "6.12.117") is None
    assert explained("peer_outside", "6.12.100+deb13-cloud-amd64").name == "fionread-no-verdict"
    # backported by 6.12.117: measured there like plain TCP (a strict xpass until the table said so)
    assert explained("peer_outside", "6.12.117+deb13-cloud-amd64") is None
    assert explained("peer_outside", "6.18.15+deb13-cloud-amd64").name == "fionread-no-verdict"
    assert explained("peer_outside", "6.1.0-50-cloud-amd64") is None
    assert explained("peer_outside", "7.2.13+deb14-cloud-amd64") is None
    assert all(d.reference and d.symptom for d in defects.KNOWN)


@pytest.mark.parametrize("release, version", [("6.1.0-50-cloud-amd64", (6, 1, 0)),
                                              ("7.2.13+deb14-cloud-amd64", (7, 2, 13)),
                                              ("6.18.44-fc-v857", (6, 18, 44)), ("7.0", (7, 0, 0))])
def test_kernel_versions(release, version):
    assert defects.kernel_version(release) == version


def test_the_upstream_version_of_a_debian_kernel_is_the_last_one_proc_version_names():
    text = ("Linux version 6.1.0-50-cloud-amd64 (debian-kernel@lists.debian.org) (gcc-12 (Debian "
            "12.2.0-14+deb12u1) 12.2.0, GNU ld (GNU Binutils for Debian) 2.40) #1 SMP PREEMPT_DYNAMIC "
            "Debian 6.1.176-1 (2026-07-02)")
    assert defects.version_from(text, "6.1.0-50-cloud-amd64") == "6.1.176"
    assert defects.version_from("Linux version 6.18.44-fc-v857 (gcc 15.3.0) #1 SMP", "6.18.44-fc-v857") == "6.18.44-fc-v857"


def test_tcp_segments_in_the_redirected_situation_are_the_guards_doing_only_when_it_says_so():
    plain = {"app": 3, "peer": 0}
    assert "not redirected" in behaviours.path_error("redirected", {"app": 2, "peer": 0}, plain)
    assert "not redirected" in behaviours.path_error("redirected", {"app": 2, "peer": 0}, plain, guard_tcp_bytes=0)
    assert behaviours.path_error("redirected", {"app": 2, "peer": 0}, plain, guard_tcp_bytes=65536) is None
    assert behaviours.path_error("redirected", {"app": 0, "peer": 0}, plain, guard_tcp_bytes=None) is None


def test_guard_tcp_bytes_come_from_the_dumps_around_the_probe():
    from lab.bpf import keys

    def dump(backpressure, in_order):
        fields = dict.fromkeys(keys.GUARD_FIELDS, 0) | {"bytes_backpressure": backpressure,
                                                         "bytes_in_order": in_order}
        raw = b"".join(value.to_bytes(8, "little") for value in fields.values())
        return [{"key": ["0x00"] * 4, "values": [{"cpu": 0, "value": [f"0x{b:02x}" for b in raw]}]}]
    record = {"guard_counters": {"before": dump(10, 5), "after": dump(110, 25)}}
    assert behaviours.guard_tcp_bytes(record) == 120
    assert behaviours.guard_tcp_bytes({}) is None


def test_a_defect_a_variant_works_around_is_not_listed_for_it():
    release = "6.18.44"
    names = {d.name for d in defects.listed("nonreading_peer", "redirected", release)}
    assert "no-backpressure" in names
    assert "no-backpressure" not in {d.name for d in defects.listed("nonreading_peer", "redirected", release,
                                                                       "guarded")}
    unbounded = {"stopped_by": "cap", "queued_under_16mib": False}
    assert defects.explaining("nonreading_peer", "redirected", release, unbounded).name == "no-backpressure"
    assert defects.explaining("nonreading_peer", "redirected", release, unbounded, "guarded") is None


def test_a_kernel_built_with_the_projects_fix_is_not_listed_for_its_defect():
    release, short = "6.12.117", {"returned": 1024, "intact": False}
    assert defects.explaining("msg_waitall", "redirected", release, short).name == "waitall-ignored"
    fixed = frozenset({defects.WAITALL_FIX})
    assert defects.explaining("msg_waitall", "redirected", release, short, patches=fixed) is None
    assert not defects.listed("msg_waitall", "redirected", release, patches=fixed)
    # the other defects stay listed on that kernel
    assert defects.listed("so_rcvlowat", "redirected", release, patches=fixed)
    from lab import KERNEL_FIXES_DIR as fixes
    assert (fixes / defects.WAITALL_FIX).is_file() and (fixes / defects.CLOSE_RESET_FIX).is_file()
