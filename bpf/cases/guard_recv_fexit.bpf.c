// SPDX-License-Identifier: GPL-2.0
/*
 * The guard's view of the reader (issue 22), one way: fexit on tcp_bpf_recvmsg, the receive path
 * of every socket with a psock, reading the reader's charged receive memory (sk_rmem_alloc: the
 * redirected bytes it holds unread are charged there) after each read. Only the first argument
 * is read: the function's signature changed in 5.19 (nonblock dropped), the socket stayed first.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} reader_rmem SEC(".maps");

SEC("fexit/tcp_bpf_recvmsg")
int BPF_PROG(after_recv, struct sock *sk)
{
	__u32 zero = 0;
	__u64 *slot = bpf_map_lookup_elem(&reader_rmem, &zero);

	if (slot)
		*slot = sk->sk_backlog.rmem_alloc.counter;
	return 0;
}

char _license[] SEC("license") = "GPL";
