"""The kernel x test report: outcomes from any number of runs merged into report.md, report.html
(one self-contained file) and report.json.

Rows are tests, grouped by module, a parametrised test once per non-kernel id; columns are kernels;
a cell is pass / fail / error / xpass / xfail / skip with its reason (an xpass: a test marked
as a known kernel defect that behaved like plain TCP; a strict one fails the report) (a numbered footnote in Markdown, a
tooltip and a footnote in HTML) and a link to the test's artifacts when they can be found. When
several runs hold the same test on the same kernel, the newest run's outcome is the cell (runs of
different kernels on different days merge into one table).
"""

from __future__ import annotations

import html
import json
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from lab.cache import atomic_write
from lab.matrix import suite_json
from lab.matrix.junit import NO_KERNEL, STATUSES, Outcome, find_files, parse

FAILED = ("fail", "error")
LABELS = {"pass": "pass", "fail": "FAIL", "error": "ERROR", "xpass": "XPASS", "xfail": "xfail", "skip": "skip"}


def failing(outcome: Outcome) -> bool:
    """A failure, an error, or a strict xpass (the defect table is out of date)."""
    return outcome.status in FAILED or (outcome.status == "xpass" and outcome.strict)


@dataclass
class Report:
    outcomes: dict[tuple[str, str, str], Outcome] = field(default_factory=dict)  # (module, test, kernel)
    runs: list[str] = field(default_factory=list)
    search_dirs: list[Path] = field(default_factory=list)  # where moved artifact trees may be found

    def add(self, outcome: Outcome) -> None:
        key = (outcome.module, outcome.test, outcome.kernel)
        kept = self.outcomes.get(key)
        if kept is None or outcome.timestamp >= kept.timestamp:
            self.outcomes[key] = outcome

    @property
    def kernels(self) -> list[str]:
        return sorted({k for _, _, k in self.outcomes}, key=_kernel_order)

    def rows(self) -> dict[str, dict[str, dict[str, Outcome]]]:
        """module -> test -> kernel -> outcome, in a stable order."""
        rows: dict[str, dict[str, dict[str, Outcome]]] = {}
        for (module, test, kernel), outcome in sorted(self.outcomes.items()):
            rows.setdefault(module, {}).setdefault(test, {})[kernel] = outcome
        return rows

    def totals(self) -> dict[str, int]:
        counts = Counter(o.status for o in self.outcomes.values())
        return {status: counts.get(status, 0) for status in STATUSES}

    @property
    def failed(self) -> bool:
        return any(failing(o) for o in self.outcomes.values())

    def artifacts_of(self, outcome: Outcome) -> Path | None:
        """The test's artifact directory where it is now: as recorded, or the same ``tests/NAME``
        tail under one of the directories given to the report (artifacts downloaded from CI)."""
        if not outcome.artifacts:
            return None
        recorded = Path(outcome.artifacts)
        if recorded.is_dir():
            return recorded
        return self._moved_dirs.get((recorded.parent.name, recorded.name))

    @cached_property
    def _moved_dirs(self) -> dict[tuple[str, str], Path]:
        """(parent name, name) -> path of every directory under the directories given, walked once
        (names hold brackets: walk, not glob; one walk per missing cell took seconds)."""
        found: dict[tuple[str, str], Path] = {}
        for directory in self.search_dirs:
            for root, dirs, _ in os.walk(directory):
                for name in dirs:
                    found.setdefault((Path(root).name, name), Path(root) / name)
        return found


def _kernel_order(kernel: str):
    """Versions in numeric order, then other ids (host), then the no-kernel column."""
    if kernel == NO_KERNEL:
        return (2, (), kernel)
    numbers = re.match(r"(\d+(?:\.\d+)*)", kernel)
    if numbers:
        return (0, tuple(int(n) for n in numbers.group(1).split(".")), kernel)
    return (1, (), kernel)


def collect(paths: list[Path]) -> Report:
    """A report from JUnit XML files and directories that hold them (LabError if none is found)."""
    from lab import LabError

    files = find_files(paths)
    if not files:
        raise LabError(f"no JUnit XML file or suite.json under {', '.join(map(str, paths))}: run "
                       f"pytest with --junitxml=FILE (sockredir-lab matrix writes one per kernel), or "
                       f"sockredir-lab suite (it writes suite.json)")
    report = Report(search_dirs=[p for p in paths if p.is_dir()])
    for path in files:
        report.runs.append(str(path))
        for outcome in (suite_json.parse(path) if path.suffix == ".json" else parse(path)):
            report.add(outcome)
    return report


# ----------------------------------------------------------------------------- rendering

class Footnotes:
    """Numbered reasons, each text once."""

    def __init__(self):
        self.numbers: dict[str, int] = {}

    def number(self, text: str) -> int:
        return self.numbers.setdefault(text, len(self.numbers) + 1)


def _note_text(outcome: Outcome) -> str:
    return f"{LABELS[outcome.status]}: {outcome.reason}" if outcome.reason else ""


def to_json(report: Report) -> dict:
    rows = []
    for module, tests in report.rows().items():
        for test, cells in tests.items():
            rows.append({"module": module, "test": test,
                         "cells": {k: {"status": o.status, "reason": o.reason, "seconds": o.seconds,
                                       "artifacts": str(report.artifacts_of(o) or ""), "run": o.run}
                                   for k, o in cells.items()}})
    return {"kernels": report.kernels, "totals": report.totals(), "failed": report.failed,
            "runs": report.runs, "rows": rows}


def to_markdown(report: Report, out_dir: Path) -> str:
    kernels, notes = report.kernels, Footnotes()
    lines = ["# Kernel x test report", "", _totals_line(report), ""]
    for module, tests in report.rows().items():
        lines += [f"## {module}", "", "| test | " + " | ".join(kernels) + " |",
                  "|---|" + "---|" * len(kernels)]
        for test, cells in tests.items():
            row = [_md_cell(cells.get(k), notes, report, out_dir) for k in kernels]
            lines.append(f"| `{test}` | " + " | ".join(row) + " |")
        lines.append("")
    if notes.numbers:
        lines += ["## Reasons", ""]
        lines += [f"{n}. {text}" for text, n in notes.numbers.items()]
        lines.append("")
    lines += ["Runs merged: " + ", ".join(f"`{r}`" for r in report.runs), ""]
    return "\n".join(lines)


def _md_cell(outcome: Outcome | None, notes: Footnotes, report: Report, out_dir: Path) -> str:
    if outcome is None:
        return ""
    text = LABELS[outcome.status]
    found = report.artifacts_of(outcome)
    if found is not None:
        text = f"[{text}]({os.path.relpath(found, out_dir)})"
    note = _note_text(outcome)
    if note:
        text += f" [{notes.number(note.replace('|', '/'))}]"
    return text


def _totals_line(report: Report) -> str:
    totals = report.totals()
    return (f"{sum(totals.values())} cells over {len(report.kernels)} kernel columns: "
            + ", ".join(f"{n} {status}" for status, n in totals.items()))


STYLE = """
body { font-family: sans-serif; margin: 1.5em; }
table { border-collapse: collapse; margin-bottom: 1em; }
th, td { border: 1px solid #bbb; padding: 2px 6px; font-size: 13px; }
th.module { text-align: left; background: #eee; }
td.pass { background: #d7f5d7; } td.fail, td.error { background: #f7c6c6; font-weight: bold; }
td.xfail { background: #f5ecc8; } td.skip { background: #e8e8e8; color: #555; }
td.xpass { background: #c8dcf5; font-weight: bold; }
td.test { font-family: monospace; }
"""


def to_html(report: Report, out_dir: Path) -> str:
    kernels, notes = report.kernels, Footnotes()
    esc = html.escape
    head = "".join(f"<th>{esc(k)}</th>" for k in kernels)
    body = []
    for module, tests in report.rows().items():
        body.append(f'<tr><th class="module" colspan="{len(kernels) + 1}">{esc(module)}</th></tr>')
        for test, cells in tests.items():
            tds = "".join(_html_cell(cells.get(k), k, notes, report, out_dir) for k in kernels)
            body.append(f'<tr><td class="test">{esc(test)}</td>{tds}</tr>')
    footnotes = "".join(f'<li id="note-{n}">{esc(text)}</li>' for text, n in notes.numbers.items())
    runs = "".join(f"<li>{esc(r)}</li>" for r in report.runs)
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Kernel x test report</title>"
            f"<style>{STYLE}</style></head><body>\n<h1>Kernel x test report</h1>\n"
            f"<p id=\"totals\">{esc(_totals_line(report))}</p>\n"
            f"<table id=\"matrix\"><thead><tr><th>test</th>{head}</tr></thead>\n<tbody>\n"
            + "\n".join(body) + "\n</tbody></table>\n"
            f"<h2>Reasons</h2><ol>{footnotes}</ol>\n<h2>Runs merged</h2><ul>{runs}</ul>\n</body></html>\n")


def _html_cell(outcome: Outcome | None, kernel: str, notes: Footnotes, report: Report,
               out_dir: Path) -> str:
    if outcome is None:
        return f'<td data-kernel="{html.escape(kernel)}"></td>'
    label = html.escape(LABELS[outcome.status])
    found = report.artifacts_of(outcome)
    if found is not None:
        label = f'<a href="{html.escape(os.path.relpath(found, out_dir))}">{label}</a>'
    note = _note_text(outcome)
    title = ""
    if note:
        number = notes.number(note)
        label += f'<sup><a href="#note-{number}">{number}</a></sup>'
        title = f' title="{html.escape(note)}"'
    return (f'<td class="{outcome.status}" data-kernel="{html.escape(kernel)}" '
            f'data-status="{outcome.status}"{title}>{label}</td>')


def write(report: Report, out_dir: Path) -> dict[str, Path]:
    """report.md, report.html and report.json in ``out_dir`` (written atomically)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {"md": out_dir / "report.md", "html": out_dir / "report.html", "json": out_dir / "report.json"}
    atomic_write(written["md"], to_markdown(report, out_dir))
    atomic_write(written["html"], to_html(report, out_dir))
    atomic_write(written["json"], json.dumps(to_json(report), indent=1) + "\n")
    return written
