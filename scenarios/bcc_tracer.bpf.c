// Counters for the bypass proof, compiled at run time by bcc_sockmap.py. Tracepoints are global,
// so only packets on a device named "lo" and non-SSH TCP segments count: the SSH session that
// drives the guest runs over its virtio NIC on port 22. The device name comes from the tracepoint
// record itself: including linux/netdevice.h (to read skb->dev) pulls linux/bpf.h, which bcc 0.26's
// own copy of the BPF UAPI header cannot compile against on 6.12+ ("incomplete type struct bpf_wq").

// 5.10's tcp_probe record declares its address fields as sizeof(struct sockaddr_in6).
#include <linux/in6.h>

enum counter { NET_DEV_XMIT_LO, NETIF_RECEIVE_SKB_LO, TCP_PROBE, TCP_BPF_SENDMSG, COUNTERS };

BPF_ARRAY(counts, u64, COUNTERS);

static inline void bump(int index) {
    u64 *value = counts.lookup(&index);
    if (value)
        __sync_fetch_and_add(value, 1);
}

static inline int is_lo(const char *name) {
    return name[0] == 'l' && name[1] == 'o' && name[2] == 0;
}

TRACEPOINT_PROBE(net, net_dev_xmit) {
    char name[4] = {};
    TP_DATA_LOC_READ_CONST(name, name, sizeof(name));
    if (is_lo(name))
        bump(NET_DEV_XMIT_LO);
    return 0;
}

TRACEPOINT_PROBE(net, netif_receive_skb) {
    char name[4] = {};
    TP_DATA_LOC_READ_CONST(name, name, sizeof(name));
    if (is_lo(name))
        bump(NETIF_RECEIVE_SKB_LO);
    return 0;
}

TRACEPOINT_PROBE(tcp, tcp_probe) {
    if (args->sport != 22 && args->dport != 22)
        bump(TCP_PROBE);
    return 0;
}

int kprobe__tcp_bpf_sendmsg(struct pt_regs *ctx) {
    bump(TCP_BPF_SENDMSG);
    return 0;
}
