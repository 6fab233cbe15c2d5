// SPDX-License-Identifier: GPL-2.0
/*
 * The smallest ingress redirect the reproducers need: a SOCKHASH keyed by each socket's local port
 * (host order; both ends on 127.0.0.1 in one test, so the port alone tells them apart), filled from
 * user space, and an sk_msg program that redirects every message into the receive side of the
 * socket whose local port is the sender's remote port. An sk_skb stream verdict program that
 * passes every skb is there for the reproducers of the verdict path (attached only by them: it
 * moves the socket's reads to tcp_bpf_recvmsg_parser).
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, 4);
	__type(key, __u32);
	__type(value, __u64);
} sock_by_port SEC(".maps");

SEC("sk_msg")
int redirect_to_peer(struct sk_msg_md *msg)
{
	/* remote_port holds the network-order port in its upper 16 bits */
	__u32 peer_port = bpf_ntohl(msg->remote_port);

	bpf_msg_redirect_hash(msg, &sock_by_port, &peer_port, BPF_F_INGRESS);
	return SK_PASS;
}

SEC("sk_skb/stream_verdict")
int pass_skb(struct __sk_buff *skb)
{
	return SK_PASS;
}

char _license[] SEC("license") = "GPL";
