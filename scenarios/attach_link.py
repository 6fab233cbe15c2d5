"""Attach a pinned BPF program to a tracepoint or its kernel function and pin the resulting link
(runs on the target).

    python3 attach_link.py PROG_PIN tracepoint CATEGORY/NAME LINK_PIN
    python3 attach_link.py PROG_PIN raw_tracepoint NAME LINK_PIN
    python3 attach_link.py PROG_PIN tracing - LINK_PIN      (fentry/fexit: the function it was loaded for)

bpftool 7.1 (Debian 12's, on the host and in the guests) cannot attach tracing programs (it has no
``autoattach``), so this does what libbpf's attach does, with the bpf() and perf_event_open()
system calls: a ``raw_tracepoint`` program through BPF_RAW_TRACEPOINT_OPEN (kernel 5.7+), a
``tracing`` program (fentry/fexit) through the same command without a name (its target is the
function named at load time; kernel 5.5+), a ``tracepoint`` program through a perf event and
BPF_LINK_CREATE (kernel 5.15+). The link is pinned
in bpffs, so the attachment outlives this process; removing the pin detaches it. Prints one line of
JSON; exits 1 with the failing step and errno otherwise. Stdlib only (x86_64 syscall numbers).
"""

import ctypes
import json
import os
import struct
import sys

SYS_BPF, SYS_PERF_EVENT_OPEN = 321, 298
BPF_OBJ_PIN, BPF_OBJ_GET, BPF_RAW_TRACEPOINT_OPEN, BPF_LINK_CREATE = 6, 7, 17, 28
BPF_PERF_EVENT = 41
PERF_TYPE_TRACEPOINT, PERF_ATTR_SIZE, PERF_FLAG_FD_CLOEXEC = 2, 112, 8
TRACEFS_CANDIDATES = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")
PRIVATE_TRACEFS = "/run/sockredir-lab/tracefs"

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long


class StepFailed(Exception):
    pass


def syscall(number: int, *args, step: str) -> int:
    result = libc.syscall(number, *args)
    if result < 0:
        err = ctypes.get_errno()
        raise StepFailed(f"{step}: {os.strerror(err)} (errno {err})")
    return result


def bpf(command: int, attr: bytes, step: str) -> int:
    buffer = ctypes.create_string_buffer(attr, 128)
    return syscall(SYS_BPF, ctypes.c_int(command), buffer, ctypes.c_uint(128), step=step)


def obj_get(path: str) -> int:
    name = ctypes.create_string_buffer(path.encode())
    return bpf(BPF_OBJ_GET, struct.pack("QII", ctypes.addressof(name), 0, 0), f"BPF_OBJ_GET {path}")


def obj_pin(fd: int, path: str) -> None:
    name = ctypes.create_string_buffer(path.encode())
    bpf(BPF_OBJ_PIN, struct.pack("QII", ctypes.addressof(name), fd, 0), f"BPF_OBJ_PIN {path}")


def tracefs() -> str:
    with open("/proc/self/mounts") as mounts:
        mounted = {line.split()[1] for line in mounts if line.split()[2] == "tracefs"}
    for candidate in (*TRACEFS_CANDIDATES, PRIVATE_TRACEFS):
        if candidate in mounted:
            return candidate
    os.makedirs(PRIVATE_TRACEFS, exist_ok=True)
    if os.system(f"mount -t tracefs sockredir-tracefs {PRIVATE_TRACEFS}") != 0:
        raise StepFailed(f"no tracefs is mounted and mounting one at {PRIVATE_TRACEFS} failed")
    return PRIVATE_TRACEFS


def tracepoint_link(prog_fd: int, tracepoint: str) -> int:
    id_file = os.path.join(tracefs(), "events", tracepoint, "id")
    try:
        with open(id_file) as handle:
            config = int(handle.read())
    except FileNotFoundError:
        raise StepFailed(f"tracepoint {tracepoint} does not exist on this kernel ({id_file})") from None
    attr = struct.pack("IIQ", PERF_TYPE_TRACEPOINT, PERF_ATTR_SIZE, config).ljust(PERF_ATTR_SIZE, b"\0")
    buffer = ctypes.create_string_buffer(attr, PERF_ATTR_SIZE)
    perf_fd = syscall(SYS_PERF_EVENT_OPEN, buffer, ctypes.c_int(-1), ctypes.c_int(0), ctypes.c_int(-1),
                      ctypes.c_ulong(PERF_FLAG_FD_CLOEXEC), step=f"perf_event_open {tracepoint}")
    return bpf(BPF_LINK_CREATE, struct.pack("IIII", prog_fd, perf_fd, BPF_PERF_EVENT, 0),
               "BPF_LINK_CREATE (perf event links need kernel 5.15 or later)")


def raw_tracepoint_link(prog_fd: int, name: str) -> int:
    text = ctypes.create_string_buffer(name.encode())
    return bpf(BPF_RAW_TRACEPOINT_OPEN, struct.pack("QI", ctypes.addressof(text), prog_fd),
               f"BPF_RAW_TRACEPOINT_OPEN {name}")


def tracing_link(prog_fd: int) -> int:
    return bpf(BPF_RAW_TRACEPOINT_OPEN, struct.pack("QI", 0, prog_fd),
               "BPF_RAW_TRACEPOINT_OPEN (fentry/fexit)")


def main(prog_pin: str, kind: str, point: str, link_pin: str) -> None:
    prog_fd = obj_get(prog_pin)
    if kind == "tracepoint":
        link_fd = tracepoint_link(prog_fd, point)
    elif kind == "raw_tracepoint":
        link_fd = raw_tracepoint_link(prog_fd, point)
    elif kind == "tracing":
        link_fd = tracing_link(prog_fd)
    else:
        raise StepFailed(f"unknown kind {kind!r}: tracepoint, raw_tracepoint or tracing")
    os.makedirs(os.path.dirname(link_pin), exist_ok=True)
    obj_pin(link_fd, link_pin)
    print(json.dumps({"link_pin": link_pin, "kind": kind, "point": point}))


if __name__ == "__main__":
    try:
        main(*sys.argv[1:5])
    except (StepFailed, TypeError) as exc:
        print(json.dumps({"error": str(exc)}))
        sys.exit(1)
