"""The mutants themselves, without a VM: every patch still applies to the current production
source and builds (a patch that rotted would silently test nothing), every header says what it
breaks, and a malformed header is named."""

from __future__ import annotations

import pytest

from lab import LabError
from lab.bpf import mutants

MUTANTS = mutants.load_mutants()
REQUIRED = {"wrong_port_order", "swapped_key", "active_only", "ipv4_only", "drop_on_miss", "no_ingress",
            "wrong_callback", "uninit_padding", "redirect_to_self", "no_noexist", "netns_ignored"}


def test_the_issue_s_mutants_are_all_there():
    assert {m.name for m in MUTANTS} >= REQUIRED


@pytest.mark.parametrize("mutant", MUTANTS, ids=[m.name for m in MUTANTS])
def test_each_patch_applies_builds_and_changes_the_object(mutant):
    assert mutant.base in mutants.BASES and len(mutant.breaks) > 40
    patched = mutants.patched_source(mutant)
    assert patched.read_text() != (mutants.BPF_DIR / "sockredir.bpf.c").read_text() or \
        (patched.parent / "sockredir.h").read_text() != (mutants.BPF_DIR / "sockredir.h").read_text()
    from lab.bpf import redirect

    broken = mutants.build(mutant, mutant.base).read_bytes()
    assert broken != redirect.build_object(mutant.base).read_bytes()


def test_a_verifier_line_records_a_rejection_per_kernel(tmp_path):
    path = tmp_path / "refused.patch"
    path.write_text("Mutant: refused\nBase: production\nBreaks: x\nVerifier: 5.10 = rejected 'R0 invalid'\n"
                    "\n--- a/sockredir.bpf.c\n+++ b/sockredir.bpf.c\n")
    mutant = mutants.parse(path)
    assert mutant.expected_rejection("5.10") == "R0 invalid" and mutant.expected_rejection("6.1") is None
    # netns_ignored breaks the netns variant: where that cannot load it is n/a, not a rejection
    assert mutants.by_name("netns_ignored").rejected_on == {}


@pytest.mark.parametrize("header,problem", [
    ("Base: production\nBreaks: x\n", "no `Mutant:` line"),
    ("Mutant: bad\nBase: seed\nBreaks: x\n", "Base 'seed' is not one of"),
    ("Mutant: other\nBase: production\nBreaks: x\n", "differs from the file name"),
    ("Mutant: bad\nBase: production\nBreaks: x\nVerifier: 5.10 rejected\n", "is not `KERNEL = rejected"),
])
def test_a_malformed_header_is_named(tmp_path, header, problem):
    path = tmp_path / "bad.patch"
    path.write_text(header + "\n--- a/sockredir.bpf.c\n+++ b/sockredir.bpf.c\n")
    with pytest.raises(LabError, match=problem):
        mutants.parse(path)


def test_a_patch_that_no_longer_applies_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv("SOCKREDIR_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "stale.patch"
    path.write_text("Mutant: stale\nBase: production\nBreaks: a context that is not in the source\n\n"
                    "--- a/sockredir.bpf.c\n+++ b/sockredir.bpf.c\n@@ -1,3 +1,3 @@\n no such line\n"
                    "-nor this one\n+but this\n no such line either\n")
    with pytest.raises(LabError, match="no longer applies"):
        mutants.patched_source(mutants.parse(path))


def test_the_markdown_table_names_each_kill_and_its_check():
    from lab.scenario.mutant_runs import MutantResult, format_markdown

    results = [MutantResult("swapped_key", "6.1", "killed", "echo-ipv4", "map entries: wrong socket"),
               MutantResult("swapped_key", "host", "killed", "echo-ipv4", "map entries: wrong socket"),
               MutantResult("netns_ignored", "6.1", "rejected", None, "unknown func bpf_get_netns_cookie"),
               MutantResult("no_ingress", "6.1", "survived")]
    lines = format_markdown(results, ["6.1", "host"]).splitlines()
    assert lines[0] == "| mutant | 6.1 | host | first failed check |"
    assert lines[2] == "| `swapped_key` | killed (echo-ipv4) | killed (echo-ipv4) | map entries: wrong socket |"
    assert lines[3] == "| `netns_ignored` | rejected | - | unknown func bpf_get_netns_cookie |"
    assert lines[4] == "| `no_ingress` | SURVIVED | - |  |"
