// The redirect as a bcc program (compiled at run time by bcc_sockmap.py, in the style of bcc's
// examples/networking/sockmap.py): a sock_ops program files each established IPv4 socket in a
// SOCKHASH under its 4-tuple, and an sk_msg program sends each message to the peer's socket.
#include <uapi/linux/bpf.h>
#include <linux/socket.h>

#define MAX_SOCKS 65535

// Four 32-bit fields: no padding, so every byte of the key is written.
// Ports are kept as sock_ops/sk_msg give remote_port: network order in the upper 16 bits.
struct sock_key {
    u32 local_ip4;
    u32 remote_ip4;
    u32 local_port;
    u32 remote_port;
};

BPF_SOCKHASH(sock_hash, struct sock_key, MAX_SOCKS);

int sockops_file_socket(struct bpf_sock_ops *skops) {
    if (skops->family != AF_INET)
        return 0;
    if (skops->op != BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB &&
        skops->op != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB)
        return 0;
    struct sock_key key = {};
    key.local_ip4 = skops->local_ip4;
    key.remote_ip4 = skops->remote_ip4;
    key.local_port = bpf_htonl(skops->local_port);  // local_port is in host order
    key.remote_port = skops->remote_port;
    sock_hash.sock_hash_update(skops, &key, BPF_NOEXIST);
    return 0;
}

int msg_redirect_to_peer(struct sk_msg_md *msg) {
    if (msg->family != AF_INET)
        return SK_PASS;
    // The peer filed itself with the two ends swapped.
    struct sock_key peer = {};
    peer.local_ip4 = msg->remote_ip4;
    peer.remote_ip4 = msg->local_ip4;
    peer.local_port = msg->remote_port;
    peer.remote_port = bpf_htonl(msg->local_port);
    sock_hash.msg_redirect_hash(msg, &peer, BPF_F_INGRESS);
    // SK_PASS whatever the lookup found: a miss (peer outside the cgroup) falls back to TCP
    // instead of the SK_DROP that returning the helper's result would give.
    return SK_PASS;
}
