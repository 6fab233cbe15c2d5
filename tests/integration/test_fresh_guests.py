"""Guests for isolation, now that a restored guest costs about a second: ``--fresh-guest=module``
gives each test module a guest of its own, and a test marked ``fresh_guest`` gets one for itself.
Real guests in a pytest run of their own (a user's project), told apart by their boot_id (each
restored guest is reseeded, so each has its own)."""

import re

from inner_run import share_lab_cache

GUEST_KERNEL = "6.1"
MODULE_A = """
import pytest


def test_shared(target):
    print("BOOT a-shared", target.run("cat /proc/sys/kernel/random/boot_id").stdout.strip())


@pytest.mark.fresh_guest
def test_own(target):
    print("BOOT a-own", target.run("cat /proc/sys/kernel/random/boot_id").stdout.strip())
"""
MODULE_B = """
def test_shared(target):
    print("BOOT b-shared", target.run("cat /proc/sys/kernel/random/boot_id").stdout.strip())
"""


def _boot_ids(pytester, monkeypatch, *args: str) -> dict[str, str]:
    share_lab_cache(monkeypatch)
    pytester.makepyfile(test_a=MODULE_A, test_b=MODULE_B)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-s", "--no-host",
                                           "--kernel", GUEST_KERNEL, *args, timeout=600)
    output = result.stdout.str()
    print(output[-4000:])
    result.assert_outcomes(passed=3)
    return dict(re.findall(r"BOOT (\S+) ([0-9a-f-]{36})", output))


def test_tests_share_a_guest_and_a_marked_test_gets_its_own(pytester, monkeypatch):
    ids = _boot_ids(pytester, monkeypatch)
    assert ids["a-shared"] == ids["b-shared"]
    assert ids["a-own"] != ids["a-shared"]


def test_fresh_guest_per_module(pytester, monkeypatch):
    ids = _boot_ids(pytester, monkeypatch, "--fresh-guest=module")
    assert len(set(ids.values())) == 3, ids
