// SPDX-License-Identifier: GPL-2.0
/*
 * remote_ip4 and local_ip4 of bpf_sock_ops are adjacent u32s at offsets 24 and 28. Clang may
 * merge the two loads into one 8-byte load at offset 24; the verifier only allows 4-byte
 * access to them. The u64 pointer cast forces the merged load, so the case does not depend on
 * the optimiser.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

struct ip_pair {
	__u32 remote_ip4;
	__u32 local_ip4;
};

struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, 16);
	__type(key, struct ip_pair);
	__type(value, __u64);
} merged_hash SEC(".maps");

SEC("sockops")
int merged_ips(struct bpf_sock_ops *ops)
{
	__u64 both = *(volatile __u64 *)&ops->remote_ip4;
	struct ip_pair key = { .remote_ip4 = (__u32)both, .local_ip4 = (__u32)(both >> 32) };

	if (ops->op == BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB)
		bpf_sock_hash_update(ops, &merged_hash, &key, BPF_ANY);
	return 1;
}

char _license[] SEC("license") = "GPL";
