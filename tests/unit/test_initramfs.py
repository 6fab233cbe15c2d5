"""The initramfs: module decompression, the newc writer and its contents, bzImage unpacking
(module resolution itself: test_kernel_modules.py)."""

from __future__ import annotations

import gzip
import io
import lzma
import shutil
import struct
import subprocess

import pytest

from lab.kernel.modules import Load
from lab.kernel.bzimage import has_pvh_entry, unpack
from lab.vm.initramfs import NewcWriter, read_module, write_initramfs


@pytest.mark.parametrize("suffix,compress", [
    (".ko", lambda b: b),
    (".ko.gz", gzip.compress),
    (".ko.xz", lzma.compress),
    pytest.param(".ko.zst", lambda b: subprocess.run(["zstd", "-q", "-c"], input=b, check=True,
                                                      capture_output=True).stdout,
                 marks=pytest.mark.skipif(not shutil.which("zstd"), reason="zstd not installed")),
])
def test_modules_are_decompressed(tmp_path, suffix, compress):
    payload = b"\x7fELF" + bytes(range(256)) * 40
    path = tmp_path / f"virtio{suffix}"
    path.write_bytes(compress(payload))
    assert read_module(path) == payload


def read_newc(data: bytes) -> list[dict]:
    """An independent reader of newc archives (the kernel's format), for checking the writer."""
    entries, position = [], 0
    while True:
        assert data[position:position + 6] == b"070701", position
        fields = [int(data[position + 6 + 8 * i: position + 14 + 8 * i], 16) for i in range(13)]
        mode, filesize, rmajor, rminor, namesize = fields[1], fields[6], fields[9], fields[10], fields[11]
        name_start = position + 110
        name = data[name_start:name_start + namesize - 1].decode()
        assert data[name_start + namesize - 1] == 0
        data_start = (name_start + namesize + 3) & ~3
        body = data[data_start:data_start + filesize]
        position = (data_start + filesize + 3) & ~3
        if name == "TRAILER!!!":
            assert position == len(data)
            return entries
        entries.append({"name": name, "mode": mode, "data": body, "rdev": (rmajor, rminor)})


def test_newc_writer_round_trips():
    out = io.BytesIO()
    cpio = NewcWriter(out)
    cpio.directory("bin")
    cpio.file("bin/hello", b"#!/bin/sh\necho hi\n", 0o755)
    cpio.file("odd", b"abc")  # lengths that need padding
    cpio.symlink("bin/sh", "busybox")
    cpio.char_device("dev/console", 5, 1)
    cpio.close()
    entries = {e["name"]: e for e in read_newc(out.getvalue())}
    assert entries["bin/hello"]["data"] == b"#!/bin/sh\necho hi\n"
    assert entries["bin/hello"]["mode"] == 0o100755
    assert entries["odd"]["data"] == b"abc"
    assert entries["bin/sh"]["data"] == b"busybox" and entries["bin/sh"]["mode"] == 0o120777
    assert entries["bin"]["mode"] == 0o040755
    assert entries["dev/console"]["rdev"] == (5, 1) and entries["dev/console"]["mode"] == 0o020600


@pytest.mark.skipif(not shutil.which("cpio"), reason="cpio not installed")
def test_gnu_cpio_lists_the_initramfs(tmp_path):
    (tmp_path / "kernel").mkdir()
    (tmp_path / "kernel/virtio_ring.ko.xz").write_bytes(lzma.compress(b"\x7fELFring"))
    (tmp_path / "kernel/virtio.ko").write_bytes(b"\x7fELFvirtio")
    out = io.BytesIO()
    write_initramfs(out, tmp_path, [Load("kernel/virtio_ring.ko.xz"), Load("kernel/virtio.ko", optional=True)])
    listing = subprocess.run(["cpio", "-t", "--quiet"], input=out.getvalue(), capture_output=True,
                             check=True).stdout.decode().split()
    for name in ("init", "bin/busybox", "bin/sh", "bin/insmod", "bin/switch_root", "dev/console",
                 "lib/modules/virtio_ring.ko", "lib/modules/virtio.ko", "lib/modules/load-order"):
        assert name in listing
    entries = {e["name"]: e for e in read_newc(out.getvalue())}
    assert entries["lib/modules/load-order"]["data"] == b"required virtio_ring.ko\noptional virtio.ko\n"
    assert entries["lib/modules/virtio_ring.ko"]["data"] == b"\x7fELFring"


def fake_elf(notes: list[tuple[bytes, int]]) -> bytes:
    """An ELF64 header, one PT_NOTE program header, and the given (name, type) notes."""
    body = b""
    for name, note_type in notes:
        name_z = name + b"\0"
        body += struct.pack("<III", len(name_z), 4, note_type) + name_z.ljust((len(name_z) + 3) & ~3, b"\0")
        body += b"\0" * 4
    header = bytearray(64)
    header[:4] = b"\x7fELF"
    struct.pack_into("<Q", header, 0x20, 64)            # e_phoff
    struct.pack_into("<HH", header, 0x36, 56, 1)         # e_phentsize, e_phnum
    phdr = struct.pack("<IIQQQQQQ", 4, 0, 64 + 56, 0, 0, len(body), len(body), 4)
    return bytes(header) + phdr + body


def test_pvh_note_is_found_only_when_present():
    assert has_pvh_entry(fake_elf([(b"GNU", 3), (b"Xen", 18)]))
    assert not has_pvh_entry(fake_elf([(b"GNU", 3), (b"Xen", 5)]))


def fake_bzimage(payload: bytes) -> bytes:
    setup = bytearray(5 * 512)  # boot sector + 4 setup sectors
    setup[0x1F1] = 4
    setup[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", setup, 0x206, 0x20F)
    struct.pack_into("<II", setup, 0x248, 16, len(payload))
    return bytes(setup) + b"\0" * 16 + payload + b"trailing code"


def test_bzimage_payload_is_unpacked():
    elf = fake_elf([(b"Xen", 18)]) + b"kernel text" * 100
    # xz (like zstd, lz4...) gets the size appended by the kernel's build; gzip holds it itself
    image = fake_bzimage(lzma.compress(elf) + struct.pack("<I", len(elf)))
    assert unpack(image) == elf
    assert unpack(fake_bzimage(gzip.compress(elf))) == elf


def test_bzimage_with_unknown_compression_is_refused():
    with pytest.raises(ValueError, match="unknown payload compression"):
        unpack(fake_bzimage(b"\x42\x5a\x68junk" + struct.pack("<I", 10)))
    with pytest.raises(ValueError, match="not a bzImage"):
        unpack(b"\0" * 4096)
