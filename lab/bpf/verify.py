"""Load every program of a BPF object on a target and say what the kernel thought of each.

One object, one target, three possible outcomes:

* ``accepted``: the verifier accepted every program (each pinned, then unpinned again);
* ``rejected``: the kernel refused at least one program at BPF_PROG_LOAD (the verifier's log says
  why; its *key line* is the last line of reasoning before the statistics);
* ``refused``: libbpf (inside bpftool) gave up before any program reached the kernel: legacy
  ``maps`` section, unsupported map type, bad ELF. There is no verifier log, only libbpf's words.

The load is ``bpftool -d prog loadall``: ``-d`` makes libbpf ask for the verifier log of every
program, accepted ones included, so the statistics line (``processed N insns ...``) is there for
all of them. libbpf stops at the first rejected program; the programs after it are then verified
one by one, each in a copy of the object whose other program sections are renamed ``?<section>``
(libbpf's "do not autoload" prefix; ``llvm-objcopy`` renames, relocations follow the section
index). ``verified_insns`` comes from the kernel: bpftool's JSON when it prints it, else the
program's fdinfo (``scenarios/bpf_prog_info.py``; kernel 5.16+). bpftool's output and the logs
are parsed by ``lab.bpf.verifier_log``, the same parser the redirect installer uses.

bpftool's output is written to a file on the target and fetched with ``Target.get``, not read
from the command's stderr stream: the stream can end early over SSH, a file cannot.
"""

from __future__ import annotations

import json
import posixpath
import re
import secrets
import shlex
import subprocess
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable

from lab import SCENARIOS_DIR, LabError
from lab.bpf.pins import PIN_PARENT, ensure_bpffs
from lab.bpf.verifier_log import ParsedLoad, VerifierStats, key_line, parse_loadall, verifier_stats
from lab.vm.target import Target

OUTCOMES = ("accepted", "rejected", "refused")
LOAD_TIMEOUT = 300  # seconds for one bpftool run; a big program under TCG takes a few
OBJCOPY = "llvm-objcopy"
PROG_INFO_SCRIPT = SCENARIOS_DIR / "bpf_prog_info.py"
RUN_DIR = "/run/sockredir-lab/verify"

# libbpf/bpftool lines that report a failure but are not its reason.
GENERIC_FAILURE_RE = re.compile(r"^(Error: failed to (open|load) object file|libbpf: failed to load object|"
                                r"Warning: bpftool is now running in libbpf strict mode|"
                                r"If it used to work for this object file)")
REASON_HINT_RE = re.compile(r"not supported|failed|error|invalid|unknown|unrecognized|cannot|can't|"
                            r"unsupported|missing|too (big|large|many)|\bno\b", re.I)
ERRNO_NAMES = {1: "EPERM", 7: "E2BIG", 13: "EACCES", 14: "EFAULT", 22: "EINVAL", 28: "ENOSPC",
               95: "EOPNOTSUPP", 524: "ENOTSUPP"}


# ----------------------------------------------------------------------------- results

@dataclass
class ProgramVerdict:
    name: str
    section: str
    outcome: str  # accepted | rejected | skipped (autoload off) | not-loaded (object refused)
    key_line: str | None = None
    errno: int | None = None
    stats: VerifierStats = field(default_factory=VerifierStats)
    verified_insns: int | None = None  # the kernel's count (bpftool or fdinfo), accepted only
    solo: bool = False  # verified in a copy of the object without the other programs
    log: str = ""

    @property
    def processed_insns(self) -> int | None:
        return self.stats.processed_insns


@dataclass
class ObjectVerdict:
    object: str
    target: str
    kernel_release: str
    outcome: str
    key_line: str | None
    programs: list[ProgramVerdict]
    capabilities: tuple[str, ...] | None = None
    bpftool_output: str = ""
    solo_outputs: dict[str, str] = field(default_factory=dict)  # section -> bpftool output

    def program(self, name: str) -> ProgramVerdict:
        for prog in self.programs:
            if prog.name == name:
                return prog
        raise KeyError(f"{self.object} has no program {name!r} (has {[p.name for p in self.programs]})")

    @property
    def rejected(self) -> list[ProgramVerdict]:
        return [p for p in self.programs if p.outcome == "rejected"]

    def evidence(self) -> str:
        """The text that shows the outcome: the first rejected program's verifier log, libbpf's
        output for a refusal, every program's log for an accepted object."""
        if self.outcome == "rejected":
            return self.rejected[0].log
        if self.outcome == "refused":
            return self.bpftool_output
        return "\n".join(p.log for p in self.programs)

    def as_dict(self, with_logs: bool = False) -> dict:
        data = asdict(self)
        if not with_logs:
            data.pop("bpftool_output")
            data.pop("solo_outputs")
            for prog in data["programs"]:
                prog.pop("log")
        return data


# ----------------------------------------------------------------------------- verdicts

def refusal_reason(output: str) -> str:
    """Why libbpf gave up before the kernel saw a program: its first line that says so."""
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    candidates = [ln for ln in lines if not GENERIC_FAILURE_RE.match(ln)]
    for line in candidates:
        if REASON_HINT_RE.search(line.removeprefix("libbpf: ")):
            return line.removeprefix("libbpf: ")
    return (candidates or lines or ["bpftool printed nothing"])[-1].removeprefix("libbpf: ")


def errno_text(err: int | None) -> str:
    if err is None:
        return "unknown error"
    return ERRNO_NAMES.get(abs(err), f"errno {abs(err)}")


def program_verdicts(parsed: ParsedLoad, rc: int) -> list[ProgramVerdict]:
    """Verdicts of the programs this load got to; the ones after a rejection are absent."""
    verdicts = []
    for section, name in parsed.programs:
        log = parsed.logs.get(name, "")
        if name in parsed.skipped:
            verdicts.append(ProgramVerdict(name, section, "skipped"))
        elif name in parsed.failed:
            err = parsed.failed[name]
            reason = key_line(log) or f"the kernel refused the program with {errno_text(err)} and no verifier log"
            verdicts.append(ProgramVerdict(name, section, "rejected", reason, err, verifier_stats(log), log=log))
        elif name in parsed.logs and (rc == 0 or parsed.failed):
            # Loaded before another program failed (libbpf then unloads it), or all loaded.
            verdicts.append(ProgramVerdict(name, section, "accepted", None, None, verifier_stats(log), log=log))
    return verdicts


# ----------------------------------------------------------------------------- loading

@dataclass
class RawLoad:
    rc: int
    output: str
    pin_dir: str


def verify_object(target: Target, obj: Path, capabilities: Iterable[str] | None = None,
                  timeout: float = LOAD_TIMEOUT) -> ObjectVerdict:
    """Load every program of ``obj`` on ``target``; nothing stays loaded or pinned afterwards.

    ``capabilities`` (e.g. ``["bpf", "net_admin"]``) runs bpftool with only those capabilities
    (bounding set), as a loader that is not fully privileged; default: full root.
    """
    obj = Path(obj)
    caps = tuple(capabilities) if capabilities is not None else None
    session = _Session(target, caps, timeout)
    try:
        first = session.load(obj)
        parsed = parse_loadall(first.output)
        if first.rc != 0 and not parsed.reached_kernel:
            reason = refusal_reason(first.output)
            programs = [ProgramVerdict(name, section, "not-loaded") for section, name in parsed.programs]
            return ObjectVerdict(obj.name, target.name, target.kernel_release, "refused", reason,
                                 programs, caps, first.output)
        verdicts = program_verdicts(parsed, first.rc)
        if first.rc == 0:
            _check_all_loaded(parsed, verdicts, first)
            session.add_verified_insns(verdicts, first.pin_dir)
        else:
            verdicts += session.verify_rest(obj, parsed, {v.name for v in verdicts})
        order = {name: i for i, (_, name) in enumerate(parsed.programs)}
        verdicts.sort(key=lambda v: order.get(v.name, len(order)))
        rejected = [v for v in verdicts if v.outcome == "rejected"]
        outcome = "rejected" if rejected else "accepted"
        return ObjectVerdict(obj.name, target.name, target.kernel_release, outcome,
                             rejected[0].key_line if rejected else None, verdicts, caps, first.output,
                             session.solo_outputs)
    finally:
        session.cleanup()


def _check_all_loaded(parsed: ParsedLoad, verdicts: list[ProgramVerdict], raw: RawLoad) -> None:
    if not parsed.programs:
        raise LabError(f"bpftool loaded the object but libbpf listed no programs; is it a BPF object "
                       f"with SEC(\"...\") programs?\n{raw.output[-2000:]}")
    missing = {name for _, name in parsed.programs} - {v.name for v in verdicts}
    if missing:
        raise LabError(f"bpftool succeeded but printed no verifier log for {sorted(missing)}; "
                       f"bpftool -d must print the logs (bpftool 7.x)")


class _Session:
    """The target-side state of one verification: a work directory and a bpffs pin directory."""

    def __init__(self, target: Target, capabilities: tuple[str, ...] | None, timeout: float):
        self.target = target
        self.capabilities = capabilities
        self.timeout = timeout
        token = secrets.token_hex(4)
        self.workdir = f"{RUN_DIR}/{token}"
        self.pin_root = posixpath.join(ensure_bpffs(target), PIN_PARENT, f"verify-{token}")
        self.loads = 0
        self.solo_outputs: dict[str, str] = {}
        self._local = tempfile.TemporaryDirectory(prefix="sockredir-verify-")
        target.make_dirs(self.workdir)
        target.make_dirs(self.pin_root)

    def load(self, obj: Path) -> RawLoad:
        self.loads += 1
        remote_obj = f"{self.workdir}/{self.loads}-{obj.name}"
        pin_dir = f"{self.pin_root}/{self.loads}"
        out = f"{self.workdir}/{self.loads}.out"
        self.target.put(obj, remote_obj)
        bpftool = ["timeout", str(int(self.timeout)), "bpftool", "-d", "prog", "loadall", remote_obj, pin_dir]
        if self.capabilities is not None:
            bounding = ",".join(["-all"] + [f"+{cap}" for cap in self.capabilities])
            bpftool = ["setpriv", f"--bounding-set={bounding}", *bpftool]
        # Raising RLIMIT_MEMLOCK needs CAP_SYS_RESOURCE: done here, before capabilities drop
        # (kernels before 5.11 charge maps and programs to it).
        script = (f"ulimit -l unlimited 2>/dev/null; {shlex.join(bpftool)} >{out} 2>&1; "
                  f"echo $? >{out}.rc")
        self.target.run(["sh", "-c", script], timeout=self.timeout + 60, check=True)
        rc = int(self._fetch(f"{out}.rc").strip())
        output = self._fetch(out)
        if rc == 124:
            raise LabError(f"bpftool did not finish loading {obj.name} within {self.timeout:.0f}s on "
                           f"{self.target.name}; output so far:\n{output[-2000:]}")
        if "setpriv:" in output:
            raise LabError(f"setpriv could not limit capabilities to {self.capabilities} on "
                           f"{self.target.name}: {output.strip()[:500]}")
        return RawLoad(rc, output, pin_dir)

    def _fetch(self, remote: str) -> str:
        local = Path(self._local.name) / posixpath.basename(remote)
        self.target.get(remote, local)
        return local.read_text(errors="replace")

    def verify_rest(self, obj: Path, parsed: ParsedLoad, known: set[str]) -> list[ProgramVerdict]:
        """Programs libbpf never got to (it stops at the first rejection), one section at a time."""
        sections = [s for s, _ in parsed.programs]
        verdicts = []
        for section in dict.fromkeys(s for s, name in parsed.programs if name not in known):
            solo_obj = only_section(obj, section, sections, Path(self._local.name))
            raw = self.load(solo_obj)
            self.solo_outputs[section] = raw.output
            solo = parse_loadall(raw.output)
            mine = [v for v in program_verdicts(solo, raw.rc) if v.section.lstrip("?") == section
                    and v.outcome != "skipped"]
            if raw.rc == 0:
                self.add_verified_insns(mine, raw.pin_dir)
            for verdict in mine:
                verdict.solo = True
                verdict.section = section
            verdicts += mine
        return verdicts

    def add_verified_insns(self, verdicts: list[ProgramVerdict], pin_dir: str) -> None:
        pins = {v.name: f"{pin_dir}/{v.name}" for v in verdicts if v.outcome == "accepted"}
        if not pins:
            return
        for name, pin in pins.items():
            shown = self.target.run(["bpftool", "-j", "prog", "show", "pinned", pin])
            if shown.ok and "verified_insns" in shown.stdout:
                _set_verified(verdicts, name, json.loads(shown.stdout).get("verified_insns"))
        if all(v.verified_insns is not None for v in verdicts if v.name in pins):
            return
        script = f"{self.workdir}/bpf_prog_info.py"
        self.target.put(PROG_INFO_SCRIPT, script)
        info = self.target.run(["python3", script, *pins.values()], timeout=60)
        if not info.ok:
            return  # no python3 on the target: verified_insns stays unknown
        report = json.loads(info.stdout or "{}")
        for name, pin in pins.items():
            _set_verified(verdicts, name, report.get(pin, {}).get("verified_insns"))

    def cleanup(self) -> None:
        # Unpinning frees the programs and maps: nothing else holds them. The parent directory
        # goes only when empty (an installed redirect may pin there too).
        self.target.run(["rm", "-rf", self.pin_root, self.workdir])
        self.target.remove_dir(posixpath.dirname(self.pin_root))
        self._local.cleanup()


def _set_verified(verdicts: list[ProgramVerdict], name: str, value) -> None:
    for verdict in verdicts:
        if verdict.name == name and isinstance(value, int):
            verdict.verified_insns = value


def only_section(obj: Path, keep: str, sections: list[str], outdir: Path) -> Path:
    """A copy of ``obj`` in which only the programs of section ``keep`` load automatically."""
    out = outdir / f"{obj.name.removesuffix('.o')}.only-{re.sub(r'[^A-Za-z0-9_.-]+', '_', keep)}.o"
    renames = []
    for section in dict.fromkeys(sections):
        if section != keep and not section.startswith("?"):
            renames += ["--rename-section", f"{section}=?{section}"]
    try:
        proc = subprocess.run([OBJCOPY, *renames, str(obj), str(out)], capture_output=True, text=True)
    except FileNotFoundError as exc:
        raise LabError(f"{OBJCOPY} is not installed; it is needed to verify the programs after a "
                       "rejected one: `apt-get install llvm`") from exc
    if proc.returncode != 0:
        raise LabError(f"{OBJCOPY} could not split {obj} at section {keep}: {proc.stderr.strip()}")
    return out


# ----------------------------------------------------------------------------- logs

def save_logs(verdict: ObjectVerdict, directory: Path) -> None:
    """bpftool's whole output, one verifier log per program, and the verdict as JSON."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "bpftool-loadall.txt").write_text(verdict.bpftool_output)
    for section, output in verdict.solo_outputs.items():
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", section)
        (directory / f"bpftool-loadall-only-{safe}.txt").write_text(output)
    for prog in verdict.programs:
        if prog.log:
            (directory / f"{prog.name}.log").write_text(prog.log)
    (directory / "verdict.json").write_text(json.dumps(verdict.as_dict(), indent=2) + "\n")


def full_log_path(verdict: ObjectVerdict, directory: Path) -> Path:
    if verdict.outcome == "rejected":
        return directory / f"{verdict.rejected[0].name}.log"
    return directory / "bpftool-loadall.txt"
