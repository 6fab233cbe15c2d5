// SPDX-License-Identifier: GPL-2.0
/*
 * bpf_sock_hash_update called from an sk_msg program: the helper belongs to sock_ops programs
 * (sk_msg may only redirect through the map, not insert into it).
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, 16);
	__type(key, __u32);
	__type(value, __u64);
} skmsg_hash SEC(".maps");

SEC("sk_msg")
int update_from_msg(struct sk_msg_md *msg)
{
	__u32 key = msg->local_port;

	/* The helper's declared context is struct bpf_sock_ops; sk_msg passes its own. */
	bpf_sock_hash_update((struct bpf_sock_ops *)msg, &skmsg_hash, &key, BPF_ANY);
	return SK_PASS;
}

char _license[] SEC("license") = "GPL";
