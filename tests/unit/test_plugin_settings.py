"""The plugin installed into any project: it never breaks a run that does not use its fixtures, a
bad lab setting is a one-line usage error (exit 4) for runs that select kernel tests, a user's own
catalog replaces the lab's, and a LabError reaches the user as its message, not a traceback.

These run pytest in a subprocess (as a user's project would), with the plugin loaded from its
entry point; nothing boots.
"""

import textwrap

import pytest

UNRELATED = """
def test_plain():
    assert 1 + 1 == 2
"""
KERNEL_TEST = """
def test_k(kernel):
    pass
"""
LAB_ERROR_TEST = """
from lab import LabError

def test_fails_with_lab_error():
    raise LabError("guest 6.1 went away; see its console log")
"""
OWN_CATALOG = """
[[kernel]]
id = "9.9"
env = "MY_KERNEL_9_9"

[[kernel]]
id = "8.8"
path = "vmlinuz-8.8"
"""


def _run(pytester: pytest.Pytester, *args: str):
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", "--no-host", *args)


def test_unrelated_run_passes_with_a_broken_catalog_option(pytester):
    pytester.makepyfile(test_unrelated=UNRELATED)
    result = _run(pytester, "--kernels-toml", "/nonexistent/kernels.toml")
    result.assert_outcomes(passed=1)
    assert result.ret == 0


def test_unrelated_run_passes_with_a_broken_ini_catalog(pytester):
    pytester.makeini("[pytest]\nsockredir_kernels = missing/kernels.toml\n")
    pytester.makepyfile(test_unrelated=UNRELATED)
    assert _run(pytester).ret == 0


def test_kernel_run_with_a_missing_catalog_is_a_one_line_usage_error(pytester):
    pytester.makepyfile(test_kernels=KERNEL_TEST, test_unrelated=UNRELATED)
    result = _run(pytester, "--kernels-toml", "/nonexistent/kernels.toml")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    errors = [line for line in result.errlines if "sockredir-lab" in line]
    assert len(errors) == 1 and "/nonexistent/kernels.toml" in errors[0] and "not found" in errors[0]
    assert "Traceback" not in result.stdout.str() + result.stderr.str()


def test_kernel_run_with_invalid_toml_is_a_usage_error(pytester):
    (pytester.path / "kernels.toml").write_text("[[kernel]\nid = ")
    pytester.makepyfile(test_kernels=KERNEL_TEST)
    result = _run(pytester, "--kernels-toml", "kernels.toml")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "not valid TOML" in result.stderr.str()


def test_deselecting_the_kernel_tests_avoids_the_usage_error(pytester):
    pytester.makepyfile(test_kernels=KERNEL_TEST, test_unrelated=UNRELATED)
    result = _run(pytester, "--kernels-toml", "/nonexistent/kernels.toml", "-k", "plain")
    result.assert_outcomes(passed=1)


@pytest.mark.parametrize("args, message", [
    (["--kernel-source", "5.15"], "expected ID=PATH_OR_URL"),
    (["--kernel", "4.4"], "--kernel 4.4: not in the catalog"),
])
def test_bad_kernel_options_are_usage_errors(pytester, args, message):
    pytester.makepyfile(test_kernels=KERNEL_TEST)
    result = _run(pytester, *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert message in result.stderr.str()


def test_own_catalog_from_the_ini_file_replaces_the_labs(pytester):
    (pytester.path / "kernels.toml").write_text(OWN_CATALOG)
    pytester.makeini("[pytest]\nsockredir_kernels = kernels.toml\n")
    pytester.makepyfile(test_kernels=KERNEL_TEST)
    result = _run(pytester, "--collect-only", "-q")
    collected = sorted(line.strip() for line in result.outlines if "::" in line)
    assert collected == ["test_kernels.py::test_k[kernel_8_8]", "test_kernels.py::test_k[kernel_9_9]"]


def test_own_catalog_kernel_without_its_source_skips_with_the_reason(pytester):
    (pytester.path / "kernels.toml").write_text(OWN_CATALOG)
    pytester.makepyfile(test_kernels=KERNEL_TEST)
    result = _run(pytester, "--kernels-toml", "kernels.toml", "-rs", "--kernel", "9.9")
    result.assert_outcomes(skipped=1)
    assert "MY_KERNEL_9_9" in result.stdout.str()


def test_lab_error_is_reported_as_its_message_without_a_traceback(pytester):
    pytester.makepyfile(test_error=LAB_ERROR_TEST)
    result = _run(pytester)
    result.assert_outcomes(failed=1)
    output = result.stdout.str()
    assert "LabError: guest 6.1 went away; see its console log" in output
    assert "raise LabError" not in output, textwrap.shorten(output, 2000)


GUEST_CPUS_TEST = """
def test_k(kernel):
    pass

def test_share(lab):
    with open("guest_cpus.txt", "w") as out:  # from any xdist worker
        out.write(str(lab.settings.guest_cpus))
"""


def _guest_cpus_chosen(pytester, *args: str) -> int:
    _run(pytester, "--kernels-toml", "kernels.toml", *args)
    return int((pytester.path / "guest_cpus.txt").read_text())


@pytest.mark.parametrize("args, guests_at_once", [
    ((), 1),                                      # one process: one guest at a time
    (("-n", "2"), 2),                             # two workers, two kernels: two guests at once
    (("-n", "2", "-k", "kernel_9_9 or share"), 1),  # two workers but one kernel: one guest
])
def test_guests_get_their_share_of_the_cpus(pytester, args, guests_at_once):
    from lab.vm import capacity

    pytester.makefile(".toml", kernels=OWN_CATALOG)
    pytester.makepyfile(test_project=GUEST_CPUS_TEST)
    assert _guest_cpus_chosen(pytester, *args) == capacity.this_machine().guest_cpus(guests_at_once)


def test_guest_cpus_as_asked_and_never_zero(pytester):
    pytester.makefile(".toml", kernels=OWN_CATALOG)
    pytester.makepyfile(test_project=GUEST_CPUS_TEST)
    assert _guest_cpus_chosen(pytester, "--guest-cpus", "3") == 3
    result = _run(pytester, "--kernels-toml", "kernels.toml", "--guest-cpus", "0")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert any("--guest-cpus 0: a guest needs at least one vCPU" in line for line in result.errlines)
