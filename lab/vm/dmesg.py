"""Kernel splats in a guest's dmesg: the one scanner the pytest plugin and the commands' per-kernel
loop (lab/per_kernel.py) share.

A warning, oops or sanitizer report during a test means the kernel misbehaved even if the test's
own checks passed (the libbpf CI and little-vm-helper treat them the same way), so a splat fails
the test or the suite's kernel.

A splat that is known and accepted on a kernel (a kernel bug outside what the lab tests, say)
goes into an allow-list (``images/splats-allowed.toml``, or your own file): each entry names the
kernel ids it applies to, a regular expression for the splat's first line, and why it is accepted.
An accepted splat is reported as such, never silently; every other splat still fails, so a known
one cannot hide a new one. The lines of a splat (its ``Call Trace:``) share the fate of its first
line, up to the kernel's ``---[ end trace`` marker.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from lab import IMAGES_DIR, LabError

SPLAT_RE = re.compile(r"\b(BUG:|WARNING:|Oops|KASAN|UBSAN|general protection fault|Call Trace:)")
# The first line of a splat; a "Call Trace:" belongs to the splat before it.
HEADER_RE = re.compile(r"\b(BUG:|WARNING:|Oops|KASAN|UBSAN|general protection fault)")
END_RE = re.compile(r"---\[ end trace")
ALLOWED_PATH = IMAGES_DIR / "splats-allowed.toml"


@dataclass(frozen=True)
class AllowedSplat:
    kernels: tuple[str, ...]  # kernel ids, or ("*",) for every kernel
    pattern: re.Pattern
    reason: str

    def accepts(self, kernel_id: str, line: str) -> bool:
        return ("*" in self.kernels or kernel_id in self.kernels) and bool(self.pattern.search(line))


@dataclass
class Scan:
    splats: list[str] = field(default_factory=list)                  # lines that fail the test
    accepted: list[tuple[str, str]] = field(default_factory=list)    # (line, why it is accepted)


def load_allowed(path: Path = ALLOWED_PATH) -> list[AllowedSplat]:
    """The allow-list in ``path``; a LabError names the file and the entry that cannot be used."""
    try:
        doc = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise LabError(f"splat allow-list {path}: {exc}") from None
    allowed = []
    for index, entry in enumerate(doc.get("splat", []), start=1):
        where = f"splat allow-list {path}, [[splat]] number {index}"
        kernels, pattern, reason = entry.get("kernels"), entry.get("pattern"), entry.get("reason")
        if not (isinstance(kernels, list) and kernels and all(isinstance(k, str) for k in kernels)):
            raise LabError(f"{where}: `kernels` must be a list of kernel ids (or [\"*\"])")
        if not isinstance(reason, str) or not reason.strip():
            raise LabError(f"{where}: `reason` must say why the splat is accepted (a bug report, a commit)")
        try:
            compiled = re.compile(pattern)
        except (re.error, TypeError) as exc:
            raise LabError(f"{where}: `pattern` is not a regular expression: {exc}") from None
        allowed.append(AllowedSplat(tuple(kernels), compiled, reason))
    return allowed


def scan(dmesg: str, kernel_id: str = "", allowed: list[AllowedSplat] | tuple = ()) -> Scan:
    """The splat lines of ``dmesg``, split into those that fail and those the allow-list accepts."""
    result, accepted_by = Scan(), None
    for line in dmesg.splitlines():
        if END_RE.search(line):
            accepted_by = None
            continue
        if not SPLAT_RE.search(line):
            continue
        if HEADER_RE.search(line):
            accepted_by = next((a for a in allowed if a.accepts(kernel_id, line)), None)
        if accepted_by is None:
            result.splats.append(line)
        else:
            result.accepted.append((line, accepted_by.reason))
    return result

