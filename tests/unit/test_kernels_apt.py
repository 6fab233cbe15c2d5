"""The private apt configuration and the parsing of what apt prints (no network)."""

from __future__ import annotations

import functools
import subprocess

import pytest

from lab import LabError
from lab.kernel.catalog import SUITES
from lab.kernel.fetch import KEYRING, PrivateApt, _check_update, _compare_records, _exact_dependencies, parse_deb822

SHOW = """\
Package: linux-image-7.2.13+deb14-cloud-amd64
Version: 7.2.13-1
Depends: dracut | initramfs-tools (>= 0.120+deb8u2) | linux-initramfs-tool, linux-base-7.2.13+deb14-cloud-amd64 (= 7.2.13-1), linux-binary-7.2.13+deb14-cloud-amd64 (= 7.2.13-1), linux-modules-7.2.13+deb14-cloud-amd64 (= 7.2.13-1)
Pre-Depends: linux-base (>= 4.17~)
Description: Linux 7.2 for x86-64 cloud (meta-package)
 This package depends on the binary and modules.
 .
 Second paragraph of the description.
Filename: pool/main/l/linux-signed-amd64/linux-image-7.2.13+deb14-cloud-amd64_7.2.13-1_amd64.deb
Size: 1916
SHA256: 100ec8efc7e14271719aee6e50424ad2f92c5573723bb33134c391c4f4fe5b7b

Package: linux-modules-7.2.13+deb14-cloud-amd64
Version: 7.2.13-1
Depends: kmod, linux-base-7.2.13+deb14-cloud-amd64 (= 7.2.13-1)

"""


def test_parse_deb822_paragraphs_and_continuations():
    records = parse_deb822(SHOW)
    assert [r["Package"] for r in records] == ["linux-image-7.2.13+deb14-cloud-amd64",
                                               "linux-modules-7.2.13+deb14-cloud-amd64"]
    assert records[0]["Size"] == "1916"
    assert records[0]["Description"].splitlines()[1:] == [
        "This package depends on the binary and modules.", ".", "Second paragraph of the description."]


def test_only_exact_version_dependencies_belong_to_the_build():
    meta, modules = parse_deb822(SHOW)
    assert _exact_dependencies(meta) == ["linux-base-7.2.13+deb14-cloud-amd64",
                                         "linux-binary-7.2.13+deb14-cloud-amd64",
                                         "linux-modules-7.2.13+deb14-cloud-amd64"]
    assert _exact_dependencies(modules) == ["linux-base-7.2.13+deb14-cloud-amd64"]
    assert _exact_dependencies({"Package": "x"}) == []


@pytest.mark.parametrize("versions, newest", [
    (["6.1.170-3", "6.1.176-1", "6.1.99-1"], "6.1.176-1"),
    (["7.2.12-1~bpo13+1", "7.2.12-1"], "7.2.12-1"),  # a backport sorts below the release
    (["1:5.0-1", "6.0-1"], "1:5.0-1"),  # epochs win
])
def test_newest_version_is_chosen_the_dpkg_way(versions, newest):
    records = [{"Package": f"p{i}", "Version": v} for i, v in enumerate(versions)]
    assert max(records, key=functools.cmp_to_key(_compare_records))["Version"] == newest


def test_update_failures_are_explained():
    def result(rc, stderr):
        return subprocess.CompletedProcess(["apt-get", "update"], rc, "", stderr)

    _check_update(result(0, "Fetched 38.3 MB in 3s"))
    with pytest.raises(LabError, match=r"suite\(s\) sid .*debian-archive-keyring"):
        _check_update(result(100, "W: GPG error: http://deb.debian.org/debian sid InRelease: The "
                                  "following signatures couldn't be verified because the public key "
                                  "is not available: NO_PUBKEY 762F67A0B2C39DE4\nE: The repository "
                                  "'http://deb.debian.org/debian sid InRelease' is not signed."))
    with pytest.raises(LabError, match="expired"):
        _check_update(result(100, "E: Release file for http://deb.debian.org/debian/dists/sid/InRelease "
                                  "is expired (invalid since 19d 11h 4min 15s)."))
    with pytest.raises(LabError, match="Could not resolve"):
        _check_update(result(100, "E: Failed to fetch ... Could not resolve 'deb.debian.org'"))


def test_apt_sees_only_the_private_configuration(tmp_path):
    """apt itself (apt-config dump) reports the private lists, cache, sources and no host state."""
    apt = PrivateApt(tmp_path)
    dump = apt._run(["apt-config", "dump"])
    assert dump.returncode == 0, dump.stderr
    settings = {}  # apt's keys are case-insensitive: compare them lower-cased
    for line in dump.stdout.splitlines():
        key, _, value = line.rstrip(";").partition(" ")
        settings[key.lower()] = value.strip('"')
    assert settings["dir::state::lists"] == str(tmp_path / "lists")
    assert settings["dir::cache"] == str(tmp_path / "cache")
    assert settings["dir::etc::sourcelist"] == str(tmp_path / "sources.list")
    assert settings["dir::state::status"] == str(tmp_path / "status")
    sources = apt._sources_text().splitlines()
    assert [line.split()[3] for line in sources] == list(SUITES)
    assert all(f"[signed-by={KEYRING}]" in line for line in sources)
