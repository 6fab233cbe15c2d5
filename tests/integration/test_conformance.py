"""The conformance matrix in pytest: one test per behaviour, parametrised by situation, once per
kernel (``test_fionread[kernel_6_1-peer_outside]``). A cell that differs from plain TCP of the same
kernel fails, unless a known kernel defect explains it: then it is an xfail naming the defect. A
cell the defect table lists a defect for that behaves like plain TCP is pytest's XPASS (strict, a
failure, unless the defect is intermittent).

The whole matrix of a kernel is measured once (about 30 s on the host, 40 s in a TCG guest) and
shared by its tests. By default the host and the 6.1 guest run it; ``--conformance-all`` runs every
kernel (``sockredir-lab conformance --kernel all`` does the same from the command line);
``--redirect-program FILE`` judges that program instead of the lab's redirect.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from lab.bpf import mutants
from lab.bpf.program import UserProgram
from lab.conformance import behaviours
from lab.pytest_plugin import HostKernel
from lab.kernel.config import REDIRECT

# Every test here installs BPF programs of the redirect's kind: a kernel built without them
# skips before it boots, with the missing option named.
pytestmark = pytest.mark.requires_kernel_config(*REDIRECT)

DEFAULT_GUEST = "6.1"
_measured: dict[str, dict[tuple[str, str], behaviours.Cell]] = {}


def cells_of(kernel, request, lab) -> dict[tuple[str, str], behaviours.Cell]:
    kernel_id = "host" if isinstance(kernel, HostKernel) else kernel.id
    if kernel_id not in ("host", DEFAULT_GUEST) and not lab.config.option.conformance_all:
        pytest.skip(f"the matrix runs on the host and {DEFAULT_GUEST} by default (40 s per TCG guest); "
                    "run with --conformance-all")
    target = request.getfixturevalue("target")  # after the skip: a skipped cell costs no guest command
    if kernel_id not in _measured:
        option = lab.config.option.redirect_program  # judge someone else's redirect instead of ours
        program = UserProgram(Path(option)) if option else None
        cells = behaviours.run(target, kernel_id, progress=print, program=program, patches=target.kernel_patches)
        _measured[kernel_id] = {(c.behaviour, c.situation): c for c in cells}
    return _measured[kernel_id]


def judge(cell: behaviours.Cell, request) -> None:
    if cell.status == "xfail":
        pytest.xfail(cell.reason)
    if cell.status == "xpass":
        # pytest's own XPASS: strict fails the run ("[XPASS(strict)]"), non-strict is reported
        request.node.add_marker(pytest.mark.xfail(reason=cell.reason, strict=cell.strict))
        return
    if cell.status == "fail":
        pytest.fail(f"{cell.behaviour} [{cell.situation}] on {cell.kernel}: observed {cell.observed}, "
                    f"expected {cell.expected}: {cell.reason}", pytrace=False)


def _behaviour_test(behaviour: str):
    @pytest.mark.parametrize("situation", behaviours.SITUATIONS)
    def test(kernel, lab, request, situation):
        judge(cells_of(kernel, request, lab)[(behaviour, situation)], request)
    test.__name__ = f"test_{behaviour}"
    test.__doc__ = f"{behaviour}: the same as plain TCP in every situation (or a named kernel defect)."
    return test


for _behaviour in behaviours.BEHAVIOURS:
    globals()[f"test_{_behaviour}"] = _behaviour_test(_behaviour)


@pytest.mark.host
def test_a_deliberately_broken_probe_fails():
    """The comparison can fail: a FIONREAD probe told to report a wrong value in the redirected
    situations makes those cells fail on the host (where FIONREAD is right under the redirect)."""
    from lab import api
    cells = behaviours.run(api.host(), "host", ["fionread"], broken=["fionread"], progress=print)
    by_situation = {cell.situation: cell for cell in cells}
    assert by_situation["plain"].status == "pass"
    assert by_situation["redirected"].status == "fail", by_situation["redirected"]
    assert by_situation["redirected"].observed == {"fionread": 1025}


def test_a_program_that_redirects_nothing_fails_every_redirected_cell(kernel, lab, request):
    """`conformance --program`: a program the lab never saw whose sockets are in the map but whose
    sk_msg misses every lookup (the wrong_port_order mutant's object, to the lab just someone's
    .o) behaves like plain TCP in every cell, and fails each redirected cell that carried payload
    as "not redirected", by TCP's own segment counts. The host and 6.1 by default."""
    kernel_id = "host" if isinstance(kernel, HostKernel) else kernel.id
    if kernel_id not in ("host", DEFAULT_GUEST) and not lab.config.option.conformance_all:
        pytest.skip(f"on the host and {DEFAULT_GUEST} by default; run with --conformance-all")
    target = request.getfixturevalue("target")
    misses = UserProgram(mutants.build(mutants.by_name("wrong_port_order"), "production"))
    chosen = ["fionread", "msg_peek", "shutdown_eof", "dontwait_empty"]
    cells = {(c.behaviour, c.situation): c
             for c in behaviours.run(target, kernel_id, chosen, progress=print, program=misses)}
    for behaviour in chosen:
        redirected = cells[(behaviour, "redirected")]
        print(behaviour, redirected.status, redirected.path, redirected.reason)
        if behaviour == "dontwait_empty":  # no payload moves: nothing to redirect, nothing to prove
            assert redirected.status == "pass", redirected
        else:
            assert redirected.status == "fail" and redirected.reason.startswith("not redirected"), redirected
        # the peer outside: TCP either way, proven; a named defect of this kernel may show there
        assert cells[(behaviour, "peer_outside")].status in ("pass", "xfail"), cells[(behaviour, "peer_outside")]


def test_a_users_watching_program_is_judged_in_the_passthrough_situation(kernel, lab, request):
    """`conformance --program FILE --program-situation passthrough`: a user's pass-only program
    (bpf/examples/watcher.bpf.c, Beyla's shape) takes the place of the lab's watching program and is
    judged like it: every passthrough cell that moved payload proves it went over TCP, and the
    kernel's defects for that situation are its named xfails. A redirect posing as a watcher
    (classic_sockhash) fails those cells as "not the passthrough situation". The host and 6.1 by
    default."""
    kernel_id = "host" if isinstance(kernel, HostKernel) else kernel.id
    if kernel_id not in ("host", DEFAULT_GUEST) and not lab.config.option.conformance_all:
        pytest.skip(f"on the host and {DEFAULT_GUEST} by default; run with --conformance-all")
    target = request.getfixturevalue("target")
    chosen = ["fionread", "msg_peek", "shutdown_eof"]
    examples = Path(__file__).resolve().parents[2] / "bpf" / "examples"
    for program, judged_as_watcher in ((UserProgram(examples / "watcher.bpf.c"), True),
                                       (UserProgram(examples / "classic_sockhash.bpf.c"), False)):
        cells = {c.behaviour: c for c in behaviours.run(target, kernel_id, chosen, progress=print, program=program,
                                                        program_situation="passthrough")
                 if c.situation == "passthrough"}
        for behaviour, cell in cells.items():
            print(program.name, behaviour, cell.status, cell.path, cell.reason[:120])
            if judged_as_watcher:
                assert cell.status in ("pass", "xfail") and not cell.reason.startswith("not the"), cell
            else:
                assert cell.status == "fail" and cell.reason.startswith("not the passthrough situation"), cell
