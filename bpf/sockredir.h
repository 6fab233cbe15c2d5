/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Production socket redirect: the types shared by the sockops and sk_msg programs and by the
 * loader (lab/keys.py decodes these layouts from `bpftool -j map dump`; keep the two in step,
 * tests/unit/test_keys.py checks the field order against this file).
 */
#ifndef SOCKREDIR_H
#define SOCKREDIR_H

/*
 * One SOCKHASH key per socket: its own address pair, as seen from that socket.
 * - No padding holes and every byte written: a key with uninitialised padding silently never
 *   matches for a fully privileged loader (see FACTS).
 * - IPv4 is stored v4-mapped (::ffff:a.b.c.d) so an AF_INET client and the AF_INET6 socket a
 *   dual-stack server accepted for it produce matching keys.
 * - netns_cookie is 0 unless built with -DSOCKREDIR_NETNS: then equal 4-tuples in different
 *   network namespaces cannot be confused.
 */
struct sockredir_key {
	__u32 local_ip[4];	/* network byte order */
	__u32 remote_ip[4];	/* network byte order */
	__u32 local_port;	/* host byte order */
	__u32 remote_port;	/* host byte order */
	__u64 netns_cookie;
};

_Static_assert(sizeof(struct sockredir_key) == 48, "sockredir_key must have no padding");

/* Per-CPU event counters; the loader sums them over CPUs. Order matters (lab/keys.py). */
struct sockredir_counters {
	__u64 inserted_v4;	/* AF_INET sockets put into the map */
	__u64 inserted_v6;	/* AF_INET6 sockets with native IPv6 addresses */
	__u64 inserted_v4mapped;	/* AF_INET6 sockets with v4-mapped addresses */
	__u64 insert_failed;	/* bpf_sock_hash_update() errors (map full, key taken, ...) */
	__u64 skipped_family;	/* established sockets of another family (not inserted) */
	__u64 msgs_redirected;	/* sk_msg verdicts that found the peer */
	__u64 bytes_redirected;	/* sum of msg->size over those */
	__u64 msgs_missed;	/* peer not in the map: passed on to TCP */
	__u64 bytes_missed;
};

/* sredir_policy entry 0 (lab/bpf/policy.py uses the same numbers). */
enum sockredir_policy_mode {
	SOCKREDIR_POLICY_ALL = 0,		/* every connection (a fresh install) */
	SOCKREDIR_POLICY_ONLY_LISTED = 1,	/* only connections to a port in sredir_ports */
	SOCKREDIR_POLICY_ALL_BUT_LISTED = 2,	/* every connection except those to a listed port */
};

/*
 * The guarded variant (-DSOCKREDIR_GUARD, bpf/sockredir_guard.h): one entry per socket of the
 * sockhash, under the same key, describing that socket as a *receiver*. Written by the sender's
 * sk_msg program (unread, on_tcp) and by the receiver's read hook (the rest).
 */
struct sockredir_guard {
	__s64 unread;		/* bytes redirected to it and not yet read (an estimate, may dip below 0) */
	__u32 copied_seq;	/* its tcp copied_seq after its last read: TCP bytes it has read */
	__u32 rcvbuf;		/* its sk_rcvbuf at its last read (0 until it reads) */
	__u32 on_tcp;		/* the last message towards it went over TCP */
	__u32 rcvbuf_set;	/* its application set SO_RCVBUF (SOCK_RCVBUF_LOCK): no floor */
};

_Static_assert(sizeof(struct sockredir_guard) == 24, "sockredir_guard must have no padding");

/* Per-CPU counters of the guard's decisions; order matters (lab/bpf/keys.py GUARD_FIELDS). */
struct sockredir_guard_counters {
	__u64 msgs_backpressure;	/* over TCP: the peer already holds its queue's worth unread */
	__u64 bytes_backpressure;
	__u64 msgs_in_order;		/* over TCP: TCP bytes of the connection are still unread */
	__u64 bytes_in_order;
	__u64 leaves;			/* a connection's direction leaves the redirect for TCP */
	__u64 returns;			/* and comes back to the redirect */
	__u64 reads;			/* read hook runs on guarded sockets */
	__u64 state_failed;		/* guard state could not be stored: the socket stays on TCP */
};

#define SOCKREDIR_GUARD_FIELDS 8
_Static_assert(sizeof(struct sockredir_guard_counters) == 8 * SOCKREDIR_GUARD_FIELDS,
	       "guard counters are u64 only");

#define SOCKREDIR_COUNTER_FIELDS 9
_Static_assert(sizeof(struct sockredir_counters) == 8 * SOCKREDIR_COUNTER_FIELDS,
	       "counters are u64 only");

#endif /* SOCKREDIR_H */
