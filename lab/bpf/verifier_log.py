"""Read what ``bpftool -d prog loadall`` printed: libbpf's debug output and the verifier's logs.

Two readings, each done only here so that every caller gets the same answer:

* libbpf's debug output -> per program: its section, its verifier log (between ``-- BEGIN PROG LOAD
  LOG --`` and ``-- END PROG LOAD LOG --``), whether it failed to load (and the errno) or was skipped;
* one verifier log -> its *key line* (why the verifier rejected the program) and its closing
  statistics (``processed N insns ...``, stack depth, verification time).

The redirect installer (``lab.bpf.redirect``) turns a rejection into an exception with the key line;
the verification survey (``lab.bpf.verify``) records it per kernel in the corpus. Both must agree,
so neither parses the output itself. The formats are libbpf 1.1 (bpftool 7.1) and the verifier of
kernels 5.10 to 7.2; ``tests/unit/verifier_logs`` holds real captures of each.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# libbpf's debug output (libbpf 1.1, as in bpftool 7.1).
FOUND_RE = re.compile(r"^libbpf: sec '(?P<section>[^']*)': found program '(?P<name>[^']+)'", re.M)
# Anchored at line starts: only libbpf's own END line closes a log.
LOG_RE = re.compile(r"^libbpf: prog '(?P<name>[^']+)': -- BEGIN PROG LOAD LOG --\n(?P<log>.*?)"
                    r"^-- END PROG LOAD LOG --$", re.M | re.S)
FAILED_RE = re.compile(r"^libbpf: prog '(?P<name>[^']+)': failed to load: (?P<err>-?\d+)", re.M)
SKIPPED_RE = re.compile(r"^libbpf: prog '(?P<name>[^']+)': skipped loading", re.M)

# The verifier's closing statistics. Kernels print them in different orders (7.2 adds
# "insns processed N" before the classic line), so the first of any of them ends the reasoning.
STATS_START_RE = re.compile(r"^(verification time|stack depth|processed \d+ insns|insns processed)")
STATS_RE = re.compile(r"^processed (?P<insns>\d+) insns \(limit \d+\)(?: max_states_per_insn (?P<max>\d+)"
                      r" total_states (?P<total>\d+) peak_states (?P<peak>\d+))?", re.M)
STACK_RE = re.compile(r"^stack depth (?P<depth>[\d+ ]+)", re.M)
TIME_RE = re.compile(r"^verification time (?P<usec>\d+) usec", re.M)
# Lines about the verifier's own bookkeeping, never about the program: the subprogram list
# ("func#0 @0"), the liveness table header (6.15+), precision backtracking ("mark_precise: ..."),
# and 6.18's stack-liveness pass ("(0) live stack update done in 2 iterations"), which 6.18 prints
# after a program's last exit, right before the statistics.
TRACE_RE = re.compile(r"^(func#\d|Live regs before insn|mark_precise:|\(\d+\) )")


@dataclass
class VerifierStats:
    """The verifier's closing statistics of one program (any field may be missing)."""

    processed_insns: int | None = None
    total_states: int | None = None
    peak_states: int | None = None
    stack_depth: str | None = None  # "40", or "8+16" with subprograms
    verification_usec: int | None = None


@dataclass
class ParsedLoad:
    """What one ``bpftool -d prog loadall`` said, program by program."""

    programs: list[tuple[str, str]]  # (section, name) in the object's order
    logs: dict[str, str]  # name -> verifier log; libbpf asks for one on success too (-d)
    failed: dict[str, int]  # name -> errno of BPF_PROG_LOAD (negative)
    skipped: set[str]  # autoload off ("?section")

    @property
    def reached_kernel(self) -> bool:
        return bool(self.logs or self.failed)


def parse_loadall(output: str) -> ParsedLoad:
    return ParsedLoad(
        programs=[(m["section"], m["name"]) for m in FOUND_RE.finditer(output)],
        logs={m["name"]: m["log"] for m in LOG_RE.finditer(output)},
        failed={m["name"]: int(m["err"]) for m in FAILED_RE.finditer(output)},
        skipped={m["name"] for m in SKIPPED_RE.finditer(output)},
    )


def key_line(log: str) -> str | None:
    """The verifier's reason in the log of a rejected program: the last line before its closing
    statistics (the verifier stops right after printing it), bookkeeping lines aside. For an
    accepted program it is merely the last line verified. None for a log with no such line."""
    reasoning = []
    for line in log.splitlines():
        if STATS_START_RE.match(line):
            break
        if line.strip() and not TRACE_RE.match(line):
            reasoning.append(line.strip())
    return reasoning[-1] if reasoning else None


def verifier_stats(log: str) -> VerifierStats:
    stats = VerifierStats()
    match = STATS_RE.search(log)
    if match:
        stats.processed_insns = int(match["insns"])
        if match["total"] is not None:
            stats.total_states = int(match["total"])
            stats.peak_states = int(match["peak"])
    stack = STACK_RE.search(log)
    if stack:
        stats.stack_depth = stack["depth"].strip()
    took = TIME_RE.search(log)
    if took:
        stats.verification_usec = int(took["usec"])
    return stats
