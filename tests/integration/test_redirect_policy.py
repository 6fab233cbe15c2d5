"""The port policy on a real kernel: a connection to a listed service port is redirected whole
(two map entries, no TCP segments for its data), one to another port stays on plain TCP (no
entries, its data crosses TCP/IP) and is intact; changing the policy changes which one."""

from __future__ import annotations

import pytest

import random

import pair_checks
from pair_checks import assert_no_error, roles_in_map

from lab.bpf import policy, redirect
from lab.scenario.runner import entry_tuples, run_pair, socket_tuples
from lab.kernel.config import REDIRECT

# Every test here installs BPF programs of the redirect's kind: a kernel built without them
# skips before it boots, with the missing option named.
pytestmark = pytest.mark.requires_kernel_config(*REDIRECT)

NBYTES = 1 << 20


def connection(target, cgroup, port):
    """(pair result, map entries while the connection was up) for one connection to ``port``."""
    pair, held = run_pair(target, nbytes=NBYTES, client_cgroup=cgroup, server_cgroup=cgroup, port=port,
                          while_open=lambda state: redirect.status(target, cgroup)["entries"])
    assert_no_error(pair, target, roles_in_map(pair, held))
    assert pair["intact"], pair
    return pair, held


def assert_redirected(pair, entries):
    assert entry_tuples(entries) == socket_tuples(pair), entries
    # The data went through the sockhash: no side's payload took a TCP data segment.
    pair_checks.assert_redirected(pair)


def assert_plain(pair, entries):
    assert entries == [], f"a connection the policy excludes is in the map: {entries}"
    pair_checks.assert_over_tcp(pair)


def test_only_and_except_decide_per_service_port(target, cgroup):
    listed, other = random.sample(range(20000, 30000), 2)
    installation = redirect.install(target, cgroup, "production",
                                    port_policy=policy.PortPolicy("only", frozenset({listed})))
    assert redirect.status(target, cgroup)["policy"]["mode"] == "only"

    assert_redirected(*connection(target, cgroup, listed))
    assert_plain(*connection(target, cgroup, other))

    applied = policy.apply(target, installation.pin_dir, policy.PortPolicy("except", frozenset({listed})))
    assert applied == policy.PortPolicy("except", frozenset({listed}))
    assert_plain(*connection(target, cgroup, listed))
    assert_redirected(*connection(target, cgroup, other))

    policy.apply(target, installation.pin_dir, policy.PortPolicy("all"))
    assert_redirected(*connection(target, cgroup, listed))
    assert redirect.status(target, cgroup)["policy"] == {
        "mode": "all", "ports": "", "description": "every connection is redirected"}
