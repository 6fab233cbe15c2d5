// SPDX-License-Identifier: GPL-2.0
/*
 * A hash map lookup dereferenced without a NULL check. Unlike an in-range constant index of an
 * array, a hash lookup can miss at run time, so no kernel can prove the result non-NULL.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__type(key, __u32);
	__type(value, __u64);
} bytes_by_port SEC(".maps");

SEC("sk_msg")
int hash_no_check(struct sk_msg_md *msg)
{
	__u32 port = msg->local_port;
	__u64 *bytes = bpf_map_lookup_elem(&bytes_by_port, &port);

	*bytes += msg->size;
	return SK_PASS;
}

char _license[] SEC("license") = "GPL";
