"""Which connections the redirect takes: the port policy of an installation.

The production and netns programs consult two maps before putting a socket into the sockhash
(``bpf/sockredir.bpf.c``): ``sredir_policy`` (entry 0: the mode) and ``sredir_ports`` (the listed
service ports). Modes:

    all       every connection (a fresh install)
    only      only connections whose service port is listed
    except    every connection except those whose service port is listed

The service port is the server's port, so both ends of a connection decide alike. A policy change
applies to connections established after it; sockets already in the map stay there until they
close (a connection is redirected whole or not at all: mixing would reorder its stream).

Changes go through one ``bpftool batch`` call, so a range of thousands of ports costs one command.
"""

from __future__ import annotations

import posixpath
import secrets
import struct
from dataclasses import dataclass

from lab import LabError
from lab.bpf import keys
from lab.bpf.bpftool import bpftool_batch
from lab.vm.target import RUN_DIR, Target

MODES = {"all": 0, "only": 1, "except": 2}  # enum sockredir_policy_mode in bpf/sockredir.h
POLICY_MAP = "sredir_policy"
PORTS_MAP = "sredir_ports"


@dataclass(frozen=True)
class PortPolicy:
    mode: str = "all"
    ports: frozenset[int] = frozenset()

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise LabError(f"unknown policy mode {self.mode!r}; choose one of {', '.join(MODES)}")

    def describe(self) -> str:
        if self.mode == "all":
            return "every connection is redirected"
        listed = format_ports(self.ports)
        if self.mode == "only":
            return f"only connections to port(s) {listed} are redirected"
        return f"every connection except those to port(s) {listed} is redirected"

    def as_dict(self) -> dict:
        return {"mode": self.mode, "ports": format_ports(self.ports), "description": self.describe()}


def parse_ports(text: str) -> frozenset[int]:
    """``"80,443,8000-8999"`` -> the set of those ports; a LabError names a bad item."""
    ports: set[int] = set()
    for item in filter(None, (part.strip() for part in text.split(","))):
        low, dash, high = item.partition("-")
        try:
            first = int(low)
            last = int(high) if dash else first
        except ValueError:
            raise LabError(f"bad port {item!r} in {text!r}: use numbers and ranges, e.g. 80,8000-8999") from None
        if not 1 <= first <= last <= 65535:
            raise LabError(f"bad port range {item!r}: ports are 1-65535, low end first")
        ports.update(range(first, last + 1))
    if not ports:
        raise LabError(f"no ports in {text!r}")
    return frozenset(ports)


def format_ports(ports) -> str:
    """The shortest ``80,443,8000-8999`` form of a set of ports."""
    ranges: list[list[int]] = []
    for port in sorted(ports):
        if ranges and port == ranges[-1][1] + 1:
            ranges[-1][1] = port
        else:
            ranges.append([port, port])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in ranges)


def _u32(raw: bytes) -> int:
    return struct.unpack(keys.HOST_ORDER + "I", raw)[0]


def _u32_bytes(value: int) -> str:
    return " ".join(str(b) for b in struct.pack(keys.HOST_ORDER + "I", value))


def _maps(pin_dir: str) -> tuple[str, str]:
    return posixpath.join(pin_dir, "maps", POLICY_MAP), posixpath.join(pin_dir, "maps", PORTS_MAP)


def require_policy_maps(target: Target, pin_dir: str, variant: str) -> None:
    policy_map, _ = _maps(pin_dir)
    if not target.exists(policy_map):
        raise LabError(f"the {variant} variant installed at {pin_dir} has no port policy (only the "
                       "production and netns variants have one); reinstall with --variant production")


def read(target: Target, pin_dir: str) -> PortPolicy:
    policy_map, ports_map = _maps(pin_dir)
    mode_entries, port_entries = bpftool_batch(target, [["map", "dump", "pinned", policy_map],
                                                        ["map", "dump", "pinned", ports_map]])
    return decode(mode_entries, port_entries, pin_dir)


def decode(mode_entries: list[dict], port_entries: list[dict], pin_dir: str) -> PortPolicy:
    """The policy from ``bpftool -j map dump`` of its two maps."""
    number = _u32(keys.hex_bytes(mode_entries[0]["value"])) if mode_entries else 0
    mode = next((name for name, value in MODES.items() if value == number), None)
    if mode is None:
        raise LabError(f"{_maps(pin_dir)[0]} holds mode {number}, which this lab does not know; set "
                       "the policy again with `sockredir-lab redirect policy`")
    return PortPolicy(mode, frozenset(_u32(keys.hex_bytes(e["key"])) for e in port_entries))


def apply(target: Target, pin_dir: str, policy: PortPolicy) -> PortPolicy:
    """Make the installation at ``pin_dir`` follow ``policy``; returns the policy read back."""
    policy_map, ports_map = _maps(pin_dir)
    current = read(target, pin_dir)
    # Ports first, mode last: a connection made during the change sees the old mode with the new
    # list at worst, never an `only` mode with an empty list.
    lines = [f"map delete pinned {ports_map} key {_u32_bytes(p)}" for p in sorted(current.ports - policy.ports)]
    lines += [f"map update pinned {ports_map} key {_u32_bytes(p)} value {_u32_bytes(1)}"
              for p in sorted(policy.ports - current.ports)]
    lines.append(f"map update pinned {policy_map} key {_u32_bytes(0)} value {_u32_bytes(MODES[policy.mode])}")
    batch = f"{RUN_DIR}/policy-{secrets.token_hex(4)}.batch"
    target.make_dirs(RUN_DIR)
    target.put_text("\n".join(lines) + "\n", batch)
    try:
        result = target.run(["bpftool", "batch", "file", batch], timeout=300)
    finally:
        target.run(["rm", "-f", batch])
    if not result.ok:
        raise LabError(f"setting the port policy at {pin_dir} failed: "
                       f"{(result.stderr.strip() or result.stdout.strip())[-500:]}")
    applied = read(target, pin_dir)
    if applied.mode != policy.mode or (policy.mode != "all" and applied.ports != policy.ports):
        raise LabError(f"the port policy at {pin_dir} reads back as {applied.describe()}, "
                       f"not {policy.describe()}")
    return applied
