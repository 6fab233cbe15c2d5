// SPDX-License-Identifier: GPL-2.0
/*
 * Same-host TCP acceleration, production version.
 *
 * sockops: every TCP socket of the cgroup that reaches ESTABLISHED (either side) goes into a
 * SOCKHASH keyed by its own (local, remote) address pair. sk_msg: on sendmsg() the payload is
 * redirected into the receive queue of the socket stored under the mirrored key (the peer), with
 * BPF_F_INGRESS. A miss returns SK_PASS, so peers outside the cgroup keep working over TCP.
 *
 * Build variants (same file):
 *   (default)            key without namespace (netns_cookie = 0)
 *   -DSOCKREDIR_NETNS    netns cookie in the key (needs bpf_get_netns_cookie in sock_ops and
 *                        sk_msg: Linux 5.15+; refused by the verifier on 5.10)
 *   -DSOCKREDIR_MAX_ENTRIES=N   map size (bpftool loadall cannot resize maps)
 *   -DSOCKREDIR_GUARD    the guarded variant: per message, TCP instead of the redirect where the
 *                        redirect would queue without bound, reorder, or lose to TCP
 *                        (sockredir_guard.h; with -DSOCKREDIR_READER=N, its read hook's form)
 *   -DSOCKREDIR_WATCH    never redirect: sk_msg counts and passes every message (the shape of
 *                        observability tools; sockredir_watch.h), with -DSOCKREDIR_SKB_VERDICT
 *                        also an sk_skb stream verdict program that passes every skb
 *
 * Policy (sredir_policy, sredir_ports; managed by `sockredir-lab redirect policy`): which
 * connections go into the map at all, decided once per connection by its service port (the
 * server's port: the remote port on the active side, the local port on the passive side, so both
 * ends of one connection decide alike). The redirect costs more than TCP for small writes on some
 * kernels and CPU layouts (docs/performance.md); an operator keeps such services on plain TCP.
 * Per connection, never per message: mixing redirected and TCP data on one connection would
 * reorder its byte stream.
 *
 * Deliberately broken variants of this file (bpf/mutants/NAME.patch, `sockredir-lab mutants`) show
 * that the lab's checks catch a broken redirect.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "sockredir.h"

#ifndef SOCKREDIR_MAX_ENTRIES
#define SOCKREDIR_MAX_ENTRIES 65535
#endif

#define AF_INET 2
#define AF_INET6 10

/* Program names tell the loader which variant is pinned (kernel names keep 15 characters). */
#if defined(SOCKREDIR_WATCH) && defined(SOCKREDIR_SKB_VERDICT)
#define SOCKOPS_PROG sredir_ops_wv
#define SKMSG_PROG sredir_msg_wv
#elif defined(SOCKREDIR_WATCH)
#define SOCKOPS_PROG sredir_ops_w
#define SKMSG_PROG sredir_msg_w
#elif defined(SOCKREDIR_GUARD) && defined(SOCKREDIR_NETNS)
#define SOCKOPS_PROG sredir_ops_gn
#define SKMSG_PROG sredir_msg_gn
#elif defined(SOCKREDIR_GUARD)
#define SOCKOPS_PROG sredir_ops_g
#define SKMSG_PROG sredir_msg_g
#elif defined(SOCKREDIR_NETNS)
#define SOCKOPS_PROG sredir_ops_ns
#define SKMSG_PROG sredir_msg_ns
#else
#define SOCKOPS_PROG sredir_ops
#define SKMSG_PROG sredir_msg
#endif

/*
 * Context fields are read with one 4-byte volatile load each: the verifier only allows 4-byte
 * access to remote_port ("invalid bpf_context access off=66 size=2"), and without volatile clang
 * may merge remote_ip4/local_ip4 into one 8-byte load, which is refused too.
 */
#define CTX_U32(field) (*(volatile __u32 *)&(field))

struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, SOCKREDIR_MAX_ENTRIES);
	__type(key, struct sockredir_key);
	__type(value, __u64);	/* 8 bytes: a syscall lookup returns the socket cookie */
} sredir_hash SEC(".maps");

/* Entry 0: enum sockredir_policy_mode; a fresh install (all zero) redirects every connection. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} sredir_policy SEC(".maps");

/* The listed service ports (host byte order); the value is unused. Not preallocated: usually few. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u32);
	__type(value, __u32);
} sredir_ports SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct sockredir_counters);
} sredir_counters SEC(".maps");

static __always_inline struct sockredir_counters *counters(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&sredir_counters, &zero);
}

/* ::ffff:a.b.c.d, with ip4 already in network byte order. */
static __always_inline void v4_mapped(__u32 out[4], __u32 ip4)
{
	out[0] = 0;
	out[1] = 0;
	out[2] = bpf_htonl(0x0000ffff);
	out[3] = ip4;
}

static __always_inline int is_v4_mapped(const __u32 ip[4])
{
	return ip[0] == 0 && ip[1] == 0 && ip[2] == bpf_htonl(0x0000ffff);
}

/* remote_port holds the 16-bit network-order port in its upper half (little endian load). */
static __always_inline __u32 port_from_remote(__u32 remote_port_field)
{
	return bpf_ntohl(remote_port_field);
}

static __always_inline void key_from_ops(struct bpf_sock_ops *ops, struct sockredir_key *key,
					 __u32 family)
{
	if (family == AF_INET) {
		v4_mapped(key->local_ip, CTX_U32(ops->local_ip4));
		v4_mapped(key->remote_ip, CTX_U32(ops->remote_ip4));
	} else {
		key->local_ip[0] = CTX_U32(ops->local_ip6[0]);
		key->local_ip[1] = CTX_U32(ops->local_ip6[1]);
		key->local_ip[2] = CTX_U32(ops->local_ip6[2]);
		key->local_ip[3] = CTX_U32(ops->local_ip6[3]);
		key->remote_ip[0] = CTX_U32(ops->remote_ip6[0]);
		key->remote_ip[1] = CTX_U32(ops->remote_ip6[1]);
		key->remote_ip[2] = CTX_U32(ops->remote_ip6[2]);
		key->remote_ip[3] = CTX_U32(ops->remote_ip6[3]);
	}
	key->local_port = CTX_U32(ops->local_port);
	key->remote_port = port_from_remote(CTX_U32(ops->remote_port));
#ifdef SOCKREDIR_NETNS
	key->netns_cookie = bpf_get_netns_cookie(ops);
#else
	key->netns_cookie = 0;
#endif
}

/* The key the peer socket was stored under: our remote is its local and vice versa. */
static __always_inline void peer_key_from_msg(struct sk_msg_md *msg, struct sockredir_key *key,
					      __u32 family)
{
	if (family == AF_INET) {
		v4_mapped(key->local_ip, CTX_U32(msg->remote_ip4));
		v4_mapped(key->remote_ip, CTX_U32(msg->local_ip4));
	} else {
		key->local_ip[0] = CTX_U32(msg->remote_ip6[0]);
		key->local_ip[1] = CTX_U32(msg->remote_ip6[1]);
		key->local_ip[2] = CTX_U32(msg->remote_ip6[2]);
		key->local_ip[3] = CTX_U32(msg->remote_ip6[3]);
		key->remote_ip[0] = CTX_U32(msg->local_ip6[0]);
		key->remote_ip[1] = CTX_U32(msg->local_ip6[1]);
		key->remote_ip[2] = CTX_U32(msg->local_ip6[2]);
		key->remote_ip[3] = CTX_U32(msg->local_ip6[3]);
	}
	key->local_port = port_from_remote(CTX_U32(msg->remote_port));
	key->remote_port = CTX_U32(msg->local_port);
#ifdef SOCKREDIR_NETNS
	key->netns_cookie = bpf_get_netns_cookie(msg);
#else
	key->netns_cookie = 0;
#endif
}

#ifdef SOCKREDIR_WATCH
#include "sockredir_watch.h"
#endif
#ifdef SOCKREDIR_GUARD
#include "sockredir_guard.h"
#endif

static __always_inline int policy_allows(struct bpf_sock_ops *ops)
{
	__u32 zero = 0, port;
	__u32 *mode = bpf_map_lookup_elem(&sredir_policy, &zero);
	int listed;

	if (!mode || *mode == SOCKREDIR_POLICY_ALL)
		return 1;
	if (ops->op == BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB)
		port = port_from_remote(CTX_U32(ops->remote_port));
	else
		port = CTX_U32(ops->local_port);
	listed = bpf_map_lookup_elem(&sredir_ports, &port) != NULL;
	return *mode == SOCKREDIR_POLICY_ONLY_LISTED ? listed : !listed;
}

static __always_inline void insert_socket(struct bpf_sock_ops *ops)
{
	struct sockredir_counters *count = counters();
	struct sockredir_key key;
	__u32 family = CTX_U32(ops->family);
	long err;

	if (family != AF_INET && family != AF_INET6) {
		if (count)
			count->skipped_family++;
		return;
	}
	key_from_ops(ops, &key, family);
#ifdef SOCKREDIR_GUARD
	if (guard_start(ops, &key))
		return;	/* no guard state, no redirect: the connection stays on TCP */
#endif
	/* NOEXIST: never steal the slot of a live socket that has the same key. */
	err = bpf_sock_hash_update(ops, &sredir_hash, &key, BPF_NOEXIST);
#ifdef SOCKREDIR_GUARD
	if (err)
		guard_forget(&key);
#endif
	if (!count)
		return;
	if (err)
		count->insert_failed++;
	else if (family == AF_INET)
		count->inserted_v4++;
	else if (is_v4_mapped(key.local_ip))
		count->inserted_v4mapped++;
	else
		count->inserted_v6++;
}

#ifdef SOCKREDIR_GUARD
/* A guarded socket closes: its guard entry goes (its sockhash entry goes by itself). */
static __always_inline void forget_socket(struct bpf_sock_ops *ops)
{
	__u32 family = CTX_U32(ops->family);
	struct sockredir_key key;

	if (family != AF_INET && family != AF_INET6)
		return;
	key_from_ops(ops, &key, family);
	guard_forget(&key);
}
#endif

SEC("sockops")
int SOCKOPS_PROG(struct bpf_sock_ops *ops)
{
	switch (ops->op) {
	case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
	case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB:
		if (policy_allows(ops))
			insert_socket(ops);
		break;
#ifdef SOCKREDIR_GUARD
	case BPF_SOCK_OPS_STATE_CB:
		if (ops->args[1] == BPF_TCP_CLOSE)
			forget_socket(ops);
		break;
#endif
	default:
		break;
	}
	return 1;
}

SEC("sk_msg")
int SKMSG_PROG(struct sk_msg_md *msg)
{
	struct sockredir_counters *count = counters();
	struct sockredir_key peer;
	__u32 size = CTX_U32(msg->size);
	long verdict;

#ifdef SOCKREDIR_WATCH
	watch_msg(size);
	return SK_PASS;
#endif
	peer_key_from_msg(msg, &peer, CTX_U32(msg->family));
#ifdef SOCKREDIR_GUARD
	struct sockredir_guard *state;
	int decision = guard_decide(msg, &peer, size, &state);

	if (decision != GUARD_REDIRECT && state) {
		guard_count_tcp(decision, size, state);
		return SK_PASS;
	}
#endif
	verdict = bpf_msg_redirect_hash(msg, &sredir_hash, &peer, BPF_F_INGRESS);
#ifdef SOCKREDIR_GUARD
	if (verdict == SK_PASS)
		guard_redirected(state, size);
#endif
	if (count) {
		if (verdict == SK_PASS) {
			count->msgs_redirected++;
			count->bytes_redirected += size;
		} else {
			count->msgs_missed++;
			count->bytes_missed += size;
		}
	}
	/* Not the helper's result: that is SK_DROP on a miss, which fails sendmsg() with EACCES. */
	return SK_PASS;
}

char _license[] SEC("license") = "GPL";
