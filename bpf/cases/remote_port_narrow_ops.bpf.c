// SPDX-License-Identifier: GPL-2.0
/*
 * A 2-byte load of the upper half of bpf_sock_ops.remote_port (offset 66), where the
 * network-order port sits on little endian: what `(__u16)(ops->remote_port >> 16)` compiles to
 * without CO-RE. The verifier only allows 4-byte access to this field.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, 16);
	__type(key, __u32);
	__type(value, __u64);
} narrow_ops_hash SEC(".maps");

SEC("sockops")
int narrow_ops_port(struct bpf_sock_ops *ops)
{
	__u32 key;

	/* Inline asm: with CO-RE, clang computes &remote_port first and the verifier then refuses
	 * the modified context pointer instead ("dereference of modified ctx ptr"). */
	asm volatile("%0 = *(u16 *)(%1 + 66)" : "=r"(key) : "r"(ops));

	if (ops->op == BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB)
		bpf_sock_hash_update(ops, &narrow_ops_hash, &key, BPF_ANY);
	return 1;
}

char _license[] SEC("license") = "GPL";
