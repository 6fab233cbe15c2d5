"""The lab's bpffs: where pins go, loading an object with every program and map pinned, what is
pinned under a directory, and why a load failed (the verifier, or libbpf before it).

Every object the lab loads goes through ``load`` (the redirect's variants, a user's program, the
API's ``api.load``), so the pin layout, the upload and the failure classification exist once:

    <bpffs>/sockredir-lab/<name>/progs/<program>    pinned programs (bpftool prog loadall)
    <bpffs>/sockredir-lab/<name>/maps/<map>         pinned maps (pinmaps)

New pins go to /sys/fs/bpf when it is a bpffs, else to a private bpffs the lab mounts; other bpffs
mounts (another tool's) are searched for the lab's pins but never receive new ones.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass
from pathlib import Path

from lab import LabError
from lab.bpf import cgroups
from lab.bpf import verifier_log
from lab.bpf.bpftool import bpftool_batch
from lab.vm.target import RUN_DIR, Result, Target

PRIVATE_BPFFS = f"{RUN_DIR}/bpffs"
PIN_PARENT = "sockredir-lab"


class LoadError(LabError):
    """bpftool could not load an object. ``stderr`` has libbpf's debug output."""

    def __init__(self, message: str, stderr: str, key_line: str):
        super().__init__(message)
        self.stderr = stderr
        self.key_line = key_line


class ObjectRefused(LoadError):
    """Refused before any program reached the verifier (libbpf parsing, map creation, ...)."""


class VerifierRejected(LoadError):
    """The verifier refused a program. ``log`` is its full log, ``key_line`` the reason."""

    def __init__(self, message: str, stderr: str, key_line: str, program: str, log: str):
        super().__init__(message, stderr, key_line)
        self.program = program
        self.log = log


@dataclass
class Program:
    name: str
    id: int
    type: str
    pin: str
    verified_insns: int | None = None


def bpffs_mounts(target: Target) -> list[str]:
    paths = [m.path for m in cgroups.mounts_of_type(target, "bpf")]
    # /sys/fs/bpf first (the usual place), our private mount last.
    return sorted(dict.fromkeys(paths), key=lambda p: (p != "/sys/fs/bpf", p == PRIVATE_BPFFS))


def ensure_bpffs(target: Target) -> str:
    """Where new pins go: /sys/fs/bpf if it is a bpffs, else a private bpffs the lab owns.

    Other bpffs mounts (another tool's) are searched for our pins but never receive new ones.
    """
    mounts = bpffs_mounts(target)
    for preferred in ("/sys/fs/bpf", PRIVATE_BPFFS):
        if preferred in mounts:
            return preferred
    target.make_dirs(PRIVATE_BPFFS)
    result = target.run(["mount", "-t", "bpf", "sockredir-bpffs", PRIVATE_BPFFS])
    cgroups.mounts(target, fresh=True)
    if not result.ok:
        raise LabError(f"no bpffs on {target.name} and mounting one at {PRIVATE_BPFFS} failed: "
                       f"{result.stderr.strip()}; mount one with `mount -t bpf bpf /sys/fs/bpf`")
    return PRIVATE_BPFFS



# ----------------------------------------------------------------------------- load

def classify_load_failure(result: Result, obj: str) -> LoadError:
    stderr = result.stderr
    parsed = verifier_log.parse_loadall(stderr)
    program = next(iter(parsed.failed), None)  # libbpf stops at its first failed program
    if program in parsed.logs:
        log = parsed.logs[program]
        reason = verifier_log.key_line(log) or "(empty verifier log)"
        return VerifierRejected(f"the verifier rejected program {program} of {obj}: {reason}\n"
                                f"(full log in the exception's .log)", stderr, reason, program, log)
    libbpf_lines = [ln for ln in stderr.splitlines()
                    if ln.startswith("libbpf:") and not ln.startswith(("libbpf: elf:", "libbpf: sec"))]
    notes = [ln for ln in stderr.splitlines() if re.search(r"not supported|failed|error|Error", ln)]
    reason = (notes or libbpf_lines or [stderr.strip() or f"bpftool exit {result.rc}"])[0].strip()
    return ObjectRefused(f"bpftool/libbpf refused {obj} before the verifier: {reason}", stderr, reason)


def load(target: Target, obj: Path, pin_dir: str) -> dict[str, Program]:
    """Load every program of ``obj`` and pin programs and maps under ``pin_dir``."""
    remote_obj = f"{RUN_DIR}/objects/{obj.name}"
    target.put(obj, remote_obj)
    target.make_dirs(pin_dir)
    result = target.run(["bpftool", "-d", "prog", "loadall", remote_obj, f"{pin_dir}/progs",
                         "pinmaps", f"{pin_dir}/maps"], timeout=300)
    if not result.ok:
        raise classify_load_failure(result, obj.name)
    programs, _ = pinned(target, pin_dir)
    for name, log in verifier_log.parse_loadall(result.stderr).logs.items():
        if name in programs and programs[name].verified_insns is None:
            programs[name].verified_insns = verifier_log.verifier_stats(log).processed_insns
    return programs


def pinned(target: Target, pin_dir: str) -> tuple[dict[str, Program], dict[str, dict]]:
    """The programs (name -> Program) and maps (name -> bpftool info) pinned under ``pin_dir``.

    One ``bpftool -f`` batch lists every program and map with its pin paths, instead of one call
    per pin."""
    prog_list, map_list = bpftool_batch(target, [["prog", "show"], ["map", "show"]], options=("-f",))
    programs = {name: Program(name, info["id"], info["type"], pin, info.get("verified_insns"))
                for name, (pin, info) in _under(prog_list, f"{pin_dir}/progs").items()}
    maps = {name: info for name, (_, info) in _under(map_list, f"{pin_dir}/maps").items()}
    return programs, maps


def pinned_maps(target: Target, pin_dir: str) -> dict[str, dict]:
    return pinned(target, pin_dir)[1]


def _under(listing: list[dict], directory: str) -> dict[str, tuple[str, dict]]:
    """name -> (pin path, info) of the objects of a ``bpftool -f ... show`` listing pinned in
    ``directory``."""
    return {posixpath.basename(pin): (pin, info)
            for info in listing for pin in info.get("pinned", []) if posixpath.dirname(pin) == directory}
