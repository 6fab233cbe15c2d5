// SPDX-License-Identifier: GPL-2.0
/*
 * A socket redirect over a SOCKMAP (bpf_msg_redirect_map), the other map type the kernel offers
 * for it: a SOCKMAP is an array of sockets, so the program keeps the index itself. The sock_ops
 * program puts each established IPv4 socket in a slot and records the slot under the socket's
 * 4-tuple in a HASH map; the sk_msg program looks the peer's slot up by the peer's 4-tuple and
 * redirects into it. `sockredir-lab suite --program bpf/examples/sockmap_slots.bpf.c` judges it
 * like any redirect (tests/integration/test_judge_program.py: on the host by default, every kernel
 * with --checks-all).
 *
 * The slot is the socket's cookie modulo SLOTS: the kernel hands out cookies from one counter, so
 * sockets alive at once get different slots until SLOTS cookies have been handed out meanwhile,
 * with no atomic instruction (5.10 has no fetch-and-add for BPF). A slot still held is never
 * taken over (BPF_NOEXIST): that socket stays on plain TCP. A closing socket leaves the SOCKMAP by
 * itself; its 4-tuple is forgotten at TCP_CLOSE (the state callback), so a reused 4-tuple never
 * reaches the slot of a socket that is gone. The values are 8 bytes, so the lab reads every slot's
 * socket cookie back and checks that it is the socket the 4-tuple names.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define AF_INET 2
#define SLOTS 4096	/* the scenarios hold up to 2,000 sockets at once; a dump walks every slot */

struct sock_key {
	__u32 remote_ip4;
	__u32 local_ip4;
	__u32 remote_port;	/* host byte order */
	__u32 local_port;	/* host byte order */
};

struct {
	__uint(type, BPF_MAP_TYPE_SOCKMAP);
	__uint(max_entries, SLOTS);
	__type(key, __u32);
	__type(value, __u64);
} sock_slots SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, SLOTS);
	__type(key, struct sock_key);
	__type(value, __u32);
} slot_of SEC(".maps");

/* One 4-byte volatile load per context field: the verifier refuses narrower or merged loads. */
#define CTX(field) (*(volatile __u32 *)&(field))

static __always_inline void own_key(struct bpf_sock_ops *skops, struct sock_key *key)
{
	key->remote_ip4 = CTX(skops->remote_ip4);
	key->local_ip4 = CTX(skops->local_ip4);
	key->remote_port = bpf_ntohl(CTX(skops->remote_port));
	key->local_port = CTX(skops->local_port);
}

SEC("sockops")
int slots_sockops(struct bpf_sock_ops *skops)
{
	struct sock_key key = {};
	__u32 op = skops->op, slot;

	if (CTX(skops->family) != AF_INET)
		return 0;
	if (op == BPF_SOCK_OPS_STATE_CB) {
		if (skops->args[1] == BPF_TCP_CLOSE) {
			own_key(skops, &key);
			bpf_map_delete_elem(&slot_of, &key);
		}
		return 0;
	}
	if (op != BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB && op != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB)
		return 0;
	own_key(skops, &key);
	slot = bpf_get_socket_cookie(skops) % SLOTS;
	if (bpf_sock_map_update(skops, &sock_slots, &slot, BPF_NOEXIST))
		return 0;	/* the slot is held: this socket stays on TCP */
	bpf_map_update_elem(&slot_of, &key, &slot, BPF_ANY);
	bpf_sock_ops_cb_flags_set(skops, BPF_SOCK_OPS_STATE_CB_FLAG);
	return 0;
}

SEC("sk_msg")
int slots_redir(struct sk_msg_md *msg)
{
	struct sock_key peer = {};
	__u32 *slot;

	if (CTX(msg->family) != AF_INET)
		return SK_PASS;
	peer.remote_ip4 = CTX(msg->local_ip4);
	peer.local_ip4 = CTX(msg->remote_ip4);
	peer.remote_port = CTX(msg->local_port);
	peer.local_port = bpf_ntohl(CTX(msg->remote_port));
	slot = bpf_map_lookup_elem(&slot_of, &peer);
	if (slot)
		bpf_msg_redirect_map(msg, &sock_slots, *slot, BPF_F_INGRESS);
	return SK_PASS;	/* a miss keeps plain TCP */
}

char _license[] SEC("license") = "GPL";
