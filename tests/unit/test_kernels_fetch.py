"""Fetching, verifying, extracting and depmod-ing kernels, against a local HTTP server.

The packages are real .deb files built with dpkg-deb; the server is http.server on 127.0.0.1; the
cache is a temporary SOCKREDIR_CACHE. Only the archive's address (kernels.MIRROR) is pointed at the
local server for the suite source.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import shutil
import subprocess
import threading
from dataclasses import asdict
from pathlib import Path

import pytest

from lab import LabError
from lab.kernel import fetch as kernels
from lab.kernel.catalog import Catalog, KernelEntry, LockedPackage, read_lock
from lab.kernel import bzimage
from lab.kernel.fetch import KernelUnavailable, cached, lock_kernels, prepare


def fake_bzimage(release: str) -> bytes:
    """Enough of an x86 bzImage for its header to announce ``release``."""
    image = bytearray(0x1000)
    image[0x202:0x206] = b"HdrS"
    image[0x20E:0x210] = (0x300 - 0x200).to_bytes(2, "little")
    version = f"{release} (test@example) #1 SMP".encode()
    image[0x300:0x300 + len(version)] = version
    return bytes(image)


def build_deb(workdir: Path, name: str, files: dict[str, bytes]) -> Path:
    tree = workdir / f"{name}.tree"
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "DEBIAN" / "control").write_text(
        f"Package: {name}\nVersion: 1.0\nArchitecture: amd64\nMaintainer: lab <lab@example>\n"
        f"Description: test kernel package\n")
    for relative, content in files.items():
        (tree / relative).parent.mkdir(parents=True, exist_ok=True)
        (tree / relative).write_bytes(content)
    deb = workdir / f"{name}.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", str(tree), str(deb)],
                   check=True, capture_output=True)
    return deb


class Server:
    """http.server on 127.0.0.1 in a thread, serving ``root`` and recording the paths requested."""

    def __init__(self, root: Path):
        self.root, self.requests = root, []
        recorder = self.requests

        class Handler(http.server.SimpleHTTPRequestHandler):
            def do_GET(self):
                recorder.append(self.path)
                super().do_GET()

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("SOCKREDIR_CACHE", str(root))
    return root


@pytest.fixture
def served(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    with Server(root) as server:
        yield server


RELEASE = "9.9.9-test"


def kernel_deb(workdir: Path, marker: bytes = b"") -> Path:
    return build_deb(workdir, "linux-image-9.9.9-test", {
        f"boot/vmlinuz-{RELEASE}": fake_bzimage(RELEASE) + marker,
        f"lib/modules/{RELEASE}/kernel/foo.ko": b"not really a module",
    })


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_url_source_downloads_extracts_depmods_and_caches(tmp_path, cache, served):
    deb = kernel_deb(tmp_path)
    (served.root / "k.deb").write_bytes(deb.read_bytes())
    entry = Catalog(tmp_path / "none.toml", ()).with_override("9.9", f"{served.url}/k.deb").get("9.9")
    lines: list[str] = []

    artifacts = prepare(entry, progress=lines.append, lock={})
    print("\n".join(lines))
    assert (artifacts.id, artifacts.release) == ("9.9", RELEASE)
    assert artifacts.vmlinuz.read_bytes() == fake_bzimage(RELEASE)
    assert artifacts.modules_dir.parts[-3:] == ("lib", "modules", RELEASE)
    # the .deb ships no modules.dep: depmod wrote it
    assert "kernel/foo.ko:" in (artifacts.modules_dir / "modules.dep").read_text()
    assert served.requests == ["/k.deb"]
    assert any(line.startswith("downloading") for line in lines)
    assert str(cache) in str(artifacts.vmlinuz)

    # warm: no request, same artifacts, and listing sees it without the network
    assert prepare(entry, progress=lines.append, lock={}) == artifacts
    assert cached(entry, {}) == artifacts
    assert served.requests == ["/k.deb"]

    # a truncated cached download is noticed by its hash and fetched again
    (download,) = (cache / "kernels" / "urls").glob("*/k.deb")
    download.write_bytes(download.read_bytes()[:100])
    lines.clear()
    assert prepare(entry, progress=lines.append, lock={}) == artifacts
    assert served.requests == ["/k.deb", "/k.deb"]
    assert any("does not match its SHA-256" in line for line in lines)
    assert sha256(download) == sha256(deb)


def test_locked_url_hash_is_enforced(tmp_path, cache, served):
    (served.root / "k.deb").write_bytes(kernel_deb(tmp_path).read_bytes())
    catalog_path = tmp_path / "kernels.toml"
    catalog_path.write_text(f'[[kernel]]\nid = "9.9"\nurl = "{served.url}/k.deb"\n')
    catalog = Catalog.load(catalog_path, environ={})
    lock_path = tmp_path / "kernels.lock.json"

    assert lock_kernels(catalog, progress=print, lock_path=lock_path) == []
    lock = read_lock(lock_path)
    assert lock["9.9"]["sha256"] == sha256(served.root / "k.deb")
    first = prepare(catalog.get("9.9"), progress=print, lock=lock)

    # the server now serves other bytes: the cached copy still matches the lock and is used...
    (tmp_path / "v2").mkdir()
    other = kernel_deb(tmp_path / "v2", b"v2")
    (served.root / "k.deb").write_bytes(other.read_bytes())
    assert prepare(catalog.get("9.9"), progress=print, lock=lock) == first
    # ...but once the cache is gone, the new bytes are refused
    for download in (cache / "kernels" / "urls").glob("*/k.deb*"):
        download.unlink()
    with pytest.raises(LabError, match="expected .*kernels lock"):
        prepare(catalog.get("9.9"), progress=print, lock=lock)

    # re-locking accepts the new content, which is a different build
    assert lock_kernels(catalog, ids=["9.9"], progress=print, lock_path=lock_path) == []
    second = prepare(catalog.get("9.9"), progress=print, lock=read_lock(lock_path))
    assert second.key != first.key
    assert second.vmlinuz.read_bytes().endswith(b"v2")


def test_suite_source_from_the_lock_with_split_packages(tmp_path, cache, served, monkeypatch):
    """7.x style: vmlinuz and modules in separate packages under usr/lib/modules, one in lib/."""
    release = "9.9.9-split"
    debs = [
        build_deb(tmp_path, "linux-binary-9.9.9-split",
                  {f"usr/lib/modules/{release}/vmlinuz": fake_bzimage(release)}),
        build_deb(tmp_path, "linux-modules-9.9.9-split",
                  {f"usr/lib/modules/{release}/kernel/bar.ko": b"bar"}),
        build_deb(tmp_path, "linux-extra-9.9.9-split",
                  {f"lib/modules/{release}/extra/baz.ko": b"baz"}),
    ]
    pool = served.root / "pool" / "main" / "l" / "linux"
    pool.mkdir(parents=True)
    packages = []
    for deb in debs:
        (pool / deb.name).write_bytes(deb.read_bytes())
        packages.append(LockedPackage(name=deb.stem, version="1.0", suite="sid",
                                      filename=f"pool/main/l/linux/{deb.name}",
                                      size=deb.stat().st_size, sha256=sha256(deb)))
    monkeypatch.setattr(kernels, "MIRROR", served.url)
    entry = KernelEntry(id="9.9", suite="sid", package="linux-image-9.9.9-*")
    lock = {"9.9": {"suite": "sid", "package": entry.package, "packages": [asdict(p) for p in packages]}}

    artifacts = prepare(entry, progress=print, lock=lock)
    assert artifacts.release == release
    assert artifacts.vmlinuz.read_bytes() == fake_bzimage(release)
    modules_dep = (artifacts.modules_dir / "modules.dep").read_text()
    assert "kernel/bar.ko:" in modules_dep and "extra/baz.ko:" in modules_dep
    assert len(served.requests) == 3

    # a corrupt cached .deb is fetched again when the tree has to be rebuilt
    cached_deb = cache / "kernels" / "debs" / debs[1].name
    cached_deb.write_bytes(b"!<arch>\ngarbage")
    shutil.rmtree(cache / "kernels" / "trees" / artifacts.key)
    assert prepare(entry, progress=print, lock=lock) == artifacts
    assert served.requests[3:] == [f"/pool/main/l/linux/{debs[1].name}"]

    # a lock that pins bytes the archive does not have fails with the way out
    wrong = {"9.9": {**lock["9.9"], "packages": [{**asdict(packages[0]), "sha256": "0" * 64}]}}
    with pytest.raises(LabError, match="kernels lock"):
        prepare(entry, progress=print, lock=wrong)


def test_path_sources(tmp_path, cache):
    bare = tmp_path / "vmlinuz-bare"
    bare.write_bytes(fake_bzimage("9.9.9-bare"))
    artifacts = prepare(KernelEntry(id="bare", path=bare), progress=print, lock={})
    assert artifacts.release == "9.9.9-bare"  # read from the bzImage header
    assert (artifacts.modules_dir / "modules.dep").read_text() == ""  # everything built in

    modules = tmp_path / "lib" / "modules" / "9.9.9-mod"
    (modules / "kernel").mkdir(parents=True)
    (modules / "kernel" / "foo.ko").write_bytes(b"foo")
    vmlinuz = tmp_path / "vmlinuz-mod"
    vmlinuz.write_bytes(fake_bzimage("9.9.9-mod"))
    entry = KernelEntry(id="mod", path=vmlinuz, modules=modules)
    artifacts = prepare(entry, progress=print, lock={})
    assert artifacts.release == "9.9.9-mod"
    assert "kernel/foo.ko:" in (artifacts.modules_dir / "modules.dep").read_text()
    assert not (modules / "modules.dep").exists()  # the user's directory is left alone
    assert cached(entry, {}) == artifacts

    deb_entry = KernelEntry(id="deb", path=kernel_deb(tmp_path))
    assert prepare(deb_entry, progress=print, lock={}).release == RELEASE

    wrong = KernelEntry(id="wrong", path=bare, modules=modules)
    with pytest.raises(LabError, match="9.9.9-bare but its modules directory"):
        prepare(wrong, progress=print, lock={})
    junk = tmp_path / "junk"
    junk.write_bytes(b"hello")
    with pytest.raises(LabError, match="neither a .deb nor a bzImage"):
        prepare(KernelEntry(id="junk", path=junk), progress=print, lock={})
    with pytest.raises(LabError, match="does not exist"):
        prepare(KernelEntry(id="gone", path=tmp_path / "gone"), progress=print, lock={})
    assert bzimage.release(junk) is None


def test_unset_env_source_is_unavailable(cache):
    entry = KernelEntry(id="5.15", env="SOCKREDIR_KERNEL_5_15")
    with pytest.raises(KernelUnavailable, match="set SOCKREDIR_KERNEL_5_15 to a .deb path/URL"):
        prepare(entry, progress=print, lock={})


def test_missing_url_names_the_url(cache, served):
    with pytest.raises(LabError, match=f"cannot download {served.url}/absent.deb"):
        prepare(KernelEntry(id="x", url=f"{served.url}/absent.deb"), progress=print, lock={})


def test_a_debian_source_spec_names_a_kernel_source_package():
    from lab.kernel import fetch
    assert fetch.is_debian_source("debian:linux-source-6.12") and not fetch.is_debian_source("/src/linux")
    with pytest.raises(LabError, match="name a Debian kernel source package"):
        fetch.debian_source("debian:linux-image-amd64")
    assert fetch._version_key("6.12.117-1") > fetch._version_key("6.12.57-1")
