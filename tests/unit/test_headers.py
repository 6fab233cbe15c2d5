"""lab.kernel.headers: the merge of Debian's split header packages into the one tree bcc compiles from."""

from __future__ import annotations

import pytest

from lab import LabError
from lab.kernel.headers import _merge

RELEASE = "6.1.0-50-cloud-amd64"


def make_packages(src, with_kconfig=True):
    common = src / "linux-headers-6.1.0-50-common"
    (common / "include" / "linux").mkdir(parents=True)
    if with_kconfig:
        (common / "include" / "linux" / "kconfig.h").write_text("/* kconfig */\n")
    (common / "Makefile").write_text("common makefile\n")
    flavour = src / f"linux-headers-{RELEASE}"
    (flavour / "include" / "generated").mkdir(parents=True)
    (flavour / "include" / "generated" / "autoconf.h").write_text("#define CONFIG_BPF 1\n")
    (flavour / ".config").write_text("CONFIG_BPF=y\n")
    (flavour / "scripts").symlink_to("../../lib/linux-kbuild-6.1/scripts")
    return common


def test_flavour_files_land_in_the_common_tree(tmp_path):
    make_packages(tmp_path)
    merged = _merge(tmp_path, RELEASE)
    assert (merged / "include" / "linux" / "kconfig.h").is_file()
    assert (merged / "include" / "generated" / "autoconf.h").read_text() == "#define CONFIG_BPF 1\n"
    assert (merged / ".config").is_file()
    assert not (merged / "scripts").exists() and not (merged / "scripts").is_symlink()


def test_a_tree_without_kconfig_h_is_refused(tmp_path):
    make_packages(tmp_path, with_kconfig=False)
    with pytest.raises(LabError, match="kconfig.h"):
        _merge(tmp_path, RELEASE)


def test_missing_flavour_package_is_named(tmp_path):
    make_packages(tmp_path)
    with pytest.raises(LabError, match=f"linux-headers-{RELEASE}-other"):
        _merge(tmp_path, RELEASE + "-other")
