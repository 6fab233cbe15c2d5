// A tracing program as a project would bring one (tests/integration/test_api.py): fexit on
// tcp_bpf_recvmsg, the receive path of sockets that carry a psock (those a sockmap holds), counting
// its calls. Only the first argument is named: the function lost its nonblock argument in 5.19.
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, __u64);
} reads SEC(".maps");

SEC("fexit/tcp_bpf_recvmsg")
int BPF_PROG(after_bpf_recv, struct sock *sk)
{
    __u32 zero = 0;
    __u64 *value = bpf_map_lookup_elem(&reads, &zero);

    if (value)
        __sync_fetch_and_add(value, 1);
    return 0;
}

char _license[] SEC("license") = "GPL";
