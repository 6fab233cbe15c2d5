// SPDX-License-Identifier: GPL-2.0
/*
 * The guard's view of its own socket (issue 22): from sk_msg, the sending socket (msg->sk) as a
 * tcp_sock through bpf_skc_to_tcp_sock, to read how much of what it sent over TCP is still in
 * flight (write_seq - snd_una): a connection may go back to the redirect only when that is 0.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} in_flight SEC(".maps");

SEC("sk_msg")
int sender_seq(struct sk_msg_md *msg)
{
	struct bpf_sock *sk = msg->sk;
	struct tcp_sock *tp;
	__u32 zero = 0;
	__u64 *slot;

	if (!sk)
		return SK_PASS;
	tp = bpf_skc_to_tcp_sock(sk);
	slot = bpf_map_lookup_elem(&in_flight, &zero);
	if (tp && slot)
		*slot = tp->write_seq - tp->snd_una;
	return SK_PASS;
}

char _license[] SEC("license") = "GPL";
