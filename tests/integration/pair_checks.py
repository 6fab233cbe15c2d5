"""The checks of a scenarios/pair.py result that every redirect test makes: no error (or, when the
error is exactly a blocking recv()'s EAGAIN on a socket the map holds, an xfail naming that kernel
defect: lab.scenario.xfail; never a retry), and which path each side's payload took, from TCP's
own count of the data segments it sent (``tcpi_data_segs_out``: 0 when the payload was redirected)."""

from __future__ import annotations

from typing import Sequence

import pytest

from lab.conformance import defects
from lab.scenario import xfail
from lab.scenario.runner import entry_tuples, socket_tuple

ROLES = ("client", "server")


def roles_in_map(pair: dict, entries: list[dict]) -> tuple[str, ...]:
    """The sides whose sockets the map held while the connection was up."""
    held = entry_tuples(entries)
    return tuple(role for role in ROLES if socket_tuple(pair[role]) in held)


def assert_no_error(pair: dict, target, in_map: Sequence[str]) -> None:
    """``in_map``: the sides whose sockets the map holds (a tcp_bpf defect acts on those only)."""
    defect = xfail.explain_pair(pair, defects.upstream_version(target), in_map, target.kernel_patches)
    if defect:
        pytest.xfail(f"{defect.describe()}: {pair['error']}")
    assert pair["error"] is None, pair["error"]


def assert_redirected(pair: dict) -> None:
    """Neither side's payload took a TCP data segment."""
    segs = {role: pair[role]["data_segs_out"] for role in ROLES}
    assert segs == {"client": 0, "server": 0}, f"TCP data segments per side (not redirected): {segs}"


def assert_over_tcp(pair: dict) -> None:
    """Both sides' payload crossed TCP/IP."""
    segs = {role: pair[role]["data_segs_out"] for role in ROLES}
    assert all(n > 0 for n in segs.values()), f"TCP data segments per side (expected plain TCP): {segs}"
