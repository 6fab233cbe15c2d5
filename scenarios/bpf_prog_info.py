#!/usr/bin/env python3
"""Kernel-side facts of pinned BPF programs, JSON on stdout: ``{pin: {field: value}}``.

Runs on the target (host or guest), stdlib only. bpftool 7.1 does not print ``verified_insns``
(the verifier's instruction count, kernel 5.16+), but the program's fdinfo does: this opens each
pin with BPF_OBJ_GET and reads ``/proc/self/fdinfo/<fd>``. A pin that cannot be opened maps to
``{"error": "..."}``.

    python3 bpf_prog_info.py /sys/fs/bpf/x/prog_a /sys/fs/bpf/x/prog_b
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import sys

SYS_BPF = 321  # x86-64
BPF_OBJ_GET = 7


class ObjGetAttr(ctypes.Structure):
    _fields_ = [("pathname", ctypes.c_uint64), ("bpf_fd", ctypes.c_uint32),
                ("file_flags", ctypes.c_uint32)]


def obj_get(libc, path: str) -> int:
    name = ctypes.create_string_buffer(path.encode())
    attr = ObjGetAttr(ctypes.cast(name, ctypes.c_void_p).value, 0, 0)
    fd = libc.syscall(SYS_BPF, BPF_OBJ_GET, ctypes.byref(attr), ctypes.sizeof(attr))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return fd


def fdinfo(fd: int) -> dict:
    fields = {}
    with open(f"/proc/self/fdinfo/{fd}") as handle:
        for line in handle:
            key, _, value = line.partition(":")
            value = value.strip()
            # Decimal counters become ints; octal flags ("02000002") and tags stay strings.
            decimal = value.isdigit() and (value == "0" or not value.startswith("0"))
            fields[key.strip()] = int(value) if decimal else value
    return fields


def main(pins: list[str]) -> int:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    report = {}
    for pin in pins:
        try:
            fd = obj_get(libc, pin)
        except OSError as exc:
            report[pin] = {"error": exc.strerror}
            continue
        try:
            report[pin] = fdinfo(fd)
        finally:
            os.close(fd)
    json.dump(report, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
