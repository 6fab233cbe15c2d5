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

#define SOCKREDIR_COUNTER_FIELDS 9
_Static_assert(sizeof(struct sockredir_counters) == 8 * SOCKREDIR_COUNTER_FIELDS,
	       "counters are u64 only");

#endif /* SOCKREDIR_H */
