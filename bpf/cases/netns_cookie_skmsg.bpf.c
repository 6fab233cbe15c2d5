// SPDX-License-Identifier: GPL-2.0
/*
 * bpf_get_netns_cookie from an sk_msg program: the other half of the netns variant.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} last_netns_msg SEC(".maps");

SEC("sk_msg")
int netns_msg(struct sk_msg_md *msg)
{
	__u32 zero = 0;
	__u64 *slot = bpf_map_lookup_elem(&last_netns_msg, &zero);

	if (slot)
		*slot = bpf_get_netns_cookie(msg);
	return SK_PASS;
}

char _license[] SEC("license") = "GPL";
