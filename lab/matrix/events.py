"""Typed progress events from a pytest run to whoever follows it (``sockredir-lab matrix``).

The follower opens a pipe and starts ``pytest --progress-fd N`` with the pipe's write end as fd N;
the plugin writes one JSON object per line there as the run goes, so the follower never reads
pytest's human output (whose wording, verbosity and xdist prefixes are not an interface):

    {"event": "selected", "count": 120}                                   the tests this run will run
    {"event": "result", "nodeid": "tests/x.py::test_y[kernel_6_1]", "status": "fail"}

A status is one of pass, fail, error, skip, xfail, xpass: pytest's own category of the report
(``pytest_report_teststatus``), so a test that passed and then errored in teardown gives a pass and
an error, as pytest's summary counts them.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import IO

STATUS_OF_CATEGORY = {"passed": "pass", "failed": "fail", "error": "error", "skipped": "skip",
                      "xfailed": "xfail", "xpassed": "xpass"}


@dataclass(frozen=True)
class Selected:
    count: int


@dataclass(frozen=True)
class Result:
    nodeid: str
    status: str


Event = Selected | Result


class Emitter:
    """The plugin's end: events to the file descriptor the follower passed."""

    def __init__(self, fd: int):
        try:
            self._out: IO[str] = os.fdopen(fd, "w", buffering=1)
        except OSError as exc:
            raise ValueError(f"--progress-fd {fd}: not an open file descriptor ({exc})") from None

    def selected(self, count: int) -> None:
        self._emit({"event": "selected", "count": count})

    def result(self, nodeid: str, category: str) -> None:
        """A report of pytest's ``category``; the categories of no outcome (a passing setup) say nothing."""
        if category in STATUS_OF_CATEGORY:
            self._emit({"event": "result", "nodeid": nodeid, "status": STATUS_OF_CATEGORY[category]})

    def close(self) -> None:
        self._out.close()

    def _emit(self, event: dict) -> None:
        try:
            self._out.write(json.dumps(event) + "\n")
        except BrokenPipeError:
            pass  # the follower went away; the run itself goes on


def parse(line: str) -> Event | None:
    """One line of the stream; None for a line that is not an event this version knows."""
    try:
        event = json.loads(line)
    except json.JSONDecodeError:
        return None
    if not isinstance(event, dict):
        return None
    if event.get("event") == "selected" and isinstance(event.get("count"), int):
        return Selected(event["count"])
    if event.get("event") == "result" and event.get("status") in STATUS_OF_CATEGORY.values():
        return Result(str(event.get("nodeid")), event["status"])
    return None
