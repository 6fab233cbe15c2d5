"""The lab's guest-side programs (``scenarios/``) on a target: copied once per content and session.

Every command that runs one of them on a target (the scenarios, the conformance probes, the
applications' driver, the tracefs helper, the link-attach helper) asks ``ensure_on_target`` for its
path there; a file changed on the host is copied again. It lives this low so that every layer that
runs something on a target can use it without reaching up into the scenario layer.
"""

from __future__ import annotations

import hashlib
import weakref

from lab import SCENARIOS_DIR, LabError
from lab.vm.target import RUN_DIR, Target

SCENARIOS_ON_TARGET = f"{RUN_DIR}/scenarios"
SHARED_FILES = ("common.py",)   # imported by the other guest-side programs

# target -> {file name: sha256 of the copy on it}; copies are refreshed when the file changes.
_copied: "weakref.WeakKeyDictionary[Target, dict[str, str]]" = weakref.WeakKeyDictionary()


def ensure_on_target(target: Target, filename: str) -> str:
    """Copy ``scenarios/<filename>`` to the target unless this session already did; its remote path."""
    local = SCENARIOS_DIR / filename
    if not local.is_file():
        raise LabError(f"no scenario file {local}; the scenarios are {', '.join(available())}")
    digest = hashlib.sha256(local.read_bytes()).hexdigest()
    remote = f"{SCENARIOS_ON_TARGET}/{filename}"
    done = _copied.setdefault(target, {})
    if done.get(filename) != digest:
        target.put(local, remote)
        done[filename] = digest
    return remote


def ensure_with_shared(target: Target, filename: str) -> str:
    """``ensure_on_target`` for a program that imports the shared module(s)."""
    for shared in SHARED_FILES:
        ensure_on_target(target, shared)
    return ensure_on_target(target, filename)


def available() -> list[str]:
    """Scenario programs (not the shared module nor pair.py's one-connection driver)."""
    return sorted(p.stem for p in SCENARIOS_DIR.glob("*.py") if p.stem not in ("common", "pair"))
