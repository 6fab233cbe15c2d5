// SPDX-License-Identifier: GPL-2.0
/*
 * bpf_get_netns_cookie from a sock_ops program: what the production redirect's netns variant
 * (-DSOCKREDIR_NETNS) needs. Whether the kernel offers the helper to sock_ops programs decides.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} last_netns_ops SEC(".maps");

SEC("sockops")
int netns_ops(struct bpf_sock_ops *ops)
{
	__u32 zero = 0;
	__u64 *slot = bpf_map_lookup_elem(&last_netns_ops, &zero);

	if (slot)
		*slot = bpf_get_netns_cookie(ops);
	return 1;
}

char _license[] SEC("license") = "GPL";
