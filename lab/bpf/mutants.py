"""Deliberately broken variants of the production redirect: each ``bpf/mutants/NAME.patch`` is a
unified diff against ``bpf/sockredir.bpf.c`` / ``bpf/sockredir.h`` with a header saying what it
breaks. A check that cannot tell a mutant from the real program is a hole in the checks; the
mutant run (``lab.scenario.mutant_runs``, ``sockredir-lab mutants``) shows every mutant killed.

Header fields (lines before the diff; ``patch`` ignores them)::

    Mutant: swapped_key
    Base: production            # or netns: the variant whose build the patch breaks
    Breaks: what is wrong, in words (may continue on indented lines)
    Verifier: 5.10 = rejected 'regex'   # optional, repeatable: kernels whose verifier refuses it
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from lab import BPF_DIR, LabError
from lab.bpf import build as bpf_build
from lab.bpf import redirect
from lab.cache import atomic_dir, cache_dir, digest_of

MUTANTS_DIR = BPF_DIR / "mutants"
PATCHED_FILES = ("sockredir.bpf.c", "sockredir.h")
BASES = ("production", "netns")


@dataclass(frozen=True)
class Mutant:
    name: str
    base: str
    breaks: str
    patch: Path
    rejected_on: dict[str, str] = field(default_factory=dict)  # kernel id -> verifier log regex

    def expected_rejection(self, kernel_id: str) -> str | None:
        return self.rejected_on.get(kernel_id)


def load_mutants(directory: Path = MUTANTS_DIR) -> list[Mutant]:
    mutants = [parse(path) for path in sorted(Path(directory).glob("*.patch"))]
    if not mutants:
        raise LabError(f"no mutants in {directory} (NAME.patch files)")
    return mutants


def by_name(name: str, directory: Path = MUTANTS_DIR) -> Mutant:
    for mutant in load_mutants(directory):
        if mutant.name == name:
            return mutant
    known = ", ".join(m.name for m in load_mutants(directory))
    raise LabError(f"no mutant {name!r}; the mutants are {known}")


def parse(path: Path) -> Mutant:
    """A mutant from its patch file's header."""
    header = path.read_text().split("\n--- ", 1)[0]
    fields: dict[str, list[str]] = {}
    key = None
    for line in header.splitlines():
        match = re.match(r"([A-Z][a-z]+):\s*(.*)$", line)
        if match:
            key = match.group(1)
            fields.setdefault(key, []).append(match.group(2).strip())
        elif line.startswith((" ", "\t")) and key and line.strip():
            fields[key][-1] += " " + line.strip()

    def one(name: str) -> str:
        values = fields.get(name)
        if not values or not values[0]:
            raise LabError(f"{path}: the header has no `{name}:` line (see lab/bpf/mutants.py)")
        return values[0]

    name, base = one("Mutant"), one("Base")
    if name != path.stem:
        raise LabError(f"{path}: `Mutant: {name}` differs from the file name; name the file {name}.patch")
    if base not in BASES:
        raise LabError(f"{path}: Base {base!r} is not one of {', '.join(BASES)}")
    rejected = {}
    for rule in fields.get("Verifier", []):
        match = re.match(r"(\S+)\s*=\s*rejected\s+'(.+)'$", rule)
        if not match:
            raise LabError(f"{path}: `Verifier: {rule}` is not `KERNEL = rejected 'regex'`")
        rejected[match.group(1)] = match.group(2)
    return Mutant(name, base, one("Breaks"), path, rejected)


def patched_source(mutant: Mutant) -> Path:
    """The production source with the mutant's patch applied, in the cache (once per content)."""
    originals = [BPF_DIR / name for name in PATCHED_FILES]
    key = digest_of([mutant.patch, *originals])
    directory = cache_dir("mutants") / f"{mutant.name}-{key}"
    if not directory.exists():
        with atomic_dir(directory) as tmp:
            for original in originals:
                shutil.copyfile(original, tmp / original.name)
            done = subprocess.run(["patch", "-p1", "--quiet", "--batch", "-d", str(tmp),
                                   "-i", str(mutant.patch)], capture_output=True, text=True)
            if done.returncode != 0:
                raise LabError(f"{mutant.patch} no longer applies to {', '.join(PATCHED_FILES)} "
                               f"({(done.stdout + done.stderr).strip()[-500:]}); regenerate it "
                               "against the current source")
    return directory / PATCHED_FILES[0]


def build(mutant: Mutant, variant: str, max_entries: int | None = None) -> Path:
    """The mutant's object for ``variant`` (production or netns: the same source, as in
    ``lab.bpf.redirect.SOURCES``)."""
    defines = list(redirect.SOURCES[variant].defines)
    if max_entries is not None:
        defines.append(f"SOCKREDIR_MAX_ENTRIES={int(max_entries)}")
    return bpf_build.build(patched_source(mutant), defines)
