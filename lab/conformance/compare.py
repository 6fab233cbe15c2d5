"""Two conformance matrices side by side: the cells whose outcome differs, with what each side saw.

What a kernel fix is proven by (issue 23): the stock and the patched kernel's matrices in one
command, "the fix flipped these cells and nothing else". A side is a matrix this run measured or
one read back from a ``conformance --json`` document (one kernel's cells).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

from lab import LabError
from lab.conformance.defects import Defect


@dataclass(frozen=True)
class Difference:
    behaviour: str
    situation: str
    a_status: str | None      # None: the cell is missing on that side
    b_status: str | None
    a_observed: object
    b_observed: object

    def as_dict(self) -> dict:
        return asdict(self)


def differences(a: list[dict], b: list[dict]) -> list[Difference]:
    """Cells (as ``Cell.as_dict()``) that differ between the sides by status or observation, in
    the order of side ``a`` (cells only one side has come last)."""
    a_cells = {(c["behaviour"], c["situation"]): c for c in a}
    b_cells = {(c["behaviour"], c["situation"]): c for c in b}
    found = []
    for key in list(a_cells) + [k for k in b_cells if k not in a_cells]:
        left, right = a_cells.get(key), b_cells.get(key)
        if left and right and left["status"] == right["status"] and left["observed"] == right["observed"]:
            continue
        found.append(Difference(*key, left and left["status"], right and right["status"],
                                left and left["observed"], right and right["observed"]))
    return found


def read_side(path: Path) -> tuple[str, list[dict]]:
    """(kernel, cells) of a ``conformance --json`` document that holds one kernel's matrix."""
    try:
        doc = json.loads(Path(path).read_text())
        cells = doc["results"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise LabError(f"{path} is not a conformance document ({exc}); write one with "
                       "`sockredir-lab conformance --kernel ID --json FILE`") from None
    kernels = sorted({cell["kernel"] for cell in cells})
    if len(kernels) != 1:
        raise LabError(f"{path} holds the matrices of {', '.join(kernels) or 'no kernel'}; compare "
                       "documents of one kernel each (conformance --kernel ID --json FILE)")
    return kernels[0], cells


def format_differences(a_name: str, b_name: str, found: list[Difference], compared: int) -> str:
    lines = [f"{a_name} -> {b_name}: {len(found)} of {compared} cells differ"]
    for diff in found:
        lines.append(f"  {diff.behaviour} [{diff.situation}]: {diff.a_status} -> {diff.b_status}")
        lines.append(f"      {a_name}: {diff.a_observed}")
        lines.append(f"      {b_name}: {diff.b_observed}")
    return "\n".join(lines)


def fixed_between(a_patches: frozenset[str], b_patches: frozenset[str], known: Sequence[Defect]) -> list[Defect]:
    """The defects side ``b``'s kernel patches fix and side ``a``'s do not."""
    return [d for d in known if d.fix_patch and d.fix_patch in b_patches and d.fix_patch not in a_patches]


def judge_fix(a_cells: list[dict], b_cells: list[dict], found: list[Difference],
              fixed: Sequence[Defect]) -> list[str]:
    """What keeps ``found`` from proving "the fixes flipped their cells and nothing else": a
    difference no fix explains, or a fixed defect's xfail cell that did not become a pass.

    Explained: xfail -> pass in a behaviour and situation a fixed defect covers, and xpass -> pass
    there (a fixed intermittent defect that did not show in A's run: listed in A, not in B).
    Tolerated: a cell moving between xfail and a non-strict xpass (an intermittent defect showing
    in one run only: both kernels still carry it)."""
    covered = {(b, s) for d in fixed for b in d.behaviours for s in d.situations}
    problems = []
    flipped = set()
    for diff in found:
        key = (diff.behaviour, diff.situation)
        if key in covered and (diff.a_status, diff.b_status) == ("xfail", "pass"):
            flipped.add(key)
        elif key in covered and (diff.a_status, diff.b_status) == ("xpass", "pass"):
            continue
        elif {diff.a_status, diff.b_status} <= {"xfail", "xpass"} and not _strict(diff, a_cells + b_cells):
            continue
        else:
            problems.append(f"{diff.behaviour} [{diff.situation}]: {diff.a_status} -> {diff.b_status}, "
                            "which no fix explains")
    for cell in a_cells:
        key = (cell["behaviour"], cell["situation"])
        if key in covered and cell["status"] == "xfail" and key not in flipped:
            names = ", ".join(d.name for d in fixed if cell["behaviour"] in d.behaviours)
            problems.append(f"{key[0]} [{key[1]}]: still not like plain TCP with the fix for {names}")
    return problems


def _strict(diff: Difference, cells: list[dict]) -> bool:
    """Whether either side of this difference is a strict xpass (a defect that always shows did not)."""
    return any(cell.get("strict") and cell["status"] == "xpass"
               for cell in cells if (cell["behaviour"], cell["situation"]) == (diff.behaviour, diff.situation))
