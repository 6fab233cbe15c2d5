"""The proof of kernel-fixes/ (issue 23), opt-in with ``--kernel-fixes``: Debian's linux-source-6.12
built stock and with every patch (kernel-fixes/kernels.toml: 6.12-src, 6.12-fix), then

- their conformance matrices compared in one run: each fixed defect's cells go from xfail to pass
  and no other cell moves (``conformance --compare``'s own judgement, exit status 0);
- the reproducers, the scenario suite and every mutant on both kernels, in an inner pytest run
  (splats fail it as in any run): the reproducers fail on the stock kernel as named xfails and pass
  on the fixed one, everything else passes on both.

Each build takes about 20 minutes on two cores the first time (cached by source, patches and
configuration after), so this is not part of the default run; CI runs it as its own job.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from inner_run import REPO, run_inner

from lab import KERNEL_FIXES_DIR
from lab.conformance import defects

CATALOG = KERNEL_FIXES_DIR / "kernels.toml"
STOCK, FIXED = "6.12-src", "6.12-fix"
BUILD_TIMEOUT = 3 * 3600
COMPARE_TIMEOUT = 3600


def lab_command(args: list[str], timeout: int) -> subprocess.CompletedProcess:
    """``sockredir-lab ARGS`` with kernel-fixes/'s catalog, its output shown as it goes by pytest -s."""
    return subprocess.run([sys.executable, "-m", "lab.cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "SOCKREDIR_KERNELS_TOML": str(CATALOG)})


@pytest.fixture(scope="module")
def kernels(request) -> tuple[str, str]:
    if not request.config.option.kernel_fixes:
        pytest.skip("building the stock and the fixed 6.12 takes about 40 minutes on this machine the "
                    "first time (kernel-fixes/README.md); run with --kernel-fixes")
    built = lab_command(["kernels", "fetch", "--id", STOCK, "--id", FIXED], BUILD_TIMEOUT)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    return STOCK, FIXED


def test_the_fixes_flip_their_cells_and_nothing_else(kernels, tmp_path):
    out = tmp_path / "compare.json"
    done = lab_command(["conformance", "--compare", *kernels, "--json", str(out)], COMPARE_TIMEOUT)
    print(done.stdout)
    doc = json.loads(out.read_text())
    assert done.returncode == 0 and doc["problems"] == [], done.stdout[-4000:] + done.stderr[-3000:]
    assert sorted(doc["fixed"]) == sorted(d.name for d in defects.KNOWN if d.fix_patch), doc["fixed"]
    flipped = {(d["behaviour"], d["situation"]) for d in doc["differences"]
               if (d["a_status"], d["b_status"]) == ("xfail", "pass")}
    assert flipped, "the fixed kernel flipped no cell"


def test_reproducers_scenarios_and_mutants_on_both(kernels, tmp_path):
    counts, output = run_inner(["--kernels-toml", str(CATALOG), "--kernel", kernels[0], "--kernel", kernels[1],
                                "--checks-all", "tests/integration/test_kernel_fixes.py",
                                "tests/integration/test_scenarios.py", "tests/integration/test_mutants.py"],
                               tmp_path)
    print(counts)
    assert counts["failed"] == counts["error"] == 0, output[-6000:]
    assert counts["passed"] >= 40, (counts, output[-3000:])
