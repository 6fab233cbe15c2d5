/* SPDX-License-Identifier: GPL-2.0 */
/*
 * What every reproducer here shares: load sockmap_redirect.bpf.o (next to the binary, or the path
 * in $SOCKMAP_REDIRECT_OBJ), attach its sk_msg program to its SOCKHASH, and make a connected TCP
 * pair on 127.0.0.1 whose two ends are in the map, so each end's sends land in the other end's
 * psock ingress queue. Results are printed TAP-style; the exit status is 0 (pass), 1 (fail) or
 * 4 (skip: the kernel or the machine cannot run the test). SOCKMAP_PLAIN=1 leaves the pair out of
 * the map: the control, plain TCP, where every test must pass.
 */
#ifndef SOCKMAP_FIXTURE_H
#define SOCKMAP_FIXTURE_H

#include <arpa/inet.h>
#include <errno.h>
#include <libgen.h>
#include <limits.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>

#define KSFT_PASS 0
#define KSFT_FAIL 1
#define KSFT_SKIP 4

struct redirected_pair {
	struct bpf_object *obj;
	int map_fd;
	int prog_fd;
	int client;	/* the connecting end */
	int server;	/* the accepted end */
};

static int fixture_skip(const char *what)
{
	printf("ok 1 # SKIP %s: %s\n", what, strerror(errno));
	return KSFT_SKIP;
}

static const char *object_path(const char *argv0)
{
	static char path[PATH_MAX];
	const char *env = getenv("SOCKMAP_REDIRECT_OBJ");
	char self[PATH_MAX];

	if (env)
		return env;
	snprintf(self, sizeof(self), "%s", argv0);
	snprintf(path, sizeof(path), "%s/sockmap_redirect.bpf.o", dirname(self));
	return path;
}

static int local_port(int fd)
{
	struct sockaddr_in addr;
	socklen_t len = sizeof(addr);

	if (getsockname(fd, (struct sockaddr *)&addr, &len))
		return -1;
	return ntohs(addr.sin_port);
}

static int tcp_pair(int *client, int *server)
{
	struct sockaddr_in addr = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t len = sizeof(addr);
	int listener, one = 1;

	listener = socket(AF_INET, SOCK_STREAM, 0);
	if (listener < 0 || bind(listener, (struct sockaddr *)&addr, sizeof(addr)) ||
	    listen(listener, 1) || getsockname(listener, (struct sockaddr *)&addr, &len))
		return -1;
	*client = socket(AF_INET, SOCK_STREAM, 0);
	if (*client < 0 || connect(*client, (struct sockaddr *)&addr, sizeof(addr)))
		return -1;
	*server = accept(listener, NULL, NULL);
	close(listener);
	if (*server < 0)
		return -1;
	setsockopt(*client, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	setsockopt(*server, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	return 0;
}

/* Set before redirected_pair_open: also attach the sk_skb verdict program that passes every skb
 * (the sockets then read through tcp_bpf_recvmsg_parser). */
static int fixture_stream_verdict;

/* 0, or a KSFT_ code to exit with (the reason printed). */
static int redirected_pair_open(struct redirected_pair *pair, const char *argv0)
{
	struct bpf_program *prog;
	__u64 fd;	/* the map's value is 8 bytes: a socket fd going in, its cookie coming out */
	__u32 port;

	memset(pair, 0, sizeof(*pair));
	pair->obj = bpf_object__open_file(object_path(argv0), NULL);
	if (!pair->obj || libbpf_get_error(pair->obj))
		return fixture_skip("open sockmap_redirect.bpf.o");
	if (bpf_object__load(pair->obj))
		return fixture_skip("load sockmap_redirect.bpf.o (root, BPF and sockmap needed)");
	prog = bpf_object__find_program_by_name(pair->obj, "redirect_to_peer");
	pair->prog_fd = bpf_program__fd(prog);
	pair->map_fd = bpf_object__find_map_fd_by_name(pair->obj, "sock_by_port");
	if (bpf_prog_attach(pair->prog_fd, pair->map_fd, BPF_SK_MSG_VERDICT, 0))
		return fixture_skip("attach the sk_msg program to the sockhash");
	/* before any socket joins the map: a psock takes the map's programs when it is made */
	prog = bpf_object__find_program_by_name(pair->obj, "pass_skb");
	if (fixture_stream_verdict &&
	    bpf_prog_attach(bpf_program__fd(prog), pair->map_fd, BPF_SK_SKB_STREAM_VERDICT, 0))
		return fixture_skip("attach the sk_skb verdict program to the sockhash");
	if (tcp_pair(&pair->client, &pair->server))
		return fixture_skip("make a TCP pair on 127.0.0.1");
	if (getenv("SOCKMAP_PLAIN"))
		return 0;
	port = local_port(pair->client);
	fd = pair->client;
	if (bpf_map_update_elem(pair->map_fd, &port, &fd, BPF_NOEXIST))
		return fixture_skip("put the client in the sockhash");
	port = local_port(pair->server);
	fd = pair->server;
	if (bpf_map_update_elem(pair->map_fd, &port, &fd, BPF_NOEXIST))
		return fixture_skip("put the server in the sockhash");
	return 0;
}

static void redirected_pair_close(struct redirected_pair *pair)
{
	if (pair->client > 0)
		close(pair->client);
	if (pair->server > 0)
		close(pair->server);
	bpf_object__close(pair->obj);
}

#endif /* SOCKMAP_FIXTURE_H */
