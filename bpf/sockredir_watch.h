/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The watching shapes (sockredir.bpf.c built with -DSOCKREDIR_WATCH): the same sock_ops program
 * puts every established socket into the sockhash, but the sk_msg program only counts each
 * message and returns SK_PASS, never redirecting: the shape of the observability tools that
 * attach sk_msg to read or tag traffic (Grafana Beyla, OpenTelemetry's eBPF instrumentation).
 * With -DSOCKREDIR_SKB_VERDICT an sk_skb stream verdict program, attached to the same map, counts
 * each received skb and returns SK_PASS too (what some tools attach only to dodge a defect).
 *
 * The data goes over TCP, but through tcp_bpf's send path (a psock on each socket) and, with the
 * verdict program, its receive path: the conformance matrix's `passthrough` and `verdict`
 * situations compare what an application sees there with plain TCP.
 */
#ifndef SOCKREDIR_WATCH_H
#define SOCKREDIR_WATCH_H

/* Per-CPU counters of what the watching programs saw; order matters (lab/bpf/keys.py WATCH_FIELDS). */
struct sockredir_watch_counters {
	__u64 msgs_passed;	/* sk_msg runs (each returned SK_PASS) */
	__u64 bytes_passed;	/* sum of msg->size over those */
	__u64 skbs_passed;	/* sk_skb stream verdict runs (each returned SK_PASS) */
	__u64 skb_bytes;	/* sum of skb->len over those */
};

#define SOCKREDIR_WATCH_FIELDS 4
_Static_assert(sizeof(struct sockredir_watch_counters) == 8 * SOCKREDIR_WATCH_FIELDS,
	       "watch counters are u64 only");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct sockredir_watch_counters);
} sredir_watch_counters SEC(".maps");

static __always_inline struct sockredir_watch_counters *watch_counters(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&sredir_watch_counters, &zero);
}

static __always_inline void watch_msg(__u32 size)
{
	struct sockredir_watch_counters *count = watch_counters();

	if (count) {
		count->msgs_passed++;
		count->bytes_passed += size;
	}
}

#ifdef SOCKREDIR_SKB_VERDICT
SEC("sk_skb/stream_verdict")
int sredir_skb_wv(struct __sk_buff *skb)
{
	struct sockredir_watch_counters *count = watch_counters();

	if (count) {
		count->skbs_passed++;
		count->skb_bytes += skb->len;
	}
	return SK_PASS;
}
#endif

#endif /* SOCKREDIR_WATCH_H */
