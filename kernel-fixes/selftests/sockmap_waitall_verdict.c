// SPDX-License-Identifier: GPL-2.0
/*
 * sockmap_waitall with an sk_skb verdict program on the map (it passes every skb): the sockets
 * then read through tcp_bpf_recvmsg_parser, which must wait for the whole MSG_WAITALL length too.
 * Fails on kernels without "tcp_bpf: honour MSG_WAITALL in tcp_bpf_recvmsg_parser" (returns 1024).
 */
#define WAITALL_WITH_STREAM_VERDICT 1
#include "sockmap_waitall.c"
