"""Kernels the catalog does not know, brought as a user brings them: a Debian kernel of another
flavour or version, passed as ``SOCKREDIR_KERNEL_5_15=path.deb`` (several .deb files,
comma-separated, for a kernel in split image + modules packages, as Ubuntu ships them), booted
and put through the repository's own smoke and redirect tests in an inner pytest run.

Generic (non-cloud) kernels are the hard case: ext4, jbd2 and crc32c are modules there, reached
through modules.softdep and modules.alias (lab.kernel.modules). By default one such kernel runs
(bookworm's generic 6.1: the smoke tests and one redirect test, about a minute under TCG);
``--foreign-kernels`` runs every flavour below through the whole smoke and redirect files.
The packages are fetched on demand from the Debian archive (resolved through the lab's private
apt lists) and cached.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from inner_run import run_inner

from lab import LabError
from lab.kernel.fetch import PrivateApt, fetch_suite_packages



@dataclass(frozen=True)
class Foreign:
    name: str        # the test id
    suite: str
    pattern: str     # a regex of the image package's full name (globs cannot say "digits only")
    keep: str = ""   # a regex of the packages to pass (default: every one resolved)


FOREIGN = (
    Foreign("generic_6_1_bookworm", "bookworm", r"linux-image-6\.1\.0-\d+-amd64-unsigned"),
    Foreign("generic_5_10_bullseye", "bullseye", r"linux-image-5\.10\.0-\d+-amd64-unsigned"),
    Foreign("generic_6_12_trixie", "trixie", r"linux-image-6\.12\.\d+\+deb13-amd64-unsigned"),
    # 7.x comes in split packages, passed as files the way Ubuntu's image + modules are: the image
    # (linux-binary-*), the modules (linux-modules-*) and modules.builtin + config (linux-base-*)
    Foreign("generic_7_2_sid_split", "sid", r"linux-image-7\.2\.\d+\+deb14-amd64",
            keep=r"linux-(base|binary|modules)-"),
)
DEFAULT = "generic_6_1_bookworm"
# The default run's slice: every smoke test and one whole redirect path.
QUICK_SELECTION = ("tests/integration/test_smoke.py",
                   "tests/integration/test_redirect.py::test_one_connection_two_entries_data_intact")


def newest(apt: PrivateApt, suite: str, pattern: str) -> str:
    prefix = re.split(r"[\\\[(.*+?]", pattern, maxsplit=1)[0]
    available = []
    for name in sorted(n for n in apt.names(prefix) if re.fullmatch(pattern, n)):
        try:
            apt.resolve(suite, name, lambda line: None)
            available.append(name)
        except LabError:  # that name exists in another suite only
            pass
    if not available:
        pytest.fail(f"no package matching {pattern} in {suite}", pytrace=False)
    # versions sort as their names do within one series (the ABI number / patch level grows)
    return max(available, key=lambda n: [int(part) for part in re.findall(r"\d+", n)])


def fetch(foreign: Foreign) -> list[Path]:
    apt = PrivateApt()
    apt.update(lambda line: None)
    name = newest(apt, foreign.suite, foreign.pattern)
    keep = (lambda n: re.match(foreign.keep, n) is not None) if foreign.keep else (lambda n: True)
    debs = [path for _, path in fetch_suite_packages(foreign.suite, name, lambda line: None, keep=keep)]
    assert debs, f"nothing to pass for {name}"
    return debs


@pytest.mark.parametrize("foreign", FOREIGN, ids=[f.name for f in FOREIGN])
def test_a_kernel_the_catalog_does_not_know_passes_smoke_and_redirect(foreign, request, tmp_path):
    everything = request.config.option.foreign_kernels
    if foreign.name != DEFAULT and not everything:
        pytest.skip("the default run boots one foreign kernel (generic 6.1, ~1 min under TCG); "
                    "run with --foreign-kernels for every flavour")
    debs = fetch(foreign)
    selection = ("tests/integration/test_smoke.py", "tests/integration/test_redirect.py") \
        if everything else QUICK_SELECTION
    counts, output = run_inner(["-k", "kernel_5_15", *selection], tmp_path,
                               env={"SOCKREDIR_KERNEL_5_15": ",".join(map(str, debs))})
    print(f"{foreign.name}: {', '.join(p.name for p in debs)}: {counts}")
    assert counts["failed"] == counts["error"] == 0, output[-6000:]
    assert counts["passed"] >= (20 if everything else 7), (counts, output[-3000:])
    # skips are only the stated ones (a feature the kernel lacks), never "image not provided"
    assert "image not provided" not in output, output[-3000:]
