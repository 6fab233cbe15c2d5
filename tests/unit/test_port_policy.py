"""The port policy's parsing and formatting, and its mode numbers against bpf/sockredir.h."""

import re

import pytest

from lab import BPF_DIR, LabError
from lab.bpf import policy


def test_ports_and_ranges_parse_to_the_set_and_format_back_shortest():
    ports = policy.parse_ports("443, 80,8000-8003,8002,9000-9000")
    assert ports == {80, 443, 8000, 8001, 8002, 8003, 9000}
    assert policy.format_ports(ports) == "80,443,8000-8003,9000"
    assert policy.format_ports(policy.parse_ports("1-65535")) == "1-65535"


@pytest.mark.parametrize("text, words", [("http", "bad port 'http'"), ("0", "1-65535"),
                                         ("70000", "1-65535"), ("90-80", "low end first"),
                                         (",", "no ports"), ("80-", "bad port")])
def test_bad_ports_are_named(text, words):
    with pytest.raises(LabError, match=re.escape(words)):
        policy.parse_ports(text)


def test_modes_match_the_programs_enum():
    header = (BPF_DIR / "sockredir.h").read_text()
    enum = dict(re.findall(r"SOCKREDIR_POLICY_(\w+) = (\d+)", header))
    assert {name: int(value) for name, value in enum.items()} == {
        "ALL": policy.MODES["all"], "ONLY_LISTED": policy.MODES["only"],
        "ALL_BUT_LISTED": policy.MODES["except"]}


def test_descriptions_say_which_connections_are_redirected():
    assert policy.PortPolicy().describe() == "every connection is redirected"
    assert "only connections to port(s) 80,443" in policy.PortPolicy("only", frozenset({443, 80})).describe()
    assert "except those to port(s) 22" in policy.PortPolicy("except", frozenset({22})).describe()
    with pytest.raises(LabError, match="unknown policy mode"):
        policy.PortPolicy("some")
