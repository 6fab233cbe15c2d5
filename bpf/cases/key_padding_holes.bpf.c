// SPDX-License-Identifier: GPL-2.0
/*
 * A complete (if naive) redirect whose SOCKHASH key has padding holes that are never written:
 * `struct hole_key key;` without `= {}`, filled field by field. The 3 bytes after `family` and
 * the 4 after `remote_port` hold whatever the stack held. Passing that key to a helper reads
 * uninitialised stack. A fully privileged loader gets it past the verifier on every kernel of the
 * matrix (key_padding_holes_capbpf: not without CAP_PERFMON), and the program then redirects only
 * when the garbage the sockops and the sk_msg program leave in the holes happens to agree: never
 * on most kernels, one direction of the connection on 6.1. Counters show it at run time
 * (tests/integration/test_verifier_cases.py); -DHOLE_KEY_ZEROED builds the fixed program (every
 * key byte written) as the control.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

struct hole_key {
	__u32 local_ip4;
	__u32 remote_ip4;
	__u8  family;		/* 3-byte hole follows */
	__u32 local_port;
	__u32 remote_port;	/* 4-byte hole follows (8-byte alignment of cookie) */
	__u64 cookie_hint;
};

_Static_assert(sizeof(struct hole_key) == 32, "the holes are the point of this case");

/* Index of each counter in hole_counters (read by the test through bpftool). */
enum { HOLE_INSERTED, HOLE_INSERT_FAILED, HOLE_REDIRECTED, HOLE_MISSED, HOLE_NR_COUNTERS };

struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, 64);
	__type(key, struct hole_key);
	__type(value, __u64);
} hole_hash SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, HOLE_NR_COUNTERS);
	__type(key, __u32);
	__type(value, __u64);
} hole_counters SEC(".maps");

static __always_inline void bump(__u32 index)
{
	__u64 *count = bpf_map_lookup_elem(&hole_counters, &index);

	if (count)
		__sync_fetch_and_add(count, 1);
}

SEC("sockops")
int hole_ops(struct bpf_sock_ops *ops)
{
	struct hole_key key;	/* the bug: no "= {}" */
#ifdef HOLE_KEY_ZEROED
	__builtin_memset(&key, 0, sizeof(key));	/* the fix: the test's control run */
#endif

	if (ops->op != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB &&
	    ops->op != BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB)
		return 1;
	if (ops->family != 2)	/* AF_INET */
		return 1;
	key.local_ip4 = ops->local_ip4;
	key.remote_ip4 = ops->remote_ip4;
	key.family = 1;
	key.local_port = ops->local_port;
	key.remote_port = bpf_ntohl(ops->remote_port);
	key.cookie_hint = 0;
	bump(bpf_sock_hash_update(ops, &hole_hash, &key, BPF_NOEXIST) ? HOLE_INSERT_FAILED : HOLE_INSERTED);
	return 1;
}

SEC("sk_msg")
int hole_msg(struct sk_msg_md *msg)
{
	struct hole_key peer;	/* the same bug on the lookup side */
#ifdef HOLE_KEY_ZEROED
	__builtin_memset(&peer, 0, sizeof(peer));
#endif

	peer.local_ip4 = msg->remote_ip4;
	peer.remote_ip4 = msg->local_ip4;
	peer.family = 1;
	peer.local_port = bpf_ntohl(msg->remote_port);
	peer.remote_port = msg->local_port;
	peer.cookie_hint = 0;
	bump(bpf_msg_redirect_hash(msg, &hole_hash, &peer, BPF_F_INGRESS) == SK_PASS ?
	     HOLE_REDIRECTED : HOLE_MISSED);
	return SK_PASS;	/* a miss falls back to TCP, so the connection works either way */
}

char _license[] SEC("license") = "GPL";
