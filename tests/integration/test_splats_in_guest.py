"""A kernel splat in a guest fails the test it happened in, and the allow-list accepts a known one
without hiding a new one: a pytest run of its own (as a user's project runs it) on the 6.1 guest,
whose tests put splat lines into the guest kernel's log through /dev/kmsg, exactly where a real
WARNING would appear, and read by the same dmesg the plugin reads after every guest test."""

from __future__ import annotations

from inner_run import share_lab_cache

from lab.kernel.catalog import test_id_of as kernel_test_id  # not collected as a test

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


def test_splats_fail_their_test_unless_accepted(pytester, monkeypatch):
    # One run with an allow-list that accepts the known splat on 6.1: the test with only that
    # splat passes, the test that also has a new one fails. (Without an entry every splat fails:
    # tests/unit/test_splats.py.)
    share_lab_cache(monkeypatch)
    monkeypatch.setenv("COLUMNS", "400")
    pytester.makepyfile(test_inner=INNER)
    pytester.path.joinpath("allowed.toml").write_text(ALLOWED)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--kernel", GUEST_KERNEL, "--no-host",
                                           "-rA", "--splats-allowed", str(pytester.path / "allowed.toml"),
                                           timeout=600)
    output = result.stdout.str() + result.stderr.str()
    print(output[-5000:])
    kernel_id = kernel_test_id(GUEST_KERNEL)
    # Every test's own body passes; a splat fails the test at its teardown (an error).
    result.assert_outcomes(passed=3, errors=1)
    assert "ERROR test_inner.py::test_known_splat" not in output
    assert f"ERROR test_inner.py::test_new_splat[{kernel_id}] - Failed: kernel splat in dmesg" in output
    assert "BUG: sockredir_new_splat" in output
    (accepted,) = pytester.path.glob("artifacts/*/tests/*test_known_splat*/splats-accepted.txt")
    assert "[accepted: accepted in this test]" in accepted.read_text()
    assert not list(pytester.path.glob("artifacts/*/tests/*test_no_splat*/splats-accepted.txt"))
