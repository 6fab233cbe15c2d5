// SPDX-License-Identifier: GPL-2.0
/*
 * The guard's view of the reader (issue 22), the other way: the sock:sock_recv_length tracepoint
 * (every recvmsg, whichever path its bytes took: socket, bytes returned, flags), reading the
 * reader's charged receive memory through CO-RE. Where fexit is refused (the host here) this is
 * the route, on kernels that have the tracepoint (loading does not need it; attaching does).
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} reader_rmem SEC(".maps");

SEC("tp/sock/sock_recv_length")
int after_recv_tp(struct trace_event_raw_sock_msg_length *ctx)
{
	struct sock *sk = ctx->sk;
	__u32 zero = 0;
	__u64 *slot = bpf_map_lookup_elem(&reader_rmem, &zero);

	if (slot && ctx->ret > 0)
		*slot = BPF_CORE_READ(sk, sk_backlog.rmem_alloc.counter);
	return 0;
}

char _license[] SEC("license") = "GPL";
