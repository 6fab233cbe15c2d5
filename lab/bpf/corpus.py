"""The verifier corpus: ``bpf/cases/NAME.bpf.c`` + ``NAME.toml`` (expected outcomes, log pattern).

A sidecar looks like this (``docs/verifier.md`` has the full description)::

    summary = "2-byte load of sk_msg_md.remote_port"
    capabilities = ["bpf", "net_admin"]   # optional: load with only these (default: full root)
    defines = ["NAME=VALUE"]              # optional: -D for clang
    not_on_host = "why"                   # optional: the host's outcome is the machine's, not its
                                          # kernel's (a tracing program refused by policy)

    [log]                                 # per outcome the case can have: a regex its evidence
    rejected = 'invalid bpf_context access off=60 size=2'   # (log / libbpf output) must match

    [feature]                             # optional: predicts the outcome on unrecorded kernels
    prog_type = "sock_ops"
    helper = "bpf_get_netns_cookie"
    present = "accepted"
    absent = "rejected"

    [kernels]                             # measured; rewritten by `sockredir-lab verify --record`
    "5.10" = { outcome = "rejected", key_line = "...", release = "5.10.0-32-cloud-amd64" }

The expected outcome on a kernel: its own record (by kernel id, or by the major.minor of its
release: the host's 6.18.44 uses the "6.18" record); else the probed feature; else the record of
the newest older kernel (an inference, said so); else none.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
import tomllib
from pathlib import Path
from typing import Any

from lab import BPF_DIR, LabError
from lab.bpf.verify import OUTCOMES, ObjectVerdict

CASES_DIR = BPF_DIR / "cases"
SOURCE_SUFFIX = ".bpf.c"
KERNELS_HEADER = "[kernels]"
TOP_KEYS = {"summary", "capabilities", "defines", "log", "feature", "kernels", "not_on_host"}
FEATURE_KEYS = {"prog_type", "helper", "present", "absent"}
RECORD_KEYS = {"outcome", "key_line", "release", "insns"}
# What every accepted load prints: a [log] pattern that matches it cannot tell this case from any
# other program, so it could never fail (the record's exact instruction counts are the evidence).
ANY_ACCEPTED_LOG = ("processed 7 insns (limit 1000000) max_states_per_insn 0 total_states 0 "
                    "peak_states 0 mark_read 0\nverification time 12 usec\nstack depth 0")


class CorpusError(LabError):
    pass


@dataclass(frozen=True)
class Record:
    outcome: str
    key_line: str | None = None
    release: str | None = None
    insns: dict[str, int] | None = None  # accepted: processed insns per program, compared exactly


@dataclass(frozen=True)
class FeatureRule:
    prog_type: str
    helper: str
    present: str
    absent: str

    def predict(self, target) -> tuple[str, str]:
        have = target.has_helper(self.prog_type, self.helper)
        word = "can" if have else "cannot"
        return (self.present if have else self.absent,
                f"probed: {self.prog_type} programs {word} call {self.helper}")


@dataclass(frozen=True)
class Expectation:
    outcome: str
    source: str  # how it was decided, for the report
    key_line: str | None = None
    insns: dict[str, int] | None = None


@dataclass
class Case:
    name: str
    source: Path
    sidecar: Path
    summary: str
    log_patterns: dict[str, str]
    recorded: dict[str, Record] = field(default_factory=dict)
    feature: FeatureRule | None = None
    capabilities: tuple[str, ...] | None = None
    defines: tuple[str, ...] = ()
    not_on_host: str | None = None   # why the host kernel is not judged by this case

    def expectation(self, kernel_id: str | None, release: str, target=None) -> Expectation | None:
        record = self.recorded.get(kernel_id or "") or self._same_version(release)
        if record is not None:
            return Expectation(record.outcome, f"recorded on {record.release or 'this kernel'}",
                               record.key_line, record.insns)
        if self.feature is not None and target is not None:
            outcome, why = self.feature.predict(target)
            return Expectation(outcome, why)
        older = self._newest_older(release)
        if older is not None:
            kernel, record = older
            return Expectation(record.outcome, f"inferred from kernel {kernel}, the newest older "
                                               f"kernel recorded (not measured on {release})")
        return None

    def _same_version(self, release: str) -> Record | None:
        version = kernel_version(release)
        matches = [r for k, r in self.recorded.items() if kernel_version(k) == version]
        return matches[0] if matches else None

    def _newest_older(self, release: str) -> tuple[str, Record] | None:
        version = kernel_version(release)
        if version is None:
            return None
        older = [(kernel_version(k), k, r) for k, r in self.recorded.items()
                 if kernel_version(k) is not None and kernel_version(k) < version]
        return max(older)[1:] if older else None

    def check(self, verdict: ObjectVerdict, expected: Expectation) -> list[str]:
        """What is wrong with ``verdict`` given ``expected``; empty when it holds."""
        problems = []
        if verdict.outcome != expected.outcome:
            problems.append(f"outcome {verdict.outcome} ({verdict.key_line or 'no key line'}), "
                            f"expected {expected.outcome}")
            return problems
        pattern = self.log_patterns.get(verdict.outcome)
        if pattern and not re.search(pattern, verdict.evidence(), re.M):
            problems.append(f"the {verdict.outcome} evidence does not match {pattern!r} "
                            f"(key line: {verdict.key_line})")
        if expected.key_line and verdict.key_line != expected.key_line:
            problems.append(f"key line {verdict.key_line!r} differs from the recorded "
                            f"{expected.key_line!r}")
        if verdict.outcome == "accepted" and expected.insns is not None:
            measured = processed_insns(verdict)
            if measured != expected.insns:
                problems.append(f"accepted as {measured} processed insns, recorded {expected.insns}: "
                                "the verifier saw another program (re-record after a review)")
        return problems

    def evidence_problem(self, verdict: ObjectVerdict) -> str | None:
        """Why ``verdict`` cannot be recorded as this case's outcome: its evidence does not match
        the case's pattern for that outcome (so the case does not show what it is about)."""
        pattern = self.log_patterns.get(verdict.outcome)
        if verdict.outcome != "accepted" and not pattern:
            return f"the case has no [log] pattern for {verdict.outcome}"
        if pattern and not re.search(pattern, verdict.evidence(), re.M):
            return (f"the {verdict.outcome} evidence ({verdict.key_line}) does not match the case's "
                    f"pattern {pattern!r}")
        return None


def processed_insns(verdict: ObjectVerdict) -> dict[str, int]:
    return {p.name: p.processed_insns for p in verdict.programs if p.processed_insns is not None}


def kernel_version(text: str) -> tuple[int, int] | None:
    """(major, minor) of a kernel id ("6.1") or release ("6.1.0-50-cloud-amd64")."""
    match = re.match(r"^(\d+)\.(\d+)", text or "")
    return (int(match[1]), int(match[2])) if match else None


def sidecar_of(source: Path) -> Path:
    return Path(source).with_name(Path(source).name.removesuffix(SOURCE_SUFFIX) + ".toml")


def load_case(source: Path) -> Case | None:
    """The case for ``source``, or None when it has no sidecar (not part of the corpus)."""
    source = Path(source)
    sidecar = sidecar_of(source)
    if not source.name.endswith(SOURCE_SUFFIX) or not sidecar.is_file():
        return None
    try:
        data = tomllib.loads(sidecar.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise CorpusError(f"{sidecar}: not valid TOML ({exc}); fix the file") from exc
    return _parse(source, sidecar, data)


def load_corpus(directory: Path = CASES_DIR) -> list[Case]:
    cases = []
    for source in sorted(Path(directory).glob(f"*{SOURCE_SUFFIX}")):
        case = load_case(source)
        if case is None:
            raise CorpusError(f"{source} has no sidecar {sidecar_of(source).name}; every case needs "
                              "one (see docs/verifier.md)")
        cases.append(case)
    return cases


def find_case(name: str, directory: Path = CASES_DIR) -> Case:
    case = load_case(Path(directory) / f"{name}{SOURCE_SUFFIX}")
    if case is None:
        known = ", ".join(c.name for c in load_corpus(directory))
        raise CorpusError(f"no corpus case {name!r} in {directory} (known: {known})")
    return case


def _parse(source: Path, sidecar: Path, data: dict[str, Any]) -> Case:
    def fail(problem: str) -> CorpusError:
        return CorpusError(f"{sidecar}: {problem} (see docs/verifier.md for the format)")

    unknown = set(data) - TOP_KEYS
    if unknown:
        raise fail(f"unknown keys {sorted(unknown)}")
    if not isinstance(data.get("summary"), str):
        raise fail("`summary` (a string) is missing")
    logs = data.get("log", {})
    if not isinstance(logs, dict) or set(logs) - set(OUTCOMES):
        raise fail(f"[log] must map outcomes ({', '.join(OUTCOMES)}) to regexes")
    for outcome, pattern in logs.items():
        try:
            re.compile(pattern)
        except (re.error, TypeError) as exc:
            raise fail(f"[log] {outcome} is not a valid regex: {exc}") from exc
    if "accepted" in logs and re.search(logs["accepted"], ANY_ACCEPTED_LOG, re.M):
        raise fail(f"[log] accepted = {logs['accepted']!r} matches the log of any accepted program, "
                   "so it can never fail; drop it (the recorded insns are an accepted load's "
                   "evidence) or make it name what is particular to this case")
    feature = None
    if "feature" in data:
        rule = data["feature"]
        if not isinstance(rule, dict) or set(rule) != FEATURE_KEYS:
            raise fail(f"[feature] needs exactly {sorted(FEATURE_KEYS)}")
        _check_outcome(rule["present"], fail)
        _check_outcome(rule["absent"], fail)
        feature = FeatureRule(**rule)
    recorded = {}
    for kernel, record in data.get("kernels", {}).items():
        if not isinstance(record, dict) or set(record) - RECORD_KEYS or "outcome" not in record:
            raise fail(f"[kernels] {kernel!r} must be {{ outcome = ..., key_line = ..., release = ... }}")
        _check_outcome(record["outcome"], fail)
        insns = record.get("insns")
        if insns is not None and (not isinstance(insns, dict) or record["outcome"] != "accepted"
                                  or not all(isinstance(n, int) for n in insns.values())):
            raise fail(f"[kernels] {kernel!r}: insns = {{ program = N }} goes with accepted only")
        recorded[kernel] = Record(**record)
    outcomes = {r.outcome for r in recorded.values()} | ({feature.present, feature.absent} if feature else set())
    missing = sorted(o for o in outcomes - set(logs) if o != "accepted")
    if missing:
        raise fail(f"no [log] pattern for outcome(s) {missing}")
    caps = data.get("capabilities")
    return Case(
        name=source.name.removesuffix(SOURCE_SUFFIX), source=source, sidecar=sidecar,
        summary=data["summary"], log_patterns=dict(logs), recorded=recorded, feature=feature,
        capabilities=tuple(caps) if caps is not None else None,
        defines=tuple(data.get("defines", ())),
        not_on_host=data.get("not_on_host"),
    )


def _check_outcome(value: Any, fail) -> None:
    if value not in OUTCOMES:
        raise fail(f"outcome {value!r} is not one of {', '.join(OUTCOMES)}")


# ----------------------------------------------------------------------------- judging

@dataclass
class Judgement:
    """A verdict against what was expected of it on that kernel."""

    verdict: ObjectVerdict
    expected: Expectation
    problems: list[str]

    @property
    def held(self) -> bool:
        return not self.problems


def judge(verdict: ObjectVerdict, kernel_id: str, case: Case | None, expect: str | None,
          target=None) -> Judgement:
    """``--expect`` if given, else the corpus case's expectation for the kernel, else accepted."""
    if expect:
        expected = Expectation(expect, "--expect")
    else:
        expected = (case.expectation(kernel_id, verdict.kernel_release, target) if case is not None else None) \
            or Expectation("accepted", "default (no --expect, not a corpus case)")
    if case is not None and not expect:
        problems = case.check(verdict, expected)
    elif verdict.outcome != expected.outcome:
        problems = [f"outcome {verdict.outcome}, expected {expected.outcome}"]
    else:
        problems = []
    return Judgement(verdict, expected, problems)


# ----------------------------------------------------------------------------- recording

def record(case: Case, kernel_id: str, verdict: ObjectVerdict) -> None:
    """Write ``verdict`` as the case's record for ``kernel_id`` (the [kernels] table is
    regenerated; everything above it in the sidecar is kept as written). An outcome whose
    evidence does not match the case's pattern is refused: it did not show what the case is about."""
    problem = case.evidence_problem(verdict)
    if problem:
        raise CorpusError(f"{case.name} on {verdict.kernel_release} not recorded: {problem}; fix the "
                          f"case (source or [log] pattern in {case.sidecar.name}) first")
    insns = (processed_insns(verdict) or None) if verdict.outcome == "accepted" else None
    case.recorded[kernel_id] = Record(verdict.outcome, verdict.key_line, verdict.kernel_release, insns)
    text = case.sidecar.read_text()
    head = text.split(KERNELS_HEADER, 1)[0].rstrip() + "\n\n"
    if KERNELS_HEADER not in text:
        head = text.rstrip() + "\n\n"
    lines = [KERNELS_HEADER, "# Measured: sockredir-lab verify bpf/cases/"
             f"{case.name}{SOURCE_SUFFIX} --kernel all --record"]
    for kernel in sorted(case.recorded, key=lambda k: kernel_version(k) or (999, 0)):
        rec = case.recorded[kernel]
        fields = [f"outcome = {_toml_str(rec.outcome)}"]
        if rec.key_line:
            fields.append(f"key_line = {_toml_str(rec.key_line)}")
        if rec.release:
            fields.append(f"release = {_toml_str(rec.release)}")
        if rec.insns:
            fields.append("insns = { " + ", ".join(f"{p} = {n}" for p, n in sorted(rec.insns.items())) + " }")
        lines.append(f"{_toml_str(kernel)} = {{ {', '.join(fields)} }}")
    case.sidecar.write_text(head + "\n".join(lines) + "\n")


def _toml_str(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


# ----------------------------------------------------------------------------- verifier statistics

STATS_FILE = CASES_DIR / "stats.toml"
STATS_HEADER = """\
# Verifier work of the redirect's programs: "processed N insns" (the same figure as the kernel's
# verified_insns) per program, per kernel, for objects built by the compiler named below.
# tests/integration/test_verifier_cases.py compares every run with these figures exactly: any
# change (a complexity regression, a verifier change, another compiler) fails until it is
# reviewed and re-recorded with
#   SOCKREDIR_RECORD_VERIFIER_STATS=1 pytest tests/integration/test_verifier_cases.py -k statistics
# The host's figures carry the release they were measured on."""


@dataclass
class RecordedStats:
    compiler: str | None                           # `clang --version` of the recorded objects
    figures: dict[str, dict[str, dict[str, Any]]]  # variant -> kernel -> program -> processed insns

    def lookup(self, variant: str, kernel_id: str) -> dict[str, Any] | None:
        return self.figures.get(variant, {}).get(kernel_id)

    def differences(self, variant: str, kernel_id: str, release: str,
                    measured: dict[str, int], compiler: str) -> list[str] | None:
        """What differs from the record, exactly (empty: nothing); None when nothing is recorded
        for this kernel (or, for the host, for this release)."""
        recorded = self.lookup(variant, kernel_id)
        if recorded is None or ("release" in recorded and recorded["release"] != release):
            return None
        if self.compiler and compiler != self.compiler:
            return [f"recorded for objects built by {self.compiler!r}, these were built by "
                    f"{compiler!r}: re-record after a review of the figures"]
        programs = {name: count for name, count in recorded.items() if name != "release"}
        if set(programs) != set(measured):
            return [f"programs changed: {sorted(measured)} vs recorded {sorted(programs)}"]
        return [f"{name}: {measured[name]} insns, recorded {count}"
                for name, count in sorted(programs.items()) if measured[name] != count]


def load_stats(path: Path = STATS_FILE) -> RecordedStats:
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise CorpusError(f"{path}: cannot read the recorded verifier statistics ({exc}); "
                          "restore it from git or re-record it (docs/verifier.md)") from exc
    compiler = data.pop("compiler", None)
    data.pop("tolerance", None)  # the old band: figures are compared exactly now
    return RecordedStats(compiler, data)


def record_stats(variant: str, kernel_id: str, figures: dict[str, int], compiler: str,
                 release: str | None = None, path: Path = STATS_FILE) -> None:
    """Set the figures of one variant on one kernel (the file is regenerated). Figures made by
    another compiler than the recorded ones are all dropped: they describe other objects."""
    stats = load_stats(path) if path.exists() else RecordedStats(None, {})
    if stats.compiler != compiler:
        stats = RecordedStats(compiler, {})
    entry: dict[str, Any] = dict(sorted(figures.items()))
    if release:
        entry["release"] = release
    stats.figures.setdefault(variant, {})[kernel_id] = entry
    out = [STATS_HEADER, "", f"compiler = {_toml_str(compiler)}"]
    for name in sorted(stats.figures):
        out += ["", f"[{name}]"]
        for kernel in sorted(stats.figures[name], key=lambda k: kernel_version(k) or (999, 0)):
            fields = ", ".join(f"{p} = {_toml_str(n) if isinstance(n, str) else n}"
                               for p, n in stats.figures[name][kernel].items())
            out.append(f"{_toml_str(kernel)} = {{ {fields} }}")
    path.write_text("\n".join(out) + "\n")
