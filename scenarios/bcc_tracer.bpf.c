// Counters for the bypass proof, compiled at run time by bcc_sockmap.py. Tracepoints are global,
// so only loopback packets (IFF_LOOPBACK) and non-SSH TCP segments count: the SSH session that
// drives the guest runs over its virtio NIC on port 22.
#include <linux/skbuff.h>
#include <linux/netdevice.h>
#include <linux/if.h>

enum counter { NET_DEV_XMIT_LO, NETIF_RECEIVE_SKB_LO, TCP_PROBE, TCP_BPF_SENDMSG, COUNTERS };

BPF_ARRAY(counts, u64, COUNTERS);

static inline void bump(int index) {
    u64 *value = counts.lookup(&index);
    if (value)
        __sync_fetch_and_add(value, 1);
}

static inline int on_loopback(const void *skbaddr) {
    struct sk_buff *skb = (struct sk_buff *)skbaddr;
    struct net_device *dev = NULL;
    unsigned int flags = 0;
    bpf_probe_read_kernel(&dev, sizeof(dev), &skb->dev);
    if (!dev)
        return 0;
    bpf_probe_read_kernel(&flags, sizeof(flags), &dev->flags);
    return (flags & IFF_LOOPBACK) != 0;
}

TRACEPOINT_PROBE(net, net_dev_xmit) {
    if (on_loopback(args->skbaddr))
        bump(NET_DEV_XMIT_LO);
    return 0;
}

TRACEPOINT_PROBE(net, netif_receive_skb) {
    if (on_loopback(args->skbaddr))
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
