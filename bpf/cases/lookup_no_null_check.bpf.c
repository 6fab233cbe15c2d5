// SPDX-License-Identifier: GPL-2.0
/*
 * A counter bumped through bpf_map_lookup_elem's result without checking it for NULL. The
 * lookup of index 0 of a one-entry array cannot fail at run time, but the verifier types the
 * result as "map value or NULL" until the program tests it.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} msg_count SEC(".maps");

SEC("sk_msg")
int count_no_check(struct sk_msg_md *msg)
{
	__u32 zero = 0;
	__u64 *count = bpf_map_lookup_elem(&msg_count, &zero);

	*count += 1;
	return SK_PASS;
}

char _license[] SEC("license") = "GPL";
