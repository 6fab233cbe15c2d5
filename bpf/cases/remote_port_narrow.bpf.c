// SPDX-License-Identifier: GPL-2.0
/*
 * A 2-byte load of sk_msg_md.remote_port: the verifier only allows 4-byte access to it
 * ("invalid bpf_context access off=60 size=2" on 6.18).
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, 16);
	__type(key, __u32);
	__type(value, __u64);
} narrow_hash SEC(".maps");

SEC("sk_msg")
int narrow_port(struct sk_msg_md *msg)
{
	__u32 key = *(volatile __u16 *)&msg->remote_port;

	bpf_msg_redirect_hash(msg, &narrow_hash, &key, BPF_F_INGRESS);
	return SK_PASS;
}

char _license[] SEC("license") = "GPL";
