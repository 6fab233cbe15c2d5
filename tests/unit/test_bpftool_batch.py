"""bpftool_batch: several bpftool commands in one exec, each command's JSON output back in order,
and a failing command named (the real bpftool runs it in the integration tests: every status)."""

from __future__ import annotations

import json
import shlex

import pytest

from lab import LabError
from lab.bpf.bpftool import bpftool_batch
from lab.vm.target import Result, Target


class CannedTarget(Target):
    name = "canned"

    def __init__(self, stdout: str, rc: int = 0):
        super().__init__()
        self.stdout, self.rc, self.commands = stdout, rc, []

    def _run(self, cmd, timeout, input):
        self.commands.append(cmd)
        return Result(cmd, self.rc, self.stdout, "")


def batch_output(*outputs) -> str:
    return json.dumps([{"command": c.split(), "output": o} for c, o in outputs])


def test_outputs_come_back_in_order_from_one_command():
    target = CannedTarget(batch_output(("prog show", [{"id": 1}]), ("map show", [])))
    assert bpftool_batch(target, [["prog", "show"], ["map", "show"]], options=("-f",)) == [[{"id": 1}], []]
    [command] = target.commands
    printf, bpftool = command.split(" | ")
    assert shlex.split(printf)[2:] == ["prog show", "map show"]
    assert bpftool == "bpftool -j -f batch file -"


def test_a_failing_command_is_named():
    target = CannedTarget(batch_output(("map show", []), ("map dump pinned /x", {"error": "No such file"})), rc=255)
    with pytest.raises(LabError, match=r"`bpftool map dump pinned /x` failed on canned: No such file"):
        bpftool_batch(target, [["map", "show"], ["map", "dump", "pinned", "/x"]])


def test_a_batch_that_stopped_early_is_an_error():
    target = CannedTarget(batch_output(("map show", [])), rc=1)
    with pytest.raises(LabError, match="exit 1"):
        bpftool_batch(target, [["map", "show"], ["prog", "show"]])


@pytest.mark.parametrize("word", ["a b", "it's", "#x", ""])
def test_words_a_batch_line_cannot_carry_are_refused(word):
    with pytest.raises(LabError, match="cannot carry"):
        bpftool_batch(CannedTarget("[]"), [["map", "dump", "pinned", word]])


def test_the_guests_bpftool_failing_to_read_past_the_last_command_is_not_an_error():
    target = CannedTarget(json.dumps([{"command": ["map", "dump", "pinned", "/m"], "output": []},
                                      {"error": "reading batch file failed: Bad file descriptor"}]), rc=255)
    assert bpftool_batch(target, [["map", "dump", "pinned", "/m"]]) == [[]]


def test_commands_lost_to_that_read_error_are_an_error():
    target = CannedTarget(json.dumps([{"command": ["map", "dump", "pinned", "/m"], "output": []},
                                      {"error": "reading batch file failed: Bad file descriptor"}]), rc=255)
    with pytest.raises(LabError, match="exit 255"):
        bpftool_batch(target, [["map", "dump", "pinned", "/m"], ["map", "show"]])
