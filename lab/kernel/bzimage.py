"""The x86 bzImage format: the release it announces, the ELF vmlinux inside it, its PVH entry.

Under TCG a guest decompresses its own bzImage slowly (about 1 s for a zstd-packed 6.12+ kernel), so
the lab unpacks the ELF once on the host (``lab.vm.initramfs``); the same unpacked image holds the
kernel's embedded configuration when it was built with IKCONFIG (``lab.kernel.config``).
"""

from __future__ import annotations

import gzip
import lzma
import shutil
import struct
import subprocess
from pathlib import Path

# Magic numbers of the bzImage payload formats, and how to undo each (None: Python's own module).
PAYLOAD_FORMATS = {
    b"\x1f\x8b": ("gzip", None),
    b"\xfd7zXZ\x00": ("xz", None),
    b"\x28\xb5\x2f\xfd": ("zstd", ["zstd", "-dcq"]),
    b"\x02\x21\x4c\x18": ("lz4", ["lz4", "-dcq"]),
}
XEN_ELFNOTE_PHYS32_ENTRY = 18


def release(vmlinuz: Path) -> str | None:
    """The release a bzImage announces (its header's kernel_version string, first word)."""
    data = vmlinuz.read_bytes()[:0x10000]
    if data[0x202:0x206] != b"HdrS":
        return None
    offset = 0x200 + int.from_bytes(data[0x20E:0x210], "little")
    text = data[offset:offset + 256].split(b"\0", 1)[0].decode(errors="replace")
    return text.split()[0] if text.split() else None


def unpack(image: bytes) -> bytes:
    """The ELF vmlinux inside an x86 bzImage (boot protocol >= 2.08 gives the payload's place)."""
    if image[0x202:0x206] != b"HdrS" or struct.unpack_from("<H", image, 0x206)[0] < 0x208:
        raise ValueError("not a bzImage with boot protocol 2.08 or later")
    setup_sectors = image[0x1F1] or 4
    offset, length = struct.unpack_from("<II", image, 0x248)
    start = (setup_sectors + 1) * 512 + offset
    payload = image[start:start + length]
    # The kernel's build appends the uncompressed size (4 bytes, little endian) to the payload;
    # a gzip payload carries it as the stream's own last field (ISIZE), nothing is appended.
    compressed, size = payload[:-4], struct.unpack("<I", payload[-4:])[0]
    if payload.startswith(b"\x1f\x8b"):
        compressed = payload
    for magic, (name, command) in PAYLOAD_FORMATS.items():
        if compressed.startswith(magic):
            break
    else:
        raise ValueError(f"unknown payload compression (magic {compressed[:6].hex()})")
    if name == "gzip":
        elf = gzip.decompress(compressed)
    elif name == "xz":
        elf = lzma.decompress(compressed)
    else:
        if not shutil.which(command[0]):
            raise ValueError(f"{command[0]} is not installed")
        elf = subprocess.run(command, input=compressed, capture_output=True, check=True).stdout
    if not elf.startswith(b"\x7fELF") or len(elf) != size:
        raise ValueError(f"{name} payload did not unpack to the expected {size}-byte ELF")
    return elf


def has_pvh_entry(elf: bytes) -> bool:
    """Whether an ELF64 kernel carries the Xen PHYS32_ENTRY note QEMU needs to boot it directly."""
    phoff, = struct.unpack_from("<Q", elf, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
    for index in range(phnum):
        p_type, _, p_offset, _, _, p_filesz = struct.unpack_from("<IIQQQQ", elf,
                                                                 phoff + index * phentsize)
        if p_type != 4:  # PT_NOTE
            continue
        position, end = p_offset, p_offset + p_filesz
        while position + 12 <= end:
            namesz, descsz, note_type = struct.unpack_from("<III", elf, position)
            name = elf[position + 12:position + 12 + namesz].rstrip(b"\0")
            if name == b"Xen" and note_type == XEN_ELFNOTE_PHYS32_ENTRY:
                return True
            position += 12 + _align4(namesz) + _align4(descsz)
    return False


def _align4(length: int) -> int:
    return (length + 3) & ~3
