"""When a failed scenario or pair run is a named kernel defect (an xfail), and when it stays a failure.

A failure names a known defect (``lab.conformance.defects``) when it is that defect's exact
symptom: a check that recognises one says so (``Failure.defect``: slowreader's no-backpressure),
and a blocking recv()'s EAGAIN is recognised here from the words of scenarios/common.py's
``SpuriousEagain`` (a send()'s EAGAIN is another thing) as the first error of its report. A
verdict earns the xfail only when all of this holds:

- every symptom names the same defect, and the table says it acts on this kernel and situation;
- every failure is in the round where the defect can act: ``redirect`` (the baseline has no
  psock, so a tcp_bpf defect cannot be the cause there);
- a blocking-eagain symptom is on a side whose socket the map holds (a side outside the map runs
  plain TCP code);
- the defect explains every other failure: only blocking-eagain has consequences (the data its
  cut-short run changed: bytes, checksums, EOFs, the program's byte counters). A failure of any
  other kind (map entries, the bypass, the path per socket, inserts, the kprobe, another errno)
  keeps the verdict a failure, with the symptom among its failures.

Nothing here is retried and nothing is a warning: the rule only decides the name on a failure.
"""

from __future__ import annotations

import re
from typing import Sequence

from lab.conformance import defects
from lab.scenario.checks import Failure

DEFECT = "blocking-eagain"
# scenarios/common.py SpuriousEagain: only a recv() on a socket without a timeout says this.
BLOCKING_RECV_EAGAIN = "blocking recv() failed with EAGAIN"
# "<role>: " before the worker's error in a scenario error (common.py's gather and Worker.report).
SCENARIO_ROLE = re.compile(r"(?:^|: )(?P<role>client|server): (?:SpuriousEagain: |recv: )?\[Errno 11\] "
                           + re.escape(BLOCKING_RECV_EAGAIN))


def situation_of(in_map: Sequence[str]) -> str:
    return "redirected" if set(in_map) >= {"client", "server"} else "peer_outside"


def symptom_side(failure: Failure) -> str | None:
    """The side whose blocking recv() failed with EAGAIN, if ``failure`` is exactly that (the
    first error of its report); None otherwise."""
    if failure.kind != "error":
        return None
    cause = str(failure).split("; ")[0]   # what follows is what the cause left behind
    if BLOCKING_RECV_EAGAIN not in cause:
        return None
    if failure.role:  # a side's own error (checks.check_transfer): "<round>: <role> error recv: ..."
        return failure.role if f"{failure.role} error recv: " in cause else None
    match = SCENARIO_ROLE.search(cause)
    return match.group("role") if match else None


def symptom_of(failure: Failure, in_map: Sequence[str]) -> str | None:
    """The defect whose exact symptom ``failure`` is (None: no defect's), or "" when it is a
    symptom on a side outside the map, where no tcp_bpf defect can act."""
    if failure.defect:
        return failure.defect
    side = symptom_side(failure)
    if side is None:
        return None
    return DEFECT if side in in_map else ""


def explain_verdict(failures: Sequence[Failure], release: str, in_map: Sequence[str] = ("client", "server"),
                    patches: frozenset[str] = frozenset()) -> defects.Defect | None:
    """The defect that explains every one of ``failures``, or None (the verdict stays a failure).
    ``in_map``: the sides whose sockets the redirect round's map holds; ``patches``: the
    kernel-fixes/ patches the kernel is built with (a defect one of them fixes explains nothing)."""
    symptoms = [symptom_of(failure, in_map) for failure in failures]
    named = {symptom for symptom in symptoms if symptom is not None}
    if len(named) != 1 or "" in named:
        return None
    name = named.pop()
    for failure, symptom in zip(failures, symptoms):
        if failure.round != "redirect":
            return None
        if symptom is None and not (failure.kind == "data" and name == DEFECT):
            return None
    return _acting(name, release, situation_of(in_map), patches)


def pair_failures(pair: dict) -> list[Failure]:
    """A scenarios/pair.py result's errors as the failures of a redirect round: each side's own
    transfer error as checks.check_transfer words it, and the run's error (a side stopped while
    blocked after its peer's error, a worker that died, the timeout) as the scenario's error."""
    failures = [Failure(f"redirect: {role} error {error}", "redirect", "error", role)
                for role in ("client", "server") if (error := pair.get(role, {}).get("error"))]
    if pair.get("run_error"):
        failures.append(Failure(pair["run_error"], "redirect", "error"))
    elif pair.get("error") and not failures:  # an error the result does not place: never a defect's
        failures.append(Failure(pair["error"], "redirect", "check"))
    return failures


def explain_pair(pair: dict, release: str, in_map: Sequence[str],
                 patches: frozenset[str] = frozenset()) -> defects.Defect | None:
    """The defect behind a scenarios/pair.py result's error, or None: the same rule as a
    scenario's verdict (pair.py runs on the same harness, so its errors are worded the same)."""
    failures = pair_failures(pair)
    return explain_verdict(failures, release, in_map, patches) if failures else None


def _acting(name: str, release: str, situation: str, patches: frozenset[str]) -> defects.Defect | None:
    """The defect, if the table says it acts on this kernel (with these patches) in this situation."""
    defect = defects.by_name(name)
    listed = defects.listed(defect.behaviours[0], situation, release, patches=patches)
    return defect if defect in listed else None
