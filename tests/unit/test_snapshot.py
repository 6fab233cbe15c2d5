"""Snapshot keys and the checks that keep a stale or corrupt snapshot from being used (no QEMU here;
tests/integration/test_snapshots.py saves and restores real guests)."""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from lab.vm import snapshot
from lab.vm.accel import Accel
from lab.vm.guest import Guest, RunParts


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SOCKREDIR_CACHE", str(tmp_path / "cache"))


def _files(tmp_path: Path) -> list[Path]:
    paths = []
    for name in ("vmlinuz", "initramfs", "rootfs.ext4"):
        path = tmp_path / name
        path.write_bytes(name.encode())
        paths.append(path)
    return paths


def _guest(tmp_path: Path, **kwargs) -> tuple[Guest, SimpleNamespace]:
    kernel = SimpleNamespace(id="6.12", release="6.12.1")
    image = SimpleNamespace(label="sockredir-root", rootfs=tmp_path / "rootfs.ext4")
    boot = SimpleNamespace(kernel_image=tmp_path / "vmlinuz", initramfs=tmp_path / "initramfs",
                           modules_disk=tmp_path / "modules.ext4", modules_label="sockredir-mods")
    for path in (image.rootfs, boot.kernel_image, boot.initramfs, boot.modules_disk):
        path.write_bytes(b"x")
    return Guest(kernel, image, tmp_path / "run", accel=Accel("tcg", "forced"), **kwargs), boot


def test_key_ignores_per_run_parts_and_sees_everything_else(tmp_path):
    guest, boot = _guest(tmp_path)
    placeholders = guest._argv(boot, RunParts.placeholders())
    one = guest._argv(boot, RunParts("m1", 40001, "/a/console.log", "/a/root.qcow2", "/t1/qmp.sock",
                                     "/t1/ram"))
    two = guest._argv(boot, RunParts("m2", 40002, "/b/console.log", "/b/root.qcow2", "/t2/qmp.sock",
                                     "/t2/ram"))
    assert one != two and not any("<" in arg for arg in one)
    assert sum("<" in arg for arg in placeholders) == 6  # marker, console, QMP, RAM, overlay, port
    files = _files(tmp_path)
    base = snapshot.key("6.12", "QEMU 7.2", placeholders, files)
    assert snapshot.key("6.12", "QEMU 7.2", list(placeholders), files) == base
    assert snapshot.key("6.12", "QEMU 8.0", placeholders, files).digest != base.digest
    other, _ = _guest(tmp_path, append="lab.extra=1")
    assert snapshot.key("6.12", "QEMU 7.2", other._argv(boot, RunParts.placeholders()),
                        files).digest != base.digest


def test_a_rebuilt_file_changes_the_key(tmp_path):
    files = _files(tmp_path)
    before = snapshot.key("6.12", "QEMU 7.2", ["qemu"], files)
    files[0].write_bytes(b"a longer kernel")
    assert snapshot.key("6.12", "QEMU 7.2", ["qemu"], files).digest != before.digest


def _stored(key: snapshot.Key, state: bytes = b"state" * 1000) -> snapshot.Snapshot:
    """A snapshot laid out as save() leaves it (without QEMU)."""
    directory = snapshot.kernel_dir(key.kernel_id) / key.digest
    directory.mkdir(parents=True)
    (directory / snapshot.STATE).write_bytes(state)
    with open(directory / snapshot.MEMORY, "wb") as memory:  # sparse, as a saved RAM file is
        memory.seek(1 << 20)
        memory.write(b"kernel")
        memory.truncate(4 << 20)
    (directory / snapshot.DISK).write_bytes(b"qcow2")
    (directory / snapshot.META).write_text(json.dumps({
        "material": key.material,
        **{f"{name}_sha256": snapshot.sparse_sha256(directory / file) for name, file in
           (("state", snapshot.STATE), ("memory", snapshot.MEMORY), ("disk", snapshot.DISK))}}))
    return snapshot.Snapshot(directory)


def test_find_and_check_a_sound_snapshot(tmp_path):
    key = snapshot.key("6.12", "QEMU 7.2", ["qemu"], _files(tmp_path))
    assert snapshot.matching(key) is None
    saved = _stored(key)
    assert snapshot.matching(key) == saved
    assert snapshot.check(saved, key) is None


def test_truncated_state_is_refused(tmp_path):
    key = snapshot.key("6.12", "QEMU 7.2", ["qemu"], _files(tmp_path))
    saved = _stored(key)
    with open(saved.state, "r+b") as state:
        state.truncate(100)
    assert "does not match its checksum" in snapshot.check(saved, key)


def test_changed_ram_is_refused(tmp_path):
    key = snapshot.key("6.12", "QEMU 7.2", ["qemu"], _files(tmp_path))
    saved = _stored(key)
    with open(saved.memory, "r+b") as memory:
        memory.seek(3 << 20)
        memory.write(b"x")  # in what was a hole
    assert "its memory does not match its checksum" in snapshot.check(saved, key)


def test_sparse_hash_reads_data_and_where_it_lies(tmp_path):
    def sparse(offset: int) -> str:
        path = tmp_path / f"at-{offset}"
        with open(path, "wb") as handle:
            handle.seek(offset)
            handle.write(b"data")
            handle.truncate(1 << 20)
        return snapshot.sparse_sha256(path)

    assert sparse(0) == sparse(0)
    assert sparse(0) != sparse(8192)


def test_other_key_material_is_refused(tmp_path):
    key = snapshot.key("6.12", "QEMU 7.2", ["qemu"], _files(tmp_path))
    saved = _stored(key)
    moved = snapshot.Key(key.kernel_id, key.digest, {**key.material, "qemu": "QEMU 8.0"})
    assert "other key material" in snapshot.check(saved, moved)


def test_prune_removes_stale_snapshots_of_the_kernel_only(tmp_path):
    files = _files(tmp_path)
    older_qemu = _stored(snapshot.key("6.12", "QEMU 7.1", ["qemu"], files))
    other_argv = _stored(snapshot.key("6.12", "QEMU 7.2", ["qemu", "-m", "2048"], files))
    extra = tmp_path / "headers.ext4"
    extra.write_bytes(b"headers")
    rebuilt = _stored(snapshot.key("6.12", "QEMU 7.2", ["qemu", "disk"], [*files, extra]))
    extra.write_bytes(b"headers, rebuilt")
    unreadable = snapshot.kernel_dir("6.12") / "00000000000000aa"
    unreadable.mkdir()
    saving_now = snapshot.kernel_dir("6.12") / ".0123456789abcdef.xyz"
    saving_now.mkdir()
    new_key = snapshot.key("6.12", "QEMU 7.2", ["qemu"], files)
    new = _stored(new_key)
    other_kernel = _stored(snapshot.key("6.1", "QEMU 7.1", ["qemu"], files))
    assert sorted(snapshot.prune(new_key)) == sorted(
        [older_qemu.directory.name, rebuilt.directory.name, unreadable.name])
    # Another command line of the same files (a guest with a headers disk, another memory size)
    # keeps its snapshot: both kinds of guest keep restoring.
    assert other_argv.directory.exists() and new.directory.exists() and saving_now.exists()
    assert other_kernel.directory.exists()


def test_snapshot_mode_is_checked(tmp_path):
    with pytest.raises(Exception, match="snapshot='always': choose auto or off"):
        _guest(tmp_path, snapshot="always")
