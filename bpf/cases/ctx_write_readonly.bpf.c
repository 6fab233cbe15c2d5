// SPDX-License-Identifier: GPL-2.0
/*
 * A write to a read-only field of the sock_ops context. Only `reply`/`replylong` (and
 * sk_txhash) are writable; rewriting remote_port to "fix" a byte order is refused.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

SEC("sockops")
int write_port(struct bpf_sock_ops *ops)
{
	ops->remote_port = ops->remote_port >> 16;
	return 1;
}

char _license[] SEC("license") = "GPL";
