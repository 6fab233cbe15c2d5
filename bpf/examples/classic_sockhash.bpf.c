// SPDX-License-Identifier: GPL-2.0
/*
 * A socket redirect in the classic style of the public examples (bcc's examples/networking/
 * sockmap.py, the Cilium-era samples), written for libbpf: a 20-byte key of (remote, local) IPv4
 * addresses, ports and family, a 4-byte map value, IPv4 only. The lab did not write it the way
 * it writes its own, which is the point: `sockredir-lab suite --program bpf/examples/
 * classic_sockhash.bpf.c` judges it by kernel-side evidence alone (no lab counters, a key layout
 * the lab does not decode, values it cannot read back), and it passes.
 *
 * Built with -DLEAK_ONE_IN=N (N odd) it leaves about one connection in N out of the map (both
 * ends: the choice is made on the sum of the ports, which both ends share; N odd because Linux
 * hands out a client's ports of one parity, so an even N would leave out all or none): a partial
 * redirect, which the judge must fail (tests/integration/test_judge_program.py).
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define AF_INET 2

struct sock_key {
	__u32 remote_ip4;
	__u32 local_ip4;
	__u32 remote_port;	/* host byte order */
	__u32 local_port;	/* host byte order */
	__u32 family;
};

struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, 65535);
	__type(key, struct sock_key);
	__type(value, __u32);
} sock_hash SEC(".maps");

/* One 4-byte volatile load per context field: the verifier refuses narrower or merged loads. */
#define CTX(field) (*(volatile __u32 *)&(field))

SEC("sockops")
int classic_sockops(struct bpf_sock_ops *skops)
{
	struct sock_key key = {};

	if (skops->op != BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB &&
	    skops->op != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB)
		return 0;
	if (CTX(skops->family) != AF_INET)
		return 0;
	key.remote_ip4 = CTX(skops->remote_ip4);
	key.local_ip4 = CTX(skops->local_ip4);
	key.remote_port = bpf_ntohl(CTX(skops->remote_port));
	key.local_port = CTX(skops->local_port);
	key.family = AF_INET;
#ifdef LEAK_ONE_IN
	if ((key.remote_port + key.local_port) % LEAK_ONE_IN == 0)
		return 0;
#endif
	bpf_sock_hash_update(skops, &sock_hash, &key, BPF_NOEXIST);
	return 0;
}

SEC("sk_msg")
int classic_redir(struct sk_msg_md *msg)
{
	struct sock_key peer = {};

	if (CTX(msg->family) != AF_INET)
		return SK_PASS;
	peer.remote_ip4 = CTX(msg->local_ip4);
	peer.local_ip4 = CTX(msg->remote_ip4);
	peer.remote_port = CTX(msg->local_port);
	peer.local_port = bpf_ntohl(CTX(msg->remote_port));
	peer.family = AF_INET;
	bpf_msg_redirect_hash(msg, &sock_hash, &peer, BPF_F_INGRESS);
	return SK_PASS;	/* a miss keeps plain TCP (the helper's own result would be SK_DROP) */
}

char _license[] SEC("license") = "GPL";
