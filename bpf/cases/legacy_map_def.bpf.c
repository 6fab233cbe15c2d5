// SPDX-License-Identifier: GPL-2.0
/*
 * The seed's original map definition: `struct bpf_map_def` in a "maps" section.
 * libbpf 1.x (bpftool 7.x) refuses the object before any program reaches the verifier.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

/* libbpf 1.x no longer ships this type; it is the layout the seed relied on. */
struct bpf_map_def {
	unsigned int type;
	unsigned int key_size;
	unsigned int value_size;
	unsigned int max_entries;
	unsigned int map_flags;
};

struct bpf_map_def __attribute__((section("maps"), used)) sock_ops_map = {
	.type        = BPF_MAP_TYPE_SOCKHASH,
	.key_size    = 24,
	.value_size  = sizeof(int),
	.max_entries = 65535,
	.map_flags   = 0,
};

SEC("sk_msg")
int legacy_redir(struct sk_msg_md *msg)
{
	return SK_PASS;
}

char _license[] SEC("license") = "GPL";
