"""Decode the redirect's maps from ``bpftool -j map dump`` output.

bpftool prints every key and value as a list of hex byte strings (``["0x7f", "0x00", ...]``) in
memory order. Two key layouts exist, told apart by their size:

* seed (24 bytes, ``bpf/seed/sockredir_seed.h``): ``sip4, dip4`` (network order), ``family`` (1),
  three pad fields, then ``sport, dport`` as u32 holding ``htonl(port) >> 16``: on a little-endian
  machine the two port bytes come first, in network order.
* production (48 bytes, ``bpf/sockredir.h``): ``local_ip[16], remote_ip[16]`` (network order, IPv4
  as v4-mapped IPv6), ``local_port, remote_port`` (u32, host order), ``netns_cookie`` (u64).

Values: the production map's 8-byte value is the socket cookie. The seed's 4-byte value cannot be
read back (the kernel only returns a cookie into 8 bytes), so bpftool prints
``{"error": "No space left on device"}`` instead of bytes; that is kept as ``value_error``. A
SOCKMAP is an array: its dump lists every slot, the empty ones with ``No such file or directory``,
which are not entries.

All targets are x86-64, so host-order fields are little endian.
"""

from __future__ import annotations

import ipaddress
import struct
from typing import Any

SEED_KEY_SIZE = 24
PRODUCTION_KEY_SIZE = 48
HOST_ORDER = "<"  # x86-64 guests and host

# Field order of struct sockredir_counters in bpf/sockredir.h (all u64).
COUNTER_FIELDS = (
    "inserted_v4",
    "inserted_v6",
    "inserted_v4mapped",
    "insert_failed",
    "skipped_family",
    "msgs_redirected",
    "bytes_redirected",
    "msgs_missed",
    "bytes_missed",
)


# Field order of struct sockredir_guard_counters (the guarded variant's decisions).
GUARD_FIELDS = (
    "msgs_backpressure",
    "bytes_backpressure",
    "msgs_in_order",
    "bytes_in_order",
    "leaves",
    "returns",
    "reads",
    "state_failed",
)

# struct sockredir_watch_counters (bpf/sockredir_watch.h): the watching shapes' counters.
WATCH_FIELDS = (
    "msgs_passed",
    "bytes_passed",
    "skbs_passed",
    "skb_bytes",
)


def guard_tcp_bytes(guard: dict[str, int]) -> int:
    """Bytes the guard sent over TCP (for any reason), from its counters or a delta of them."""
    return guard.get("bytes_backpressure", 0) + guard.get("bytes_in_order", 0)


class DecodeError(ValueError):
    pass


def hex_bytes(items: list[str]) -> bytes:
    """``["0x7f", "0x00"]`` -> ``b"\\x7f\\x00"``."""
    try:
        return bytes(int(item, 16) for item in items)
    except (TypeError, ValueError) as exc:
        raise DecodeError(f"not a bpftool byte list: {items!r}") from exc


def address(raw: bytes) -> str:
    """An address in network order; v4-mapped IPv6 is shown as plain IPv4 (what it stands for)."""
    if len(raw) == 4:
        return str(ipaddress.IPv4Address(raw))
    ip6 = ipaddress.IPv6Address(raw)
    return str(ip6.ipv4_mapped) if ip6.ipv4_mapped else str(ip6)


def seed_port(raw: bytes) -> int:
    """A seed port field: u32 ``htonl(port) >> 16``, i.e. network-order port in the first 2 bytes."""
    if raw[2:4] != b"\0\0":
        raise DecodeError(f"seed port field {raw.hex()} has bits above the port")
    return int.from_bytes(raw[:2], "big")


def decode_seed_key(raw: bytes) -> dict[str, Any]:
    sip4, dip4, family, pad1, pad2, pad3 = struct.unpack("<4s4sBBHI", raw[:16])
    return {
        "layout": "seed",
        "local": (address(sip4), seed_port(raw[16:20])),
        "remote": (address(dip4), seed_port(raw[20:24])),
        "family": family,
        "padding_clean": pad1 == pad2 == pad3 == 0,
    }


def decode_production_key(raw: bytes) -> dict[str, Any]:
    local_ip, remote_ip = raw[0:16], raw[16:32]
    local_port, remote_port, netns = struct.unpack(HOST_ORDER + "IIQ", raw[32:48])
    key: dict[str, Any] = {
        "layout": "production",
        "local": (address(local_ip), local_port),
        "remote": (address(remote_ip), remote_port),
    }
    if netns:
        key["netns"] = netns
    return key


def decode_key(raw: bytes) -> dict[str, Any]:
    if len(raw) == SEED_KEY_SIZE:
        return decode_seed_key(raw)
    if len(raw) == PRODUCTION_KEY_SIZE:
        return decode_production_key(raw)
    raise DecodeError(f"unknown key layout of {len(raw)} bytes (seed keys have {SEED_KEY_SIZE}, "
                      f"production keys {PRODUCTION_KEY_SIZE})")


def decode_entry(entry: dict) -> dict[str, Any]:
    """One element of ``bpftool -j map dump`` of a sockhash (or sockmap). A key of another layout
    (someone else's program, a mutant) is kept as bytes: such entries are judged by count and by
    the socket cookie their value holds."""
    raw_key = hex_bytes(entry["key"])
    try:
        decoded = decode_key(raw_key)
    except DecodeError:
        decoded = {"layout": "unknown", "key": raw_key.hex()}
    value = entry.get("value")
    if isinstance(value, list):
        raw = hex_bytes(value)
        if len(raw) == 8:
            decoded["cookie"] = struct.unpack(HOST_ORDER + "Q", raw)[0]
    elif isinstance(value, dict) and "error" in value:
        decoded["value_error"] = value["error"]
    return decoded


# What bpftool prints for a key with no socket: every empty slot of a SOCKMAP (an array: its dump
# walks every index), or a SOCKHASH key deleted between bpftool's walk and its lookup.
NO_SOCKET = "No such file or directory"


def decode_sockhash_dump(dump: list[dict]) -> list[dict[str, Any]]:
    """The entries of a SOCKHASH or SOCKMAP dump that hold a socket."""
    decoded = (decode_entry(entry) for entry in dump)
    return [entry for entry in decoded if entry.get("value_error") != NO_SOCKET]


def counters_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """What each counter grew by between two ``decode_counters`` readings."""
    return {name: after[name] - before[name] for name in after if name in before}


def decode_counters(dump: list[dict], fields: tuple[str, ...] = COUNTER_FIELDS) -> dict[str, int]:
    """Sum a struct of u64 counters (``fields``, in order: ``struct sockredir_counters`` by
    default) over CPUs from a PERCPU_ARRAY dump (entry 0)."""
    totals = dict.fromkeys(fields, 0)
    width = 8 * len(fields)
    for entry in dump:
        for per_cpu in entry.get("values", []):
            raw = hex_bytes(per_cpu["value"])
            if len(raw) != width:
                raise DecodeError(f"counter value of {len(raw)} bytes; expected {width} "
                                  f"({len(fields)} u64 fields): bpf/sockredir.h and lab/bpf/keys.py differ")
            for name, number in zip(fields, struct.unpack(HOST_ORDER + f"{len(fields)}Q", raw)):
                totals[name] += number
    return totals
