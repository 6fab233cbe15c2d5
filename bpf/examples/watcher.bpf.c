// SPDX-License-Identifier: GPL-2.0
/*
 * A program that only watches, in the shape of the observability tools that attach sk_msg to read
 * or tag traffic (Grafana Beyla, OpenTelemetry's eBPF instrumentation): sock_ops puts every
 * established IPv4 socket into a SOCKHASH, and the sk_msg program looks at each message (its size,
 * counted per CPU) and returns SK_PASS without redirecting, so the data goes over TCP.
 *
 * `sockredir-lab conformance --program bpf/examples/watcher.bpf.c --program-situation passthrough`
 * judges it where the lab's own watching program would be: same behaviours, compared with plain TCP,
 * each cell proven by TCP's segment counts (tests/integration/test_conformance.py).
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define AF_INET 2

struct conn_key {
	__u32 local_ip4;
	__u32 remote_ip4;
	__u32 local_port;	/* host byte order */
	__u32 remote_port;	/* host byte order */
};

struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, 65535);
	__type(key, struct conn_key);
	__type(value, __u64);
} watched SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} seen_bytes SEC(".maps");

/* One 4-byte volatile load per context field: the verifier refuses narrower or merged loads. */
#define CTX(field) (*(volatile __u32 *)&(field))

SEC("sockops")
int watcher_sockops(struct bpf_sock_ops *skops)
{
	struct conn_key key = {};

	if (skops->op != BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB &&
	    skops->op != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB)
		return 0;
	if (CTX(skops->family) != AF_INET)
		return 0;
	key.local_ip4 = CTX(skops->local_ip4);
	key.remote_ip4 = CTX(skops->remote_ip4);
	key.local_port = CTX(skops->local_port);
	key.remote_port = bpf_ntohl(CTX(skops->remote_port));
	bpf_sock_hash_update(skops, &watched, &key, BPF_NOEXIST);
	return 0;
}

SEC("sk_msg")
int watcher_msg(struct sk_msg_md *msg)
{
	__u32 zero = 0;
	__u64 *seen = bpf_map_lookup_elem(&seen_bytes, &zero);

	if (seen)
		*seen += CTX(msg->size);
	return SK_PASS;
}

char _license[] SEC("license") = "GPL";
