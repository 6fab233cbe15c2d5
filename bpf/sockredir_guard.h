/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The guard of the guarded variant (sockredir.bpf.c built with -DSOCKREDIR_GUARD): per message,
 * before redirecting, the sk_msg program asks whether the peer it would redirect to can take it
 * the way TCP would, and sends it over TCP (SK_PASS without a redirect) when not:
 *
 *   in order      TCP bytes of this direction are still unread by the peer: a redirected message
 *                 would be read before them (tcp_bpf reads its psock queue first), so it goes TCP.
 *                 Proof that none are left: the peer's copied_seq (TCP bytes it has read, kept by
 *                 its read hook) equals our write_seq (TCP bytes we have sent). Redirected bytes
 *                 move neither, so this is also when a connection may come back to the redirect.
 *   backpressure  the peer already holds its queue's worth of redirected bytes unread: TCP's own
 *                 window and send buffer then stop the sender as plain TCP would (EAGAIN, or a
 *                 block), instead of the redirect queueing without limit.
 *
 * Not a reason: the size of a write. Sending a stream's small writes the TCP way does not make
 * them cheaper: measured on the host (6.18, one CPU), TCP through a socket that has a psock (in a
 * sockhash) runs at 0.6-0.7x of plain TCP at every size, the same as the redirect of small writes;
 * only a socket outside the map runs at plain TCP's speed (the port policy).
 *
 * Going from the redirect to TCP never reorders (redirected bytes are read first); coming back
 * waits for the proof above. What the peer holds unread is the guard's own count (added here on
 * redirect, subtracted by the peer's read hook), because where the kernel charges redirected bytes
 * differs by version (bpf/README.md): 5.10 nowhere, 6.1/6.12 the sender, 6.18+ the reader.
 *
 * The read hook is built in one of three forms, chosen by the loader by what the kernel offers
 * (lab/bpf/redirect.py, probed, never by version):
 *   SOCKREDIR_READER_TP              raw tracepoint sock_recv_length (every recvmsg; 6.3+)
 *   SOCKREDIR_READER_FEXIT           fexit on tcp_bpf_recvmsg (5.19+ signature)
 *   SOCKREDIR_READER_FEXIT_NONBLOCK  fexit on tcp_bpf_recvmsg with its pre-5.19 `nonblock` argument
 */
#ifndef SOCKREDIR_GUARD_H
#define SOCKREDIR_GUARD_H

#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>

#define SOCKREDIR_READER_TP 1
#define SOCKREDIR_READER_FEXIT 2
#define SOCKREDIR_READER_FEXIT_NONBLOCK 3

#ifndef SOCKREDIR_READER
#define SOCKREDIR_READER SOCKREDIR_READER_TP
#endif

/* The peer's queue is its receive buffer, but at least this much unless its application chose
 * the size (SO_RCVBUF): a reader's sk_rcvbuf is not autotuned while it reads redirected bytes (it
 * stays at tcp_rmem[1], 128 KiB by default), where plain TCP lets a sender queue several MiB
 * (send buffer plus receive window). */
#ifndef SOCKREDIR_GUARD_QUEUE
#define SOCKREDIR_GUARD_QUEUE (1 << 20)
#endif

#define MSG_PEEK 2
#define SOCK_RCVBUF_LOCK 2

enum guard_decision {
	GUARD_REDIRECT,
	GUARD_IN_ORDER,
	GUARD_BACKPRESSURE,
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, SOCKREDIR_MAX_ENTRIES);
	__type(key, struct sockredir_key);
	__type(value, struct sockredir_guard);
} sredir_guard SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct sockredir_guard_counters);
} sredir_guard_counters SEC(".maps");

static __always_inline struct sockredir_guard_counters *guard_counters(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&sredir_guard_counters, &zero);
}

/* sockops, as a socket is established: its guard entry, before it enters the sockhash (a socket
 * is redirected to only with an entry). copied_seq starts at rcv_nxt: nothing read, nothing due. */
static __always_inline int guard_start(struct bpf_sock_ops *ops, struct sockredir_key *key)
{
	struct sockredir_guard fresh = { .copied_seq = CTX_U32(ops->rcv_nxt) };
	struct sockredir_guard_counters *count;

	if (bpf_map_update_elem(&sredir_guard, key, &fresh, BPF_ANY) == 0) {
		/* STATE_CB: to drop the entry when the socket closes. */
		bpf_sock_ops_cb_flags_set(ops, CTX_U32(ops->bpf_sock_ops_cb_flags) |
					  BPF_SOCK_OPS_STATE_CB_FLAG);
		return 0;
	}
	count = guard_counters();
	if (count)
		count->state_failed++;
	return -1;
}

static __always_inline void guard_forget(struct sockredir_key *key)
{
	bpf_map_delete_elem(&sredir_guard, key);
}

/* sk_msg, before redirecting to the peer stored under `peer`. */
static __always_inline int guard_decide(struct sk_msg_md *msg, struct sockredir_key *peer,
					__u32 size, struct sockredir_guard **state)
{
	struct sockredir_guard *guard = bpf_map_lookup_elem(&sredir_guard, peer);
	struct bpf_sock *sk = msg->sk;
	struct tcp_sock *tp;
	__s64 unread;
	__u64 queue;

	*state = guard;
	if (!guard || !sk)
		return GUARD_IN_ORDER;	/* no entry, no redirect: the sockhash lookup would miss too */
	tp = bpf_skc_to_tcp_sock(sk);
	if (!tp || guard->copied_seq != tp->write_seq)
		return GUARD_IN_ORDER;
	unread = guard->unread > 0 ? guard->unread : 0;
	if (!unread)
		return GUARD_REDIRECT;	/* an empty peer takes any one message, as TCP would */
	queue = guard->rcvbuf;
	if (!guard->rcvbuf_set && queue < SOCKREDIR_GUARD_QUEUE)
		queue = SOCKREDIR_GUARD_QUEUE;
	return unread + size > queue ? GUARD_BACKPRESSURE : GUARD_REDIRECT;
}

static __always_inline void guard_count_tcp(int decision, __u32 size, struct sockredir_guard *state)
{
	struct sockredir_guard_counters *count = guard_counters();
	int leaving = state && !state->on_tcp;

	if (state)
		state->on_tcp = 1;
	if (!count)
		return;
	if (leaving)
		count->leaves++;
	if (decision == GUARD_BACKPRESSURE) {
		count->msgs_backpressure++;
		count->bytes_backpressure += size;
	} else {
		count->msgs_in_order++;
		count->bytes_in_order += size;
	}
}

/* sk_msg, after bpf_msg_redirect_hash() chose the peer: the message is the peer's to read. */
static __always_inline void guard_redirected(struct sockredir_guard *state, __u32 size)
{
	struct sockredir_guard_counters *count;

	if (!state)
		return;
	__sync_fetch_and_add(&state->unread, (__s64)size);
	if (state->on_tcp) {
		state->on_tcp = 0;
		count = guard_counters();
		if (count)
			count->returns++;
	}
}

/* The key a socket is stored under, from the socket itself (what key_from_ops builds). */
static __always_inline int key_from_sock(struct sock *sk, struct sockredir_key *key)
{
	__u16 family = BPF_CORE_READ(sk, __sk_common.skc_family);

	if (family == AF_INET) {
		v4_mapped(key->local_ip, BPF_CORE_READ(sk, __sk_common.skc_rcv_saddr));
		v4_mapped(key->remote_ip, BPF_CORE_READ(sk, __sk_common.skc_daddr));
	} else if (family == AF_INET6) {
		bpf_core_read(key->local_ip, sizeof(key->local_ip), &sk->__sk_common.skc_v6_rcv_saddr);
		bpf_core_read(key->remote_ip, sizeof(key->remote_ip), &sk->__sk_common.skc_v6_daddr);
	} else {
		return -1;
	}
	key->local_port = BPF_CORE_READ(sk, __sk_common.skc_num);
	key->remote_port = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
#ifdef SOCKREDIR_NETNS
	key->netns_cookie = BPF_CORE_READ(sk, __sk_common.skc_net.net, net_cookie);
#else
	key->netns_cookie = 0;
#endif
	return 0;
}

/* The read hook: `sk` returned `ret` bytes to a recvmsg with `flags`. Bytes redirected to it are
 * read before its TCP bytes, so a read takes from the unread count first; a read of TCP bytes
 * while the count says more is unread than the queue holds (a redirect that failed after the
 * verdict) brings the count back down. */
static __always_inline void guard_read(struct sock *sk, int ret, int flags)
{
	struct sockredir_guard_counters *count;
	struct sockredir_guard *guard;
	struct sockredir_key key;
	__s64 unread, taken;

	if (ret <= 0 || (flags & MSG_PEEK) || !BPF_CORE_READ(sk, sk_user_data))
		return;	/* sk_user_data: only sockets with a psock (in a sockhash) are guarded */
	if (key_from_sock(sk, &key))
		return;
	guard = bpf_map_lookup_elem(&sredir_guard, &key);
	if (!guard)
		return;
	unread = guard->unread;
	taken = unread < ret ? unread : ret;
	if (taken > 0)
		__sync_fetch_and_add(&guard->unread, -taken);
	guard->copied_seq = BPF_CORE_READ((struct tcp_sock *)sk, copied_seq);
	guard->rcvbuf = BPF_CORE_READ(sk, sk_rcvbuf);
	guard->rcvbuf_set = !!(BPF_CORE_READ_BITFIELD_PROBED(sk, sk_userlocks) & SOCK_RCVBUF_LOCK);
	count = guard_counters();
	if (count)
		count->reads++;
}

#if SOCKREDIR_READER == SOCKREDIR_READER_TP
/* TP_PROTO(struct sock *sk, int ret, int flags), fired in sock_recvmsg_nosec after every recvmsg. */
SEC("raw_tracepoint/sock_recv_length")
int sredir_read_tp(struct bpf_raw_tracepoint_args *ctx)
{
	guard_read((struct sock *)ctx->args[0], (int)ctx->args[1], (int)ctx->args[2]);
	return 0;
}
#elif SOCKREDIR_READER == SOCKREDIR_READER_FEXIT
SEC("fexit/tcp_bpf_recvmsg")
int BPF_PROG(sredir_read_fx, struct sock *sk, struct msghdr *msg, size_t len, int flags,
	     int *addr_len, int ret)
{
	guard_read(sk, ret, flags);
	return 0;
}
#elif SOCKREDIR_READER == SOCKREDIR_READER_FEXIT_NONBLOCK
/* Before 5.19 the function had `int nonblock` before flags; on a later kernel this form is
 * refused (it reads a 7th argument the function does not have), which is how the loader tells. */
SEC("fexit/tcp_bpf_recvmsg")
int BPF_PROG(sredir_read_fx, struct sock *sk, struct msghdr *msg, size_t len, int nonblock,
	     int flags, int *addr_len, int ret)
{
	guard_read(sk, ret, flags);
	return 0;
}
#else
#error "SOCKREDIR_READER: 1 (tracepoint), 2 (fexit) or 3 (fexit, pre-5.19 signature)"
#endif

#endif /* SOCKREDIR_GUARD_H */
