// A user's own program, as a project using the lab would bring one (tests/integration/test_api.py):
// a sock_ops program that counts established connections by side and puts each socket into a
// SOCKHASH, and an sk_msg program on that SOCKHASH that counts sendmsg() calls. Nothing redirects.
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

enum { ACTIVE = 0, PASSIVE = 1, MESSAGES = 2, TRACEPOINT = 3, RAW_TRACEPOINT = 4, SLOTS = 5 };

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, SLOTS);
    __type(key, __u32);
    __type(value, __u64);
} counts SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_SOCKHASH);
    __uint(max_entries, 64);
    __type(key, __u32);    // local port, host byte order
    __type(value, __u64);
} socks SEC(".maps");

static void count(__u32 slot)
{
    __u64 *value = bpf_map_lookup_elem(&counts, &slot);
    if (value)
        __sync_fetch_and_add(value, 1);
}

SEC("sockops")
int count_established(struct bpf_sock_ops *skops)
{
    __u32 port = skops->local_port;

    if (skops->op == BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB)
        count(ACTIVE);
    else if (skops->op == BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB)
        count(PASSIVE);
    else
        return 1;
    bpf_sock_hash_update(skops, &socks, &port, BPF_ANY);
    return 1;
}

SEC("sk_msg")
int count_messages(struct sk_msg_md *msg)
{
    count(MESSAGES);
    return SK_PASS;
}

char LICENSE[] SEC("license") = "GPL";

// Tracing programs for attach_tracepoint: both count TCP state changes (connect, accept, close).
SEC("tracepoint/sock/inet_sock_set_state")
int on_state_change(void *ctx)
{
    count(TRACEPOINT);
    return 0;
}

SEC("raw_tp/inet_sock_set_state")
int on_state_change_raw(void *ctx)
{
    count(RAW_TRACEPOINT);
    return 0;
}
