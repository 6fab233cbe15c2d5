"""The plugin's kernel parametrisation: ids, and -k matching whole kernel ids."""

import pytest

TEST_FILE = """
def test_k(kernel):
    pass
"""


def _collected(pytester: pytest.Pytester, *args: str) -> list[str]:
    pytester.makepyfile(test_sample=TEST_FILE)
    result = pytester.runpytest("--collect-only", "-q", "-p", "no:cacheprovider", *args)
    return [line.strip() for line in result.outlines if "::" in line]


def test_ids_are_kernel_ids(pytester):
    ids = _collected(pytester)
    for kernel_id in ("kernel_5_10", "kernel_5_15", "kernel_6_1", "kernel_6_12", "kernel_6_18",
                      "kernel_7_2"):
        assert f"test_sample.py::test_k[{kernel_id}]" in ids


def test_dash_k_selects_one_kernel_not_its_prefix_twins(pytester):
    assert _collected(pytester, "-k", "kernel_6_1") == ["test_sample.py::test_k[kernel_6_1]"]


def test_dash_k_expression_with_kernel_ids(pytester):
    ids = _collected(pytester, "-k", "kernel_6_1 or kernel_5_10")
    assert ids == ["test_sample.py::test_k[kernel_5_10]", "test_sample.py::test_k[kernel_6_1]"]
    assert "test_sample.py::test_k[kernel_6_12]" in _collected(pytester, "-k", "not kernel_6_1")


def test_kernel_option_limits_the_matrix(pytester):
    assert _collected(pytester, "--kernel", "6.12") == ["test_sample.py::test_k[kernel_6_12]"]


def test_host_only_run_with_guest_only_tests(pytester):
    # `--kernel host` leaves a guest-only test without kernels (pytest's empty parameter set);
    # selecting by kernel id must skip it, not crash (sockredir-lab matrix runs exactly this).
    pytester.makepyfile(test_sample=TEST_FILE + "\n\ndef test_g(guest):\n    pass\n")
    result = pytester.runpytest("--collect-only", "-q", "-p", "no:cacheprovider", "--kernel", "host",
                                "-k", "kernel_host")
    assert result.ret == 0, result.stdout.str()
    assert [line.strip() for line in result.outlines if "::" in line] == ["test_sample.py::test_k[kernel_host]"]
