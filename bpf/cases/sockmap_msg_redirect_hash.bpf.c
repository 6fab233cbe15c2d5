// SPDX-License-Identifier: GPL-2.0
/*
 * A SOCKMAP (array of sockets, map type 15) passed to bpf_msg_redirect_hash, which takes a
 * SOCKHASH only; the SOCKMAP helper is bpf_msg_redirect_map. The verifier checks the pairing.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

struct {
	__uint(type, BPF_MAP_TYPE_SOCKMAP);
	__uint(max_entries, 16);
	__type(key, __u32);
	__type(value, __u64);
} wrong_map SEC(".maps");

SEC("sk_msg")
int redirect_wrong_map(struct sk_msg_md *msg)
{
	__u32 key = 0;

	bpf_msg_redirect_hash(msg, &wrong_map, &key, BPF_F_INGRESS);
	return SK_PASS;
}

char _license[] SEC("license") = "GPL";
