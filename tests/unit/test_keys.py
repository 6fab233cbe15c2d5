"""Key, value and counter decoding against real ``bpftool -j map dump`` output.

The dumps below were captured on the host (kernel 6.18, bpftool 7.1) while a connection made by
``scenarios/pair.py`` was open; the comment above each names the two sockets' (getsockname,
getpeername) as the scenario reported them. The keys must decode to exactly those.
"""

import json
import re

import pytest

from lab import BPF_DIR
from lab.bpf import keys

# sockets (getsockname, getpeername): {"client": [["::1", 49740], ["::1", 46163]], "server": [["::1", 46163], ["::1", 49740]]}

NETNS_IPV6_SREDIR_COUNTERS = json.loads(
    '[{"key":["0x00","0x00","0x00","0x00"],"values":[{"cpu":0,"value":["0x00","0x00","0x00","0x00","0'
    'x00","0x00","0x00","0x00","0x02","0x00","0x00","0x00","0x00","0x00","0x00","0x00","0x00","0x00",'
    '"0x00","0x00","0x00","0x00","0x00","0x00","0x00","0x00","0x00","0x00","0x00","0x00","0x00","0x00'
    '","0x00","0x00","0x00","0x00","0x00","0x00","0x00","0x00","0x02","0x00","0x00","0x00","0x00","0x'
    '00","0x00","0x00","0xd0","0x07","0x00","0x00","0x00","0x00","0x00","0x00","0x00","0x00","0x00","'
    '0x00","0x00","0x00","0x00","0x00","0x00","0x00","0x00","0x00","0x00","0x00","0x00","0x00"]},{"cp'
    'u":1,"value":["0x00","0x00","0x00","0x00","0x00","0x00","0x00","0x00","0x00","0x00","0x00","0x00'
    '","0x00","0x00","0x00","0x00","0x00","0x00","0x00","0x00","0x00","0x00","0x00","0x00","0x00","0x'
    '00","0x00","0x00","0x00","0x00","0x00","0x00","0x00","0x00","0x00","0x00","0x00","0x00","0x00","'
    '0x00","0x00","0x00","0x00","0x00","0x00","0x00","0x00","0x00","0x00","0x00","0x00","0x00","0x00"'
    ',"0x00","0x00","0x00","0x00","0x00","0x00","0x00","0x00","0x00","0x00","0x00","0x00","0x00","0x0'
    '0","0x00","0x00","0x00","0x00","0x00"]}],"formatted":{"key":0,"values":[{"cpu":0,"value":{"inser'
    'ted_v4":0,"inserted_v6":2,"inserted_v4mapped":0,"insert_failed":0,"skipped_family":0,"msgs_redir'
    'ected":2,"bytes_redirected":2000,"msgs_missed":0,"bytes_missed":0}},{"cpu":1,"value":{"inserted_'
    'v4":0,"inserted_v6":0,"inserted_v4mapped":0,"insert_failed":0,"skipped_family":0,"msgs_redirecte'
    'd":0,"bytes_redirected":0,"msgs_missed":0,"bytes_missed":0}}]}}]'
)

NETNS_IPV6_SREDIR_HASH = json.loads(
    '[{"key":["0x00","0x00","0x00","0x00","0x00","0x00","0x00","0x00","0x00","0x00","0x00","0x00","0x'
    '00","0x00","0x00","0x01","0x00","0x00","0x00","0x00","0x00","0x00","0x00","0x00","0x00","0x00","'
    '0x00","0x00","0x00","0x00","0x00","0x01","0x53","0xb4","0x00","0x00","0x4c","0xc2","0x00","0x00"'
    ',"0x11","0x10","0x00","0x00","0x00","0x00","0x00","0x00"],"value":["0x0d","0x10","0x00","0x00","'
    '0x00","0x00","0x00","0x00"]},{"key":["0x00","0x00","0x00","0x00","0x00","0x00","0x00","0x00","0x'
    '00","0x00","0x00","0x00","0x00","0x00","0x00","0x01","0x00","0x00","0x00","0x00","0x00","0x00","'
    '0x00","0x00","0x00","0x00","0x00","0x00","0x00","0x00","0x00","0x01","0x4c","0xc2","0x00","0x00"'
    ',"0x53","0xb4","0x00","0x00","0x11","0x10","0x00","0x00","0x00","0x00","0x00","0x00"],"value":["'
    '0x0e","0x10","0x00","0x00","0x00","0x00","0x00","0x00"]}]'
)

# sockets (getsockname, getpeername): {"client": [["127.0.0.1", 55954], ["127.0.0.1", 55755]], "server": [["::ffff:127.0.0.1", 55755], ["::ffff:127.0.0.1", 55954]]}

PRODUCTION_V4MAPPED_SREDIR_COUNTERS = json.loads(
    '[{"key":["0x00","0x00","0x00","0x00"],"values":[{"cpu":0,"value":["0x00","0x00","0x00","0x00","0'
    'x00","0x00","0x00","0x00","0x00","0x00","0x00","0x00","0x00","0x00","0x00","0x00","0x00","0x00",'
    '"0x00","0x00","0x00","0x00","0x00","0x00","0x00","0x00","0x00","0x00","0x00","0x00","0x00","0x00'
    '","0x00","0x00","0x00","0x00","0x00","0x00","0x00","0x00","0x01","0x00","0x00","0x00","0x00","0x'
    '00","0x00","0x00","0xe8","0x03","0x00","0x00","0x00","0x00","0x00","0x00","0x00","0x00","0x00","'
    '0x00","0x00","0x00","0x00","0x00","0x00","0x00","0x00","0x00","0x00","0x00","0x00","0x00"]},{"cp'
    'u":1,"value":["0x01","0x00","0x00","0x00","0x00","0x00","0x00","0x00","0x00","0x00","0x00","0x00'
    '","0x00","0x00","0x00","0x00","0x01","0x00","0x00","0x00","0x00","0x00","0x00","0x00","0x00","0x'
    '00","0x00","0x00","0x00","0x00","0x00","0x00","0x00","0x00","0x00","0x00","0x00","0x00","0x00","'
    '0x00","0x01","0x00","0x00","0x00","0x00","0x00","0x00","0x00","0xe8","0x03","0x00","0x00","0x00"'
    ',"0x00","0x00","0x00","0x00","0x00","0x00","0x00","0x00","0x00","0x00","0x00","0x00","0x00","0x0'
    '0","0x00","0x00","0x00","0x00","0x00"]}],"formatted":{"key":0,"values":[{"cpu":0,"value":{"inser'
    'ted_v4":0,"inserted_v6":0,"inserted_v4mapped":0,"insert_failed":0,"skipped_family":0,"msgs_redir'
    'ected":1,"bytes_redirected":1000,"msgs_missed":0,"bytes_missed":0}},{"cpu":1,"value":{"inserted_'
    'v4":1,"inserted_v6":0,"inserted_v4mapped":1,"insert_failed":0,"skipped_family":0,"msgs_redirecte'
    'd":1,"bytes_redirected":1000,"msgs_missed":0,"bytes_missed":0}}]}}]'
)

PRODUCTION_V4MAPPED_SREDIR_HASH = json.loads(
    '[{"key":["0x00","0x00","0x00","0x00","0x00","0x00","0x00","0x00","0x00","0x00","0xff","0xff","0x'
    '7f","0x00","0x00","0x01","0x00","0x00","0x00","0x00","0x00","0x00","0x00","0x00","0x00","0x00","'
    '0xff","0xff","0x7f","0x00","0x00","0x01","0xcb","0xd9","0x00","0x00","0x92","0xda","0x00","0x00"'
    ',"0x00","0x00","0x00","0x00","0x00","0x00","0x00","0x00"],"value":["0x0f","0x10","0x00","0x00","'
    '0x00","0x00","0x00","0x00"]},{"key":["0x00","0x00","0x00","0x00","0x00","0x00","0x00","0x00","0x'
    '00","0x00","0xff","0xff","0x7f","0x00","0x00","0x01","0x00","0x00","0x00","0x00","0x00","0x00","'
    '0x00","0x00","0x00","0x00","0xff","0xff","0x7f","0x00","0x00","0x01","0x92","0xda","0x00","0x00"'
    ',"0xcb","0xd9","0x00","0x00","0x00","0x00","0x00","0x00","0x00","0x00","0x00","0x00"],"value":["'
    '0x10","0x10","0x00","0x00","0x00","0x00","0x00","0x00"]}]'
)

# sockets (getsockname, getpeername): {"client": [["127.0.0.1", 56256], ["127.0.0.1", 45041]], "server": [["127.0.0.1", 45041], ["127.0.0.1", 56256]]}

SEED_IPV4_SOCK_OPS_MAP = json.loads(
    '[{"key":["0x7f","0x00","0x00","0x01","0x7f","0x00","0x00","0x01","0x01","0x00","0x00","0x00","0x'
    '00","0x00","0x00","0x00","0xdb","0xc0","0x00","0x00","0xaf","0xf1","0x00","0x00"],"value":{"erro'
    'r":"No space left on device"}},{"key":["0x7f","0x00","0x00","0x01","0x7f","0x00","0x00","0x01","'
    '0x01","0x00","0x00","0x00","0x00","0x00","0x00","0x00","0xaf","0xf1","0x00","0x00","0xdb","0xc0"'
    ',"0x00","0x00"],"value":{"error":"No space left on device"}}]'
)


def pairs(sockets: dict) -> set:
    """(local, remote) of both sockets, v4-mapped written as IPv4 like the decoded keys."""
    def plain(addr):
        host, port = addr
        return (host[7:] if host.startswith("::ffff:") else host, port)
    return {(plain(local), plain(remote)) for local, remote in sockets.values()}


def decoded_pairs(entries: list) -> set:
    return {(e["local"], e["remote"]) for e in entries}


def test_seed_keys_decode_to_the_sockets():
    entries = keys.decode_sockhash_dump(SEED_IPV4_SOCK_OPS_MAP)
    sockets = {"client": [["127.0.0.1", 56256], ["127.0.0.1", 45041]],
               "server": [["127.0.0.1", 45041], ["127.0.0.1", 56256]]}
    assert decoded_pairs(entries) == pairs(sockets)
    for entry in entries:
        assert entry["layout"] == "seed" and entry["family"] == 1 and entry["padding_clean"]
        # The seed's 4-byte value cannot hold the socket cookie the kernel returns.
        assert entry["value_error"] == "No space left on device" and "cookie" not in entry


def test_production_v4_mapped_keys_decode_to_the_sockets():
    entries = keys.decode_sockhash_dump(PRODUCTION_V4MAPPED_SREDIR_HASH)
    sockets = {"client": [["127.0.0.1", 55954], ["127.0.0.1", 55755]],
               "server": [["::ffff:127.0.0.1", 55755], ["::ffff:127.0.0.1", 55954]]}
    assert decoded_pairs(entries) == pairs(sockets)
    assert [e["cookie"] for e in entries] == [0x100F, 0x1010]
    assert all("netns" not in e for e in entries)


def test_netns_ipv6_keys_decode_to_the_sockets():
    entries = keys.decode_sockhash_dump(NETNS_IPV6_SREDIR_HASH)
    sockets = {"client": [["::1", 49740], ["::1", 46163]], "server": [["::1", 46163], ["::1", 49740]]}
    assert decoded_pairs(entries) == pairs(sockets)
    assert {e["netns"] for e in entries} == {0x1011}


@pytest.mark.parametrize("dump", [NETNS_IPV6_SREDIR_COUNTERS, PRODUCTION_V4MAPPED_SREDIR_COUNTERS],
                         ids=["netns-ipv6", "production-v4mapped"])
def test_counters_from_raw_bytes_match_bpftools_btf_view(dump):
    """Summing the raw per-CPU bytes gives what bpftool's BTF-formatted view says, field by field."""
    from_btf = dict.fromkeys(keys.COUNTER_FIELDS, 0)
    for per_cpu in dump[0]["formatted"]["values"]:
        assert list(per_cpu["value"]) == list(keys.COUNTER_FIELDS)
        for name, number in per_cpu["value"].items():
            from_btf[name] += number
    assert keys.decode_counters(dump) == from_btf


def test_counters_of_the_captured_transfers():
    # 1000 bytes each way, one send each: two messages, 2000 bytes redirected.
    v6 = keys.decode_counters(NETNS_IPV6_SREDIR_COUNTERS)
    assert (v6["inserted_v6"], v6["msgs_redirected"], v6["bytes_redirected"]) == (2, 2, 2000)
    mapped = keys.decode_counters(PRODUCTION_V4MAPPED_SREDIR_COUNTERS)
    assert (mapped["inserted_v4"], mapped["inserted_v4mapped"], mapped["bytes_redirected"]) == (1, 1, 2000)


@pytest.mark.parametrize("header, struct, fields", [
    ("sockredir.h", "sockredir_counters", keys.COUNTER_FIELDS),
    ("sockredir.h", "sockredir_guard_counters", keys.GUARD_FIELDS),
    ("sockredir_watch.h", "sockredir_watch_counters", keys.WATCH_FIELDS)])
def test_counter_fields_follow_the_c_struct(header, struct, fields):
    header = (BPF_DIR / header).read_text()
    body = re.search(rf"struct {struct} \{{(.*?)\}};", header, re.S).group(1)
    assert tuple(re.findall(r"__u64 (\w+);", body)) == fields


def test_guard_counters_decode_by_their_own_fields():
    values = [{"cpu": cpu, "value": [f"0x{b:02x}" for b in struct_pack(cpu)]} for cpu in (0, 1)]
    totals = keys.decode_counters([{"key": ["0x00"] * 4, "values": values}], keys.GUARD_FIELDS)
    assert totals["msgs_backpressure"] == 1 and totals["returns"] == 2 * keys.GUARD_FIELDS.index("returns") + 1
    with pytest.raises(keys.DecodeError, match="differ"):
        keys.decode_counters([{"key": ["0x00"] * 4, "values": values}])  # the wrong struct


def struct_pack(cpu: int) -> bytes:
    import struct
    return struct.pack(f"<{len(keys.GUARD_FIELDS)}Q", *(index + cpu for index in range(len(keys.GUARD_FIELDS))))


def test_key_sizes_follow_the_c_structs():
    assert "== 48" in (BPF_DIR / "sockredir.h").read_text()
    assert keys.PRODUCTION_KEY_SIZE == 48 and keys.SEED_KEY_SIZE == 4 * 4 + 2 * 4


def test_seed_port_field_byte_order():
    # htonl(8080) >> 16 on little endian: bytes 1f 90 00 00
    assert keys.seed_port(bytes([0x1F, 0x90, 0, 0])) == 8080
    with pytest.raises(keys.DecodeError):
        keys.seed_port(bytes([0x1F, 0x90, 0, 1]))


def test_unknown_layouts_are_kept_as_bytes_and_bad_bytes_refused():
    # another program's key (a SOCKMAP index, a mutant's): kept raw, with the cookie of its value
    entry = keys.decode_entry({"key": ["0x05", "0x00", "0x00", "0x00"],
                               "value": ["0x2a", "0x00", "0x00", "0x00", "0x00", "0x00", "0x00", "0x00"]})
    assert entry == {"layout": "unknown", "key": "05000000", "cookie": 42}
    with pytest.raises(keys.DecodeError, match="unknown key layout of 4 bytes"):
        keys.decode_key(b"\0" * 4)
    with pytest.raises(keys.DecodeError):
        keys.hex_bytes(["zz"])
    with pytest.raises(keys.DecodeError, match="differ"):
        keys.decode_counters([{"key": ["0x00"] * 4, "values": [{"cpu": 0, "value": ["0x00"] * 8}]}])


def test_the_empty_slots_of_a_sockmap_are_not_entries():
    # bpftool -j map dump of a 4-slot SOCKMAP (8-byte values) holding one socket in slot 2
    dump = [{"key": ["0x00", "0x00", "0x00", "0x00"], "value": {"error": "No such file or directory"}},
            {"key": ["0x01", "0x00", "0x00", "0x00"], "value": {"error": "No such file or directory"}},
            {"key": ["0x02", "0x00", "0x00", "0x00"],
             "value": ["0x2a", "0x00", "0x00", "0x00", "0x00", "0x00", "0x00", "0x00"]},
            {"key": ["0x03", "0x00", "0x00", "0x00"], "value": {"error": "No such file or directory"}}]
    assert keys.decode_sockhash_dump(dump) == [{"layout": "unknown", "key": "02000000", "cookie": 42}]
    # a value that cannot be read back (4 bytes) is still an entry
    seed_like = [{"key": ["0x00"] * 4, "value": {"error": "No space left on device"}}]
    assert len(keys.decode_sockhash_dump(seed_like)) == 1
