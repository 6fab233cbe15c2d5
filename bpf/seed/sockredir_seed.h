/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Seed-faithful port: the header of the design document's socket redirect
 * (sockops program + sk_msg program sharing one SOCKHASH).
 *
 * Everything here is as the document describes it; the only changes are the ones
 * a modern libbpf (1.x, bpftool 7.x) needs. Each one is listed in CHANGES.md.
 */
#ifndef SOCKREDIR_SEED_H
#define SOCKREDIR_SEED_H

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

/* The document's own helpers (its header was not part of the document). */
#ifndef __section
#define __section(NAME) __attribute__((section(NAME), used))
#endif

/* Read a context field exactly once, with its declared width (4 bytes). */
#define FORCE_READ(X) (*(volatile typeof(X) *)&(X))

/* printk with the format on the stack, as classic samples did. */
#define printk(fmt, ...)                                                   \
	({                                                                 \
		char ____fmt[] = fmt;                                      \
		bpf_trace_printk(____fmt, sizeof(____fmt), ##__VA_ARGS__); \
	})

/* "sock_hash_update() / msg_redirect_hash() are macros we define": the BPF helpers. */
#define sock_hash_update(skops, map, key, flags) bpf_sock_hash_update(skops, map, key, flags)
#define msg_redirect_hash(msg, map, key, flags) bpf_msg_redirect_hash(msg, map, key, flags)

/* Tests shrink the map with -DSOCKREDIR_MAX_ENTRIES=N; the document's size otherwise. */
#ifndef SOCKREDIR_MAX_ENTRIES
#define SOCKREDIR_MAX_ENTRIES 65535
#endif

struct sock_key {
	uint32_t sip4;    // 源 IP
	uint32_t dip4;    // 目的 IP
	uint8_t  family;  // 协议类型
	uint8_t  pad1;    // this padding required for 64bit alignment
	uint16_t pad2;    // else ebpf kernel verifier rejects loading of the program
	uint32_t pad3;
	uint32_t sport;   // 源端口
	uint32_t dport;   // 目的端口
} __attribute__((packed));

/* CHANGE: BTF-style map in ".maps" (libbpf 1.x refuses struct bpf_map_def in "maps"). */
struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(key_size, sizeof(struct sock_key));
	__uint(value_size, sizeof(int));           // 存储 socket
	__uint(max_entries, SOCKREDIR_MAX_ENTRIES);
	__uint(map_flags, 0);
} sock_ops_map SEC(".maps");

#endif /* SOCKREDIR_SEED_H */
