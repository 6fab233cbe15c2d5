"""Every deliberately broken redirect (bpf/mutants/*.patch) is caught by the suite's checks: on
each kernel a mutant is killed by a scenario's kernel-side or user-visible evidence, with the
unmutated build passing that scenario at the same settings (the first failing check is printed),
refused by that kernel's verifier where its header records so, or n/a where the variant it breaks
cannot load at all. A mutant that survives is a hole in the checks. The host runs every mutant by default (about a minute); ``--checks-all`` runs them on
every kernel of the matrix (a few minutes per TCG guest)."""

from __future__ import annotations

import pytest

from lab.bpf import mutants
from lab.kernel.config import REDIRECT
from lab.pytest_plugin import HostKernel
from lab.scenario import mutant_runs

pytestmark = pytest.mark.requires_kernel_config(*REDIRECT)

MUTANTS = mutants.load_mutants()


@pytest.fixture
def sweep(kernel, request):
    if not isinstance(kernel, HostKernel) and not request.config.option.checks_all:
        pytest.skip("every mutant runs on the host by default (~1 min); --checks-all runs them on "
                    "every kernel (a few minutes per TCG guest)")


def test_every_mutant_is_killed(sweep, kernel, target):
    controls: dict = {}
    results = [mutant_runs.run_mutant(target, kernel.id, mutant, print, controls) for mutant in MUTANTS]
    print(mutant_runs.format_table(results, [kernel.id]))
    unkilled = [f"{r.mutant}: {r.status}: {r.check or 'every scenario passed'}"
                for r in results if not r.killed and r.status != "n/a"]
    assert not unkilled, "mutants the checks did not catch:\n" + "\n".join(unkilled)
