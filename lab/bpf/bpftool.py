"""bpftool with ``-j``: one command's JSON, several commands in one ``bpftool batch``, and the
parse that names the command when its output is not JSON. Everything the lab reads from the kernel
about BPF objects goes through here, on the host and in the guests alike (``target.run``).
"""

from __future__ import annotations

import json
import shlex
from typing import Any

from lab import LabError
from lab.vm.target import Target


def bpftool_json(target: Target, args: list[str], timeout: float = 60) -> Any:
    result = target.run(["bpftool", "-j", *args], timeout=timeout, check=True)
    return parse_bpftool_json(result.stdout, " ".join(args))


BATCH_EBADF = {"error": "reading batch file failed: Bad file descriptor"}


def bpftool_batch(target: Target, commands: list[list[str]], options: tuple[str, ...] = (),
                  timeout: float = 60) -> list[Any]:
    """The JSON outputs of several bpftool commands run by one ``bpftool -j batch``: in a TCG guest
    each bpftool exec costs ~0.05 s of guest CPU, and a status reads up to six maps and listings.

    Only for commands that print JSON on success (bpftool 7.1 writes broken JSON for a command that
    prints nothing, e.g. ``cgroup show`` of an empty cgroup). A failing command ends the batch and
    raises a LabError naming it."""
    lines = []
    for command in commands:
        if any(not word or any(c.isspace() or c in "'\"\\#" for c in word) for word in command):
            raise LabError(f"bpftool batch cannot carry {command!r} (quotes, blanks or # in a word)")
        lines.append(" ".join(command))
    what = "batch: " + "; ".join(lines)
    result = target.run(f"printf '%s\\n' {shlex.join(lines)} | bpftool -j {shlex.join(options)} batch file -",
                        timeout=timeout)
    outputs = parse_bpftool_json(result.stdout, what) if result.stdout.strip() else []
    finished = result.ok
    if len(outputs) == len(lines) + 1 and outputs[-1] == BATCH_EBADF:
        # bpftool 7.1 in the lab guests (seen on 6.12, not on the host): once a batch has run a
        # `map dump`, its next read of the batch input fails with EBADF, from a pipe or a file.
        # The input, a few hundred bytes, was read whole before the first command, so every
        # command ran and printed; only that last read fails. Had a longer input lost commands,
        # the outputs would be fewer than the commands: an error below.
        outputs, finished = outputs[:-1], True
    for line, output in zip(lines, outputs):
        printed = output.get("output") if isinstance(output, dict) else None
        if isinstance(printed, dict) and set(printed) == {"error"}:
            raise LabError(f"`bpftool {line}` failed on {target.name}: {printed['error']}")
    if not finished or len(outputs) != len(lines):
        raise LabError(f"`bpftool -j {what}` failed on {target.name} (exit {result.rc}): "
                       f"{(result.stderr.strip() or result.stdout.strip())[-500:]}")
    return [output["output"] for output in outputs]


def parse_bpftool_json(stdout: str, what: str) -> Any:
    """bpftool's JSON output; a LabError naming the command when it is not JSON."""
    # Some bpftool 7.1 commands (cgroup show with nothing attached) print nothing at all.
    if not stdout.strip():
        return []
    try:
        return json.loads(stdout)
    except ValueError as exc:
        raise LabError(f"`bpftool -j {what}` printed something that is not JSON ({exc}): "
                       f"{stdout.strip()[:300]!r}; check the bpftool version on the target") from None
