"""lab/bpf/verify.py and lab/bpf/corpus.py without a VM: real captured bpftool output, real clang and
llvm-objcopy, a stand-in Target that replays captured output, and the corpus as committed.
The parsing of the captured output itself is tested in test_verifier_log.py."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from lab import LabError
from lab.bpf import build as bpf
from lab.bpf import corpus
from lab.bpf import verifier_log
from lab.bpf import verify
from lab.vm.target import Result, Target

LOGS = Path(__file__).parent / "verifier_logs"
MATRIX = ("5.10", "6.1", "6.12", "6.18", "7.2")
needs_llvm = pytest.mark.skipif(shutil.which("clang") is None or shutil.which("llvm-objcopy") is None,
                                reason="clang/llvm-objcopy not installed")


def captured(name: str) -> str:
    return (LOGS / f"{name}.txt").read_text()


# ----------------------------------------------------------------------------- parsing real output

# (capture, bpftool exit status, [(program, section, outcome, key line, processed insns)])
CAPTURES = [
    ("5.10-lookup_no_null_check", 255,
     [("count_no_check", "sk_msg", "rejected", "R0 invalid mem access 'map_value_or_null'", 7)]),
    ("6.18-lookup_no_null_check", 0, [("count_no_check", "sk_msg", "accepted", None, 11)]),
    ("7.2-lookup_no_null_check_hash", 255,
     [("hash_no_check", "sk_msg", "rejected", "R0 invalid mem access 'map_value_or_null'", 9)]),
    ("5.10-netns_cookie_sockops", 255,
     [("netns_ops", "sockops", "rejected", "unknown func bpf_get_netns_cookie#122", 11)]),
    ("6.12-sock_hash_update_skmsg", 255,
     [("update_from_msg", "sk_msg", "rejected",
       "program of this type cannot use helper bpf_sock_hash_update#70", 7)]),
    ("6.1-seed", 0, [("bpf_sockmap", "sockops", "accepted", None, 66),
                     ("bpf_redir", "sk_msg", "accepted", None, 21)]),
    # libbpf stops at the rejected sockops program: the sk_msg one is never verified.
    ("5.10-sockredir-netns", 255,
     [("sredir_ops_ns", "sockops", "rejected", "unknown func bpf_get_netns_cookie#122", 46)]),
    ("host6.18-key_padding_holes_capbpf", 255,
     [("hole_ops", "sockops", "rejected", "invalid read from stack R3 off -40+9 size 32", 24)]),
    ("host6.18-key_padding_holes_capbpf-only-sk_msg", 255,
     [("hole_ops", "?sockops", "skipped", None, None),
      ("hole_msg", "sk_msg", "rejected", "invalid read from stack R3 off -40+9 size 32", 18)]),
]


@pytest.mark.parametrize("name,rc,expected", CAPTURES, ids=[c[0] for c in CAPTURES])
def test_program_verdicts_from_captured_output(name, rc, expected):
    parsed = verifier_log.parse_loadall(captured(name))
    verdicts = verify.program_verdicts(parsed, rc)
    assert [(v.name, v.section, v.outcome, v.key_line, v.processed_insns) for v in verdicts] == expected
    assert parsed.reached_kernel


def test_programs_after_a_rejection_are_listed_but_not_judged():
    parsed = verifier_log.parse_loadall(captured("5.10-sockredir-netns"))
    assert parsed.programs == [("sockops", "sredir_ops_ns"), ("sk_msg", "sredir_msg_ns")]
    assert "sredir_msg_ns" not in parsed.logs and parsed.failed == {"sredir_ops_ns": -22}


def test_errno_of_a_rejection():
    verdicts = verify.program_verdicts(verifier_log.parse_loadall(captured("5.10-lookup_no_null_check")), 255)
    assert verdicts[0].errno == -13 and verify.errno_text(verdicts[0].errno) == "EACCES"


def test_refusal_reason_of_a_legacy_maps_section():
    output = captured("7.2-legacy_map_def")
    parsed = verifier_log.parse_loadall(output)
    assert not parsed.reached_kernel and parsed.programs == [("sk_msg", "legacy_redir")]
    assert verify.refusal_reason(output) == (
        "elf: legacy map definitions in 'maps' section are not supported by libbpf v1.0+")


def test_refusal_reason_skips_bpftools_generic_lines():
    output = ("libbpf: loading /tmp/x.o\nlibbpf: map 'm': failed to create: Invalid argument(-22)\n"
              "libbpf: failed to load object '/tmp/x.o'\nError: failed to load object file\n")
    assert verify.refusal_reason(output) == "map 'm': failed to create: Invalid argument(-22)"


# ----------------------------------------------------------------------------- one-section copies

@pytest.fixture
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SOCKREDIR_CACHE", str(tmp_path / "cache"))


def section_names(obj: Path) -> list[str]:
    out = subprocess.run(["llvm-readelf", "-S", str(obj)], capture_output=True, text=True, check=True).stdout
    return re.findall(r"\]\s+(\S+)\s+PROGBITS", out)


@needs_llvm
def test_only_section_renames_the_other_program_sections(tmp_path, private_cache):
    obj = bpf.build(corpus.find_case("key_padding_holes").source)
    solo = verify.only_section(obj, "sk_msg", ["sockops", "sk_msg"], tmp_path)
    names = section_names(solo)
    assert "?sockops" in names and "sk_msg" in names and "sockops" not in names
    assert section_names(obj).count("sockops") == 1, "the original object must stay untouched"


# ----------------------------------------------------------------------------- verify_object, replayed

class ReplayTarget(Target):
    """A target whose bpftool runs answer with captured output, one capture per load, in order."""

    name = "replay"

    def __init__(self, outputs: list[tuple[int, str]]):
        super().__init__()
        self.outputs = list(outputs)
        self.files: dict[str, str] = {}
        self.commands: list[str] = []
        self.put_files: list[str] = []
        self._release = "6.18.44-test"

    def _run(self, cmd: str, timeout: float, input: str | None) -> Result:
        self.commands.append(cmd)
        if cmd.startswith("cat /proc/self/mounts"):
            return Result(cmd, 0, "bpf /sys/fs/bpf bpf rw 0 0\n", "")
        match = re.search(r">(\S+) 2>&1; echo \$\? >(\S+)'?$", cmd)
        if match:
            rc, output = self.outputs.pop(0)
            self.files[match[1]] = output
            self.files[match[2].rstrip("'")] = f"{rc}\n"
        return Result(cmd, 0, "", "")

    def put(self, local: Path, remote: str) -> None:
        self.put_files.append(Path(local).name)

    def get(self, remote: str, local: Path) -> None:
        local.write_text(self.files[remote])


@needs_llvm
def test_verify_object_verifies_the_program_after_a_rejection_alone(private_cache):
    target = ReplayTarget([(255, captured("host6.18-key_padding_holes_capbpf")),
                           (255, captured("host6.18-key_padding_holes_capbpf-only-sk_msg"))])
    obj = bpf.build(corpus.find_case("key_padding_holes").source)
    verdict = verify.verify_object(target, obj, ["bpf", "net_admin"])
    assert verdict.outcome == "rejected"
    assert verdict.key_line == "invalid read from stack R3 off -40+9 size 32"
    assert [(p.name, p.section, p.outcome, p.solo) for p in verdict.programs] == [
        ("hole_ops", "sockops", "rejected", False), ("hole_msg", "sk_msg", "rejected", True)]
    assert any(name.endswith(".only-sk_msg.o") for name in target.put_files)
    loads = [c for c in target.commands if "bpftool -d prog loadall" in c]
    assert len(loads) == 2 and all("setpriv --bounding-set=-all,+bpf,+net_admin" in c for c in loads)
    assert any(c.startswith("rm -rf /sys/fs/bpf/sockredir-lab/verify-") for c in target.commands)
    assert verdict.solo_outputs.keys() == {"sk_msg"}


def test_verify_object_reports_a_libbpf_refusal(tmp_path):
    target = ReplayTarget([(255, captured("7.2-legacy_map_def"))])
    obj = tmp_path / "legacy.bpf.o"
    obj.write_bytes(b"not used by the replay")
    verdict = verify.verify_object(target, obj)
    assert verdict.outcome == "refused" and "legacy map definitions" in verdict.key_line
    assert [(p.name, p.outcome) for p in verdict.programs] == [("legacy_redir", "not-loaded")]
    assert verdict.evidence() == captured("7.2-legacy_map_def")
    assert not any("setpriv" in c for c in target.commands)


def test_verify_object_names_a_hung_bpftool(tmp_path):
    target = ReplayTarget([(124, "libbpf: loading /tmp/x.o\n")])
    obj = tmp_path / "x.bpf.o"
    obj.write_bytes(b"")
    with pytest.raises(LabError, match="did not finish loading x.bpf.o"):
        verify.verify_object(target, obj)
    assert any(c.startswith("rm -rf ") for c in target.commands), "cleanup must run on errors too"


# ----------------------------------------------------------------------------- corpus sidecars

def write_case(directory: Path, name: str, sidecar: str) -> Path:
    source = directory / f"{name}.bpf.c"
    source.write_text("/* test */\n")
    (directory / f"{name}.toml").write_text(sidecar)
    return source


@pytest.mark.parametrize("sidecar,problem", [
    ('summary = "x"\nsurprise = 1\n', "unknown keys"),
    ('[log]\nrejected = "x"\n', "summary"),
    ('summary = "x"\n[log]\nrejected = "("\n', "not a valid regex"),
    ('summary = "x"\n[kernels]\n"6.1" = { outcome = "crashed" }\n', "not one of"),
    ('summary = "x"\n[kernels]\n"6.1" = { outcome = "rejected" }\n', "no \\[log\\] pattern"),
    ('summary = "x"\n[feature]\nhelper = "h"\n', "needs exactly"),
    # a pattern every accepted load matches can never fail
    ('summary = "x"\n[log]\naccepted = \'processed \\d+ insns\'\n', "can never fail"),
    ('summary = "x"\n[log]\nrejected = "x"\n[kernels]\n"6.1" = { outcome = "rejected", insns = { p = 3 } }\n',
     "goes with accepted only"),
])
def test_bad_sidecars_are_named(tmp_path, sidecar, problem):
    source = write_case(tmp_path, "bad", sidecar)
    with pytest.raises(corpus.CorpusError, match=problem) as err:
        corpus.load_case(source)
    assert "bad.toml" in str(err.value)


def test_a_source_without_sidecar_is_not_a_case(tmp_path):
    source = tmp_path / "mine.bpf.c"
    source.write_text("")
    assert corpus.load_case(source) is None
    with pytest.raises(corpus.CorpusError, match="has no sidecar"):
        corpus.load_corpus(tmp_path)


class ProbedTarget:
    def __init__(self, helpers: set[tuple[str, str]]):
        self.helpers = helpers

    def has_helper(self, prog_type: str, helper: str) -> bool:
        return (prog_type, helper) in self.helpers


SIDECAR = '''summary = "x"
[log]
rejected = 'unknown func'
[feature]
prog_type = "sock_ops"
helper = "bpf_get_netns_cookie"
present = "accepted"
absent = "rejected"
[kernels]
"5.10" = { outcome = "rejected", key_line = "unknown func bpf_get_netns_cookie#122", release = "5.10.0-32-cloud-amd64" }
"6.1" = { outcome = "accepted", release = "6.1.0-50-cloud-amd64" }
'''


def test_expectation_order_record_version_feature_inference(tmp_path):
    case = corpus.load_case(write_case(tmp_path, "netns", SIDECAR))
    by_id = case.expectation("5.10", "5.10.0-32-cloud-amd64")
    assert (by_id.outcome, by_id.key_line) == ("rejected", "unknown func bpf_get_netns_cookie#122")
    host = case.expectation("host", "6.1.99-custom")
    assert host.outcome == "accepted" and "recorded" in host.source
    probed = case.expectation("5.15", "5.15.0-91-generic", ProbedTarget(set()))
    assert probed.outcome == "rejected" and "cannot call" in probed.source
    inferred = case.expectation("6.6", "6.6.1")
    assert inferred.outcome == "accepted" and "inferred from kernel 6.1" in inferred.source
    assert case.expectation("4.19", "4.19.0") is None


def test_check_compares_outcome_pattern_and_key_line(tmp_path):
    case = corpus.load_case(write_case(tmp_path, "netns", SIDECAR))
    expected = case.expectation("5.10", "5.10.0-32-cloud-amd64")
    prog = verify.ProgramVerdict("p", "sockops", "rejected", "unknown func bpf_get_netns_cookie#122",
                                 log="...\nunknown func bpf_get_netns_cookie#122\n")
    verdict = verify.ObjectVerdict("o", "t", "5.10.0-32-cloud-amd64", "rejected", prog.key_line, [prog])
    assert case.check(verdict, expected) == []
    prog.key_line = verdict.key_line = "unknown func bpf_get_netns_cookie#999"
    assert "differs from the recorded" in case.check(verdict, expected)[0]
    verdict.outcome = "accepted"
    assert "expected rejected" in case.check(verdict, expected)[0]


def test_record_rewrites_only_the_kernels_table(tmp_path):
    source = write_case(tmp_path, "netns", SIDECAR)
    case = corpus.load_case(source)
    prog = verify.ProgramVerdict("p", "sockops", "accepted")
    corpus.record(case, "7.2", verify.ObjectVerdict("o", "t", "7.2.13+deb14-cloud-amd64", "accepted", None, [prog]))
    text = (tmp_path / "netns.toml").read_text()
    assert text.startswith('summary = "x"') and "[feature]" in text and text.count("[kernels]") == 1
    again = corpus.load_case(source)
    assert again.recorded["7.2"] == corpus.Record("accepted", None, "7.2.13+deb14-cloud-amd64")
    assert again.recorded["5.10"].key_line == "unknown func bpf_get_netns_cookie#122"
    assert list(again.recorded) == ["5.10", "6.1", "7.2"]


def test_stats_are_compared_exactly_and_per_compiler(tmp_path):
    path = tmp_path / "stats.toml"
    clang = "Debian clang version 14.0.6"
    corpus.record_stats("production", "6.1", {"sredir_ops": 142, "sredir_msg": 106}, clang, path=path)
    corpus.record_stats("production", "host", {"sredir_ops": 140, "sredir_msg": 103}, clang,
                        release="6.18.44", path=path)
    stats = corpus.load_stats(path)
    assert path.read_text().startswith("# Verifier work")
    same = {"sredir_ops": 142, "sredir_msg": 106}
    assert stats.differences("production", "6.1", "6.1.0-50", same, clang) == []
    # one instruction more is a change, not noise inside a band
    assert stats.differences("production", "6.1", "6.1.0-50", {**same, "sredir_ops": 143}, clang) == [
        "sredir_ops: 143 insns, recorded 142"]
    assert stats.differences("production", "6.1", "6.1.0-50", {"sredir_ops": 142}, clang) == [
        "programs changed: ['sredir_ops'] vs recorded ['sredir_msg', 'sredir_ops']"]
    assert "built by 'clang 15'" in stats.differences("production", "6.1", "x", same, "clang 15")[0]
    assert stats.differences("production", "6.12", "6.12.1", same, clang) is None  # not recorded
    host = {"sredir_ops": 140, "sredir_msg": 103}
    assert stats.differences("production", "host", "6.18.44", host, clang) == []
    assert stats.differences("production", "host", "6.18.50", host, clang) is None  # another host
    corpus.record_stats("seed", "6.1", {"bpf_redir": 21}, "clang 15", path=path)
    assert corpus.load_stats(path).figures == {"seed": {"6.1": {"bpf_redir": 21}}}  # others dropped


# ----------------------------------------------------------------------------- the committed corpus

CORPUS = corpus.load_corpus()


@pytest.mark.parametrize("case", CORPUS, ids=[c.name for c in CORPUS])
def test_every_case_is_recorded_on_the_whole_matrix(case):
    assert set(MATRIX) <= set(case.recorded), f"{case.name}: missing {set(MATRIX) - set(case.recorded)}"
    for kernel, record in case.recorded.items():
        if record.outcome != "accepted":
            assert record.key_line, f"{case.name} on {kernel}: a {record.outcome} record needs its key line"
            assert re.search(case.log_patterns[record.outcome], record.key_line), (kernel, record.key_line)


def test_the_corpus_has_a_case_that_differs_between_kernels():
    differing = [c.name for c in CORPUS if len({r.outcome for r in c.recorded.values()}) > 1]
    assert differing, "no case has different outcomes on different kernels"


def test_the_corpus_has_every_kind_of_outcome():
    outcomes = {r.outcome for c in CORPUS for r in c.recorded.values()}
    assert outcomes == set(verify.OUTCOMES)


def test_recorded_statistics_cover_the_matrix():
    stats = corpus.load_stats()
    for variant in ("seed", "production"):
        assert set(MATRIX) <= set(stats.figures.get(variant, {})), variant


def accepted_verdict(insns: int) -> verify.ObjectVerdict:
    prog = verify.ProgramVerdict("p", "sockops", "accepted", stats=verify.VerifierStats(processed_insns=insns))
    return verify.ObjectVerdict("o", "t", "6.1.0-50-cloud-amd64", "accepted", None, [prog])


def test_an_accepted_record_holds_the_exact_instruction_counts(tmp_path):
    source = write_case(tmp_path, "netns", SIDECAR)
    corpus.record(corpus.load_case(source), "6.1", accepted_verdict(40))
    case = corpus.load_case(source)
    assert case.recorded["6.1"].insns == {"p": 40}
    expected = case.expectation("6.1", "6.1.0-50-cloud-amd64")
    assert case.check(accepted_verdict(40), expected) == []
    assert "accepted as {'p': 41} processed insns, recorded {'p': 40}" in case.check(accepted_verdict(41), expected)[0]


def test_record_refuses_an_outcome_whose_evidence_does_not_hold(tmp_path):
    case = corpus.load_case(write_case(tmp_path, "netns", SIDECAR))
    prog = verify.ProgramVerdict("p", "sockops", "rejected", "R1 type=ctx expected=fp", log="R1 type=ctx expected=fp\n")
    verdict = verify.ObjectVerdict("o", "t", "5.10.0-32-cloud-amd64", "rejected", prog.key_line, [prog])
    with pytest.raises(corpus.CorpusError, match="not recorded: the rejected evidence .* does not match"):
        corpus.record(case, "5.10", verdict)
    refused = verify.ObjectVerdict("o", "t", "5.10.0-32-cloud-amd64", "refused", "libbpf: x", [])
    with pytest.raises(corpus.CorpusError, match="no \\[log\\] pattern for refused"):
        corpus.record(case, "5.10", refused)
    assert corpus.load_case(case.source).recorded["5.10"].key_line == "unknown func bpf_get_netns_cookie#122"
