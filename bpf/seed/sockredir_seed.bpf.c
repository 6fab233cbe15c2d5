// SPDX-License-Identifier: GPL-2.0
/*
 * Seed-faithful port of the design document's socket redirect ("Linux eBPF socket 重定向").
 *
 * bpf_sockmap (sockops): on ACTIVE/PASSIVE_ESTABLISHED of an AF_INET socket, put the socket into
 * sock_ops_map keyed by its own 4-tuple. bpf_redir (sk_msg): on sendmsg(), build the key the peer
 * socket was stored under and redirect the payload into the peer's ingress queue.
 *
 * The code is the document's; changes needed by modern libbpf are marked CHANGE and listed in
 * CHANGES.md. Known properties kept on purpose: IPv4 only, 4-byte map value (bpftool cannot show
 * the socket cookie), no netns in the key, BPF_NOEXIST.
 */
#include "sockredir_seed.h"

/* CHANGE: definitions ordered before their use (the document shows callers first). */
static inline
void extract_key4_from_ops(struct bpf_sock_ops *ops, struct sock_key *key)
{
    // keep ip and port in network byte order
    key->dip4 = ops->remote_ip4;
    key->sip4 = ops->local_ip4;
    key->family = 1;

    // local_port is in host byte order, and remote_port is in network byte order
    key->sport = (bpf_htonl(ops->local_port) >> 16);
    key->dport = FORCE_READ(ops->remote_port) >> 16;
}

static inline
void bpf_sock_ops_ipv4(struct bpf_sock_ops *skops)
{
    struct sock_key key = {};
    int ret;

    extract_key4_from_ops(skops, &key);

    ret = sock_hash_update(skops, &sock_ops_map, &key, BPF_NOEXIST);
    if (ret != 0) {
        printk("sock_hash_update() failed, ret: %d\n", ret);
    }

    printk("sockmap: op %d, port %d --> %d\n", skops->op, skops->local_port,
           bpf_ntohl(skops->remote_port));
}

__section("sockops") // 加载到 ELF 中的 `sockops` 区域, 有 socket operations 时触发执行
int bpf_sockmap(struct bpf_sock_ops *skops)
{
    switch (skops->op) {
        case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB: // 被动建连
        case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:  // 主动建连
            if (skops->family == 2) {             // AF_INET
                bpf_sock_ops_ipv4(skops);         // 将 socket 信息记录到 sockmap
            }
            break;
        default:
            break;
    }
    return 0;
}

static inline
void extract_key4_from_msg(struct sk_msg_md *msg, struct sock_key *key)
{
    key->sip4 = msg->remote_ip4;
    key->dip4 = msg->local_ip4;
    key->family = 1;

    key->dport = (bpf_htonl(msg->local_port) >> 16);
    key->sport = FORCE_READ(msg->remote_port) >> 16;
}

__section("sk_msg") // 加载目标文件 (ELF) 中的 `sk_msg` section, `sendmsg` 系统调用时触发执行
int bpf_redir(struct sk_msg_md *msg)
{
    struct sock_key key = {};
    extract_key4_from_msg(msg, &key);
    msg_redirect_hash(msg, &sock_ops_map, &key, BPF_F_INGRESS);
    return SK_PASS;
}

/* CHANGE: a license section; bpf_trace_printk and the sockmap helpers are GPL-only. */
char _license[] __section("license") = "GPL";
