"""The kernel catalog: parsing, every error path, environment overrides, and the lock file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lab import LabError
from lab.kernel.catalog import (CATALOG_PATH, Catalog, CatalogError, KernelEntry, LockedPackage,
                         env_var_of, lock_record, locked_packages, locked_url_sha256, read_lock,
                         write_lock)
from lab.kernel.catalog import test_id_of as kernel_test_id  # renamed so pytest does not collect it

GOOD = '''
[[kernel]]
id = "6.1"
suite = "bookworm"
package = "linux-image-6.1.0-*-cloud-amd64"

[[kernel]]
id = "9.9"
url = "https://example.invalid/linux-image-9.9.deb"

[[kernel]]
id = "local"
path = "kernels/vmlinuz-local"
modules = "kernels/lib/modules/9.9.9-local"

[[kernel]]
id = "5.15"
env = "MY_KERNEL_5_15"
'''


def write_catalog(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "kernels.toml"
    path.write_text(text)
    return path


def test_shipped_catalog_parses_cleanly():
    catalog = Catalog.load(CATALOG_PATH, environ={})
    assert catalog.errors == ()
    assert len(set(catalog.ids)) == len(catalog.ids) > 0
    for entry in catalog.entries:
        assert entry.test_id == "kernel_" + entry.id.replace(".", "_")


def test_good_entries_and_their_sources(tmp_path):
    catalog = Catalog.load(write_catalog(tmp_path, GOOD), environ={})
    assert catalog.errors == ()
    assert catalog.ids == ["6.1", "9.9", "local", "5.15"]
    by_id = {e.id: e for e in catalog.entries}
    assert by_id["6.1"].source == "suite"
    assert (by_id["6.1"].suite, by_id["6.1"].package) == ("bookworm", "linux-image-6.1.0-*-cloud-amd64")
    assert by_id["9.9"].source == "url"
    local = by_id["local"]
    assert local.source == "path"
    assert local.path == tmp_path / "kernels" / "vmlinuz-local"  # relative to the catalog file
    assert local.modules == tmp_path / "kernels" / "lib" / "modules" / "9.9.9-local"
    unset = by_id["5.15"]
    assert unset.source == "env"
    assert "MY_KERNEL_5_15" in unset.unavailable_reason()
    assert by_id["6.1"].unavailable_reason() is None
    assert by_id["6.1"].origin.endswith("entry #1")


@pytest.mark.parametrize("kernel_id, test_id", [("6.1", "kernel_6_1"), ("5.10", "kernel_5_10"),
                                                ("6.1-rc2", "kernel_6_1_rc2")])
def test_test_ids(kernel_id, test_id):
    assert kernel_test_id(kernel_id) == test_id
    assert env_var_of(kernel_id) == "SOCKREDIR_KERNEL_" + test_id[len("kernel_"):]


BROKEN = {
    "missing id": ('suite = "bookworm"\npackage = "linux-image-*"', None, "missing or invalid id"),
    "invalid id": ('id = "6 1"\nurl = "http://x/y.deb"', None, "missing or invalid id"),
    "no source": ('id = "6.2"', "6.2", "exactly one source, found none"),
    "two sources": ('id = "6.2"\nurl = "http://x/y.deb"\npath = "y.deb"', "6.2",
                    "exactly one source, found url, path"),
    "unknown key": ('id = "6.2"\nurl = "http://x/y.deb"\nflavour = "cloud"', "6.2", "unknown key 'flavour'"),
    "not a string": ('id = "6.2"\nurl = 3', "6.2", "url must be a non-empty string"),
    "bad glob case": ('id = "6.2"\nsuite = "sid"\npackage = "Linux-Image-*"', "6.2", "bad package glob"),
    "bad glob bracket": ('id = "6.2"\nsuite = "sid"\npackage = "linux-image-[0-9*"', "6.2", "bad package glob"),
    "package without suite": ('id = "6.2"\npackage = "linux-image-*"', "6.2", "package without suite"),
    "suite without package": ('id = "6.2"\nsuite = "sid"', "6.2", "suite without package"),
    "unknown suite": ('id = "6.2"\nsuite = "jessie"\npackage = "linux-image-*"', "6.2", "unknown suite"),
    "bad url": ('id = "6.2"\nurl = "ftp://x/y.deb"', "6.2", "is not http(s):// or file://"),
    "bad env name": ('id = "6.2"\nenv = "NOT-A-NAME"', "6.2", "is not a variable name"),
    "modules without path": ('id = "6.2"\nurl = "http://x/y.deb"\nmodules = "m"', "6.2",
                             "modules without path"),
    "duplicate id": ('id = "6.1"\nurl = "http://x/y.deb"', "6.1", "duplicate id"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_a_broken_entry_is_reported_and_the_others_still_load(tmp_path, case):
    body, entry_id, problem = BROKEN[case]
    path = write_catalog(tmp_path, GOOD + "\n[[kernel]]\n" + body + "\n")
    catalog = Catalog.load(path, environ={})
    assert catalog.ids == ["6.1", "9.9", "local", "5.15"]
    assert len(catalog.errors) == 1
    error = catalog.errors[0]
    message = str(error)
    assert isinstance(error, CatalogError) and isinstance(error, LabError)
    assert str(path) in message and "entry #5" in message and problem in message and "Fix:" in message
    assert error.entry_id == entry_id
    assert error.test_id == (kernel_test_id(entry_id) if entry_id else "kernel_entry_5")
    if entry_id and entry_id not in catalog.ids:
        with pytest.raises(CatalogError) as raised:
            catalog.get(entry_id)
        assert raised.value is error


def test_file_level_errors(tmp_path):
    with pytest.raises(LabError, match="not valid TOML"):
        Catalog.load(write_catalog(tmp_path, "[[kernel]\nid = 1"), environ={})
    with pytest.raises(LabError, match="not found"):
        Catalog.load(tmp_path / "missing.toml", environ={})
    catalog = Catalog.load(write_catalog(tmp_path, 'kernel = "x"\nextra = 1\n'), environ={})
    assert catalog.entries == ()
    assert [e.index for e in catalog.errors] == [None, None]
    assert "unknown top-level key 'extra'" in str(catalog.errors[0])
    assert "not a list of tables" in str(catalog.errors[1])


def test_unknown_id_names_the_way_out(tmp_path):
    catalog = Catalog.load(write_catalog(tmp_path, GOOD), environ={})
    with pytest.raises(LabError, match="SOCKREDIR_KERNEL_4_19"):
        catalog.get("4.19")


def test_environment_fills_env_sources_overrides_and_adds(tmp_path):
    deb = tmp_path / "custom.deb"
    environ = {
        "MY_KERNEL_5_15": str(deb),                              # the entry's own variable
        "SOCKREDIR_KERNEL_6_1": "https://example.invalid/6.1.deb",  # replaces a suite source
        "SOCKREDIR_KERNEL_4_19": str(tmp_path / "vmlinuz"),       # adds a kernel
        "SOCKREDIR_KERNEL_9_9": "",                              # empty means unset
    }
    catalog = Catalog.load(write_catalog(tmp_path, GOOD), environ=environ)
    assert catalog.get("5.15").path == deb and catalog.get("5.15").origin == "$MY_KERNEL_5_15"
    assert catalog.get("6.1").source == "url" and catalog.get("6.1").url.endswith("6.1.deb")
    assert catalog.get("4.19").path == tmp_path / "vmlinuz" and catalog.get("4.19").test_id == "kernel_4_19"
    assert catalog.get("9.9").url == "https://example.invalid/linux-image-9.9.deb"
    assert catalog.ids == ["6.1", "9.9", "local", "5.15", "4.19"]


def test_with_override_replaces_or_adds(tmp_path):
    catalog = Catalog.load(write_catalog(tmp_path, GOOD), environ={})
    replaced = catalog.with_override("6.1", "/tmp/my.deb")
    assert replaced.get("6.1") == KernelEntry(id="6.1", path=Path("/tmp/my.deb"), origin="override")
    assert catalog.get("6.1").source == "suite"  # the original is untouched
    added = catalog.with_override("7.9", "http://127.0.0.1:1/k.deb")
    assert added.ids[-1] == "7.9" and added.get("7.9").source == "url"
    with pytest.raises(LabError, match="not valid"):
        catalog.with_override("bad id", "/tmp/x")


def test_lock_round_trip_and_staleness(tmp_path):
    catalog = Catalog.load(write_catalog(tmp_path, GOOD), environ={})
    suite_entry, url_entry = catalog.get("6.1"), catalog.get("9.9")
    package = LockedPackage(name="linux-image-6.1.0-50-cloud-amd64", version="6.1.176-1",
                            suite="bookworm", filename="pool/main/l/x.deb", size=10, sha256="ab" * 32)
    lock_path = tmp_path / "kernels.lock.json"
    write_lock({"6.1": lock_record(suite_entry, packages=[package]),
                "9.9": lock_record(url_entry, url_sha256="cd" * 32, url_size=5)}, lock_path)
    lock = read_lock(lock_path)
    assert locked_packages(suite_entry, lock) == [package]
    assert locked_url_sha256(url_entry, lock) == "cd" * 32
    # the catalog changed after locking: the lock no longer applies
    changed = KernelEntry(id="6.1", suite="bookworm", package="linux-image-6.1.0-*-cloud-amd64-unsigned")
    assert locked_packages(changed, lock) is None
    assert locked_url_sha256(KernelEntry(id="9.9", url="https://elsewhere/k.deb"), lock) is None
    assert read_lock(tmp_path / "absent.json") == {}
    lock_path.write_text("{not json")
    with pytest.raises(LabError, match="kernels lock"):
        read_lock(lock_path)


def test_shipped_lock_matches_the_shipped_catalog():
    """Every Debian kernel in the catalog is pinned, with the image package first."""
    catalog = Catalog.load(CATALOG_PATH, environ={})
    lock = read_lock()
    for entry in catalog.entries:
        if entry.source == "suite":
            packages = locked_packages(entry, lock)
            assert packages, f"{entry.id} is not locked: run `sockredir-lab kernels lock`"
            assert all(p.suite == entry.suite and len(p.sha256) == 64 for p in packages)
    assert json.loads(Path(CATALOG_PATH.parent / "kernels.lock.json").read_text())["kernels"]


def test_a_build_entry_keeps_a_debian_source_and_resolves_its_patches(tmp_path):
    toml = tmp_path / "kernels.toml"
    toml.write_text('[[kernel]]\nid = "6.12-fix"\nbuild = "debian:linux-source-6.12"\n'
                    'patches = ["fixes/0001.patch", "fixes/0002.patch"]\n'
                    '[[kernel]]\nid = "bad"\nsuite = "trixie"\npackage = "linux-image-*"\npatches = ["x.patch"]\n')
    catalog = Catalog.load(toml, environ={})
    entry = catalog.get("6.12-fix")
    assert str(entry.build) == "debian:linux-source-6.12"
    assert entry.patches == (tmp_path / "fixes" / "0001.patch", tmp_path / "fixes" / "0002.patch")
    assert "0001.patch" in entry.describe()
    assert any("patches without build" in str(error) for error in catalog.errors)
