"""Every mutant of the redirect (``lab.bpf.mutants``) against the suite's checks, per kernel.

A mutant is **killed** when a scenario fails on it by evidence a user could see or the kernel
shows (data, errno, a hang, map dump by cookie, TCP segments, loopback packets, tracepoints), and
the unmutated build passes the same scenario at the same settings (the **control** run, once per
kernel, base and scenario): the first such failure is reported (which check caught it). A failure
that rests on the program's own counters alone kills nothing (the next scenario is tried); a
scenario that fails because the lab could not run it, or with an internal error, is an error; one
that is an xfail (a named kernel defect) neither kills nor saves. **survived**: every scenario
passed (a hole in the checks). **rejected**: the kernel's verifier refuses the mutant though it
loads the unmutated build: killed only where the mutant's header records it, else an error.
**n/a**: the variant the mutant breaks does not load on this kernel at all (the netns variant
where bpf_get_netns_cookie is refused), so its mutated code cannot run there.

Scenarios run in an order that kills fast (the variant the mutant breaks first, then the
one-connection checks, then the peer-outside and namespace cases), and a mutant stops at its first
kill, so a run costs a few scenarios per mutant, not the whole suite.
"""

from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass, replace
from typing import Callable

from lab import HOST, LabError
from lab.bpf import pins, redirect
from lab.bpf.mutants import Mutant
from lab.scenario.definitions import SCENARIOS, run_check
from lab.scenario.env import GUEST_SCALE, HOST_SCALE, Env
from lab.vm.target import Target

# The scenarios most likely to kill first; every other one follows in the suite's order.
KILL_ORDER = ("echo-ipv4", "echo-ipv6", "outside-server", "netns2-production", "netns2-netns",
              "echo-v4mapped", "bulk", "churn", "concurrent", "fullmap")
NOT_A_KILL = ("the lab could not run it", "internal error judging the result")
HANG_SECONDS = {"host": 15, "guest": 40}  # a scenario here takes 1-3 s on the host, 2-10 s under TCG


@dataclass
class MutantResult:
    mutant: str
    kernel: str
    status: str               # killed | survived | rejected | n/a | error
    scenario: str | None = None
    check: str | None = None  # the first failure (killed), the verifier's line (rejected), the error
    scenarios_run: int = 0
    seconds: float = 0.0

    @property
    def killed(self) -> bool:
        return self.status in ("killed", "rejected")

    def as_dict(self) -> dict:
        return asdict(self) | {"killed": self.killed}


def order_for(mutant: Mutant) -> list[str]:
    first = ["netns2-netns"] if mutant.base == "netns" else []
    ordered = first + [s for s in KILL_ORDER if s not in first]
    return ordered + [s for s in SCENARIOS if s not in ordered]


def run_mutant(target: Target, kernel_id: str, mutant: Mutant,
               progress: Callable[[str], None] = lambda message: None,
               controls: dict | None = None) -> MutantResult:
    """``controls``: the control verdicts of this target so far, (base, scenario) -> verdict, kept
    by the caller across mutants so each control runs once."""
    started = time.monotonic()
    result = MutantResult(mutant.name, kernel_id, "survived")
    controls = {} if controls is None else controls
    if mutant.base == "netns" and not redirect.netns_supported(target):
        result.status, result.check = "n/a", (
            f"the netns variant it breaks does not load on {target.kernel_release} (bpf_get_netns_cookie "
            "is not offered to sock_ops and sk_msg): its mutated code cannot run here")
        return _done(result, started, progress)
    # A mutant that makes a transfer hang is killed by the hang; no need to wait the suite's
    # generous timeout for it (a scenario here takes seconds, also in a TCG guest). The control
    # runs at the same settings, so a hang that the shortened timeout causes kills nothing.
    host = target.name == HOST
    scale = replace(HOST_SCALE if host else GUEST_SCALE, timeout=HANG_SECONDS["host" if host else "guest"])
    with Env(target, scale=scale, mutant=mutant, progress=progress) as env:
        try:
            env.installed(mutant.base)  # the variant it breaks loads, or the verifier says why not
        except pins.VerifierRejected as exc:
            expected = mutant.expected_rejection(kernel_id)
            if expected and re.search(expected, str(exc)):
                result.status, result.check = "rejected", exc.key_line
            else:
                result.status = "error"
                result.check = (f"the verifier refused it, which its header does not record for "
                                f"kernel {kernel_id}: {exc.key_line}")
            return _done(result, started, progress)
        except LabError as exc:
            result.status, result.check = "error", f"could not install it: {exc}"
            return _done(result, started, progress)
        unconfirmed = None
        for scenario_id in order_for(mutant):
            verdict = run_check(env, scenario_id)
            result.scenarios_run += 1
            judged = kill(verdict)
            if not judged:
                continue
            status, check = judged
            if status == "killed":
                doubt = _control_doubt(target, scale, mutant.base, scenario_id, controls, progress)
                if doubt:  # this kill proves nothing here; another scenario may prove one
                    unconfirmed = unconfirmed or (scenario_id, f"{doubt}; the mutant's failure: {check}")
                    continue
            result.status, result.scenario, result.check = status, scenario_id, check
            break
        if result.status == "survived" and unconfirmed:
            result.status = "error"
            result.scenario, result.check = unconfirmed
    return _done(result, started, progress)


def kill(verdict) -> tuple[str, str] | None:
    """("killed", the first failure a user or the kernel shows), ("error", the lab's error), or
    None: the verdict passed, is an xfail, or only the program's own counters differ."""
    if verdict.status != "fail":
        return None
    lab_error = next((f for f in verdict.failures if f.startswith(NOT_A_KILL)), None)
    if lab_error:
        return "error", lab_error
    evidence = next((f for f in verdict.failures if not f.by_program), None)
    return ("killed", evidence) if evidence else None


def _control_doubt(target: Target, scale, base: str, scenario_id: str, controls: dict,
                   progress: Callable[[str], None]) -> str | None:
    """Why a kill by ``scenario_id`` proves nothing, or None: the unmutated build must pass the
    same scenario at the same settings (run once per base and scenario, kept in ``controls``)."""
    key = (base, scenario_id)
    if key not in controls:
        with Env(target, scale=scale, progress=progress) as env:
            controls[key] = run_check(env, scenario_id)
    control = controls[key]
    if control.status == "pass":
        return None
    return (f"the unmutated {base} build did not pass {scenario_id} at these settings either "
            f"({control.status}: {'; '.join(control.failures[:2]) or control.reason})")


def _done(result: MutantResult, started: float, progress: Callable[[str], None]) -> MutantResult:
    result.seconds = time.monotonic() - started
    progress(f"  {result.mutant:<18} {result.status:<8} {result.seconds:5.1f}s  "
             f"{result.scenario or ''}{': ' if result.check else ''}{(result.check or '')[:140]}")
    return result


def _cell_text(result: MutantResult | None) -> str:
    if result is None:
        return "-"
    if result.status == "killed":
        return f"killed ({result.scenario})"
    return result.status.upper() if result.status in ("survived", "error") else result.status


def format_table(results: list[MutantResult], kernels: list[str]) -> str:
    """Mutant x kernel: killed (by which scenario) / survived / rejected / error."""
    names = list(dict.fromkeys(r.mutant for r in results))
    cell = {(r.mutant, r.kernel): r for r in results}
    width = max(len(n) for n in names) + 2
    lines = ["mutant".ljust(width) + "".join(k.ljust(28) for k in kernels)]
    for name in names:
        row = name.ljust(width) + "".join(_cell_text(cell.get((name, k))).ljust(28) for k in kernels)
        lines.append(row.rstrip())
    return "\n".join(lines)


def format_markdown(results: list[MutantResult], kernels: list[str]) -> str:
    """The same table in Markdown, with the check of the first kernel that killed each mutant (or
    of the first that said anything else: an error, n/a) (what docs/scenarios.md shows)."""
    names = list(dict.fromkeys(r.mutant for r in results))
    cell = {(r.mutant, r.kernel): r for r in results}
    lines = ["| mutant | " + " | ".join(kernels) + " | first failed check |",
             "|---|" + "---|" * (len(kernels) + 1)]
    for name in names:
        mine = [cell[(name, k)] for k in kernels if (name, k) in cell and cell[(name, k)].check]
        first = next((r for r in mine if r.killed), mine[0] if mine else None)  # a kill's check first
        check = (first.check or "")[:160].replace("|", "/") if first else ""
        lines.append(f"| `{name}` | " + " | ".join(_cell_text(cell.get((name, k))) for k in kernels)
                     + f" | {check} |")
    return "\n".join(lines)
