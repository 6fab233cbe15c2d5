"""A kernel splat in a guest fails the test it happened in, and the allow-list accepts a known one
without hiding a new one: a pytest run of its own (as a user's project runs it) on the 6.1 guest,
whose tests put splat lines into the guest kernel's log through /dev/kmsg, exactly where a real
WARNING would appear, and read by the same dmesg the plugin reads after every guest test."""

from __future__ import annotations

import pytest

from lab.cache import cache_root

GUEST_KERNEL = "6.1"
INNER = """
def kmsg(target, line):
    target.run(["sh", "-c", f"echo '<4>{line}' > /dev/kmsg"], check=True)


def test_known_splat(target):
    kmsg(target, "WARNING: CPU: 0 PID: 1 at net/core/skmsg.c:1 sockredir_known_splat+0x0/0x0")


def test_new_splat(target):
    kmsg(target, "WARNING: CPU: 0 PID: 1 at net/core/skmsg.c:1 sockredir_known_splat+0x0/0x0")
    kmsg(target, "BUG: sockredir_new_splat")


def test_no_splat(target):
    target.run(["true"], check=True)
"""
ALLOWED = """
[[splat]]
kernels = ["6.1"]
pattern = 'WARNING: .* sockredir_known_splat'
reason = "accepted in this test"
"""


@pytest.mark.parametrize("allowed", [False, True], ids=["no_allow_list", "allow_list"])
def test_splats_fail_their_test_unless_accepted(pytester, monkeypatch, allowed):
    monkeypatch.setenv("SOCKREDIR_CACHE", str(cache_root()))  # pytester's own HOME: share the cache
    monkeypatch.setenv("COLUMNS", "400")
    pytester.makepyfile(test_inner=INNER)
    args = ["-p", "no:cacheprovider", "--kernel", GUEST_KERNEL, "--no-host", "-rA"]
    if allowed:
        pytester.path.joinpath("allowed.toml").write_text(ALLOWED)
        args += ["--splats-allowed", str(pytester.path / "allowed.toml")]
    result = pytester.runpytest_subprocess(*args, timeout=600)
    output = result.stdout.str() + result.stderr.str()
    print(output[-5000:])
    kernel_id = "kernel_" + GUEST_KERNEL.replace(".", "_")
    # Every test's own body passes; a splat fails the test at its teardown (an error).
    if allowed:
        result.assert_outcomes(passed=3, errors=1)
        assert f"ERROR test_inner.py::test_known_splat" not in output
    else:
        result.assert_outcomes(passed=3, errors=2)
        assert f"ERROR test_inner.py::test_known_splat[{kernel_id}] - Failed: kernel splat in dmesg" in output
    # the new splat fails whatever the allow-list says, and names itself
    assert f"ERROR test_inner.py::test_new_splat[{kernel_id}] - Failed: kernel splat in dmesg" in output
    assert "BUG: sockredir_new_splat" in output
    assert f"PASSED test_inner.py::test_no_splat[{kernel_id}]" in output
    accepted = list(pytester.path.glob("artifacts/*/tests/*test_known_splat*/splats-accepted.txt"))
    assert len(accepted) == (1 if allowed else 0)
    if allowed:
        assert "[accepted: accepted in this test]" in accepted[0].read_text()
