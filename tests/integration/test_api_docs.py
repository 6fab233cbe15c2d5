"""The examples of docs/api.md run as they are written, on the host kernel: a doc whose examples
stopped working fails here, not in a user's hands."""

import os
import re
from pathlib import Path

import pytest

DOC = Path(__file__).parents[2] / "docs" / "api.md"
BLOCK_RE = re.compile(r"```python\n(.*?)```", re.S)
KERNEL_LINE = 'KERNEL = "6.1"'


def _examples() -> list[str]:
    return [block for block in BLOCK_RE.findall(DOC.read_text()) if KERNEL_LINE in block]


def test_the_doc_has_runnable_examples():
    assert len(_examples()) >= 3


@pytest.mark.parametrize("index", range(len(_examples())))
def test_example_runs_on_the_host(index, tmp_path, monkeypatch):
    if os.geteuid() != 0:
        pytest.skip("the examples load BPF programs and make cgroups: root only")
    code = _examples()[index].replace(KERNEL_LINE, 'KERNEL = "host"')
    monkeypatch.chdir(tmp_path)
    exec(compile(code, f"{DOC}:example-{index + 1}", "exec"), {"__name__": "__doc_example__"})
