// SPDX-License-Identifier: GPL-2.0
/*
 * The guard's first idea (issue 22): from sk_msg, look the peer socket up in the sockhash and read
 * how much it holds unread. A sockhash lookup from a program returns a referenced socket, which
 * must be released with bpf_sk_release; whether sk_msg may call it decides whether this route
 * exists on a kernel.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

struct peer_key {
	__u32 addr;
	__u32 port;
};

struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, 16);
	__type(key, struct peer_key);
	__type(value, __u64);
} peers SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} peer_unread SEC(".maps");

SEC("sk_msg")
int peer_lookup(struct sk_msg_md *msg)
{
	struct peer_key key = { .addr = msg->remote_ip4, .port = msg->remote_port };
	struct bpf_sock *peer = bpf_map_lookup_elem(&peers, &key);
	__u32 zero = 0;
	__u64 *slot;

	if (!peer)
		return SK_PASS;
	slot = bpf_map_lookup_elem(&peer_unread, &zero);
	if (slot)
		*slot = peer->rx_queue_mapping;
	bpf_sk_release(peer);
	return SK_PASS;
}

char _license[] SEC("license") = "GPL";
