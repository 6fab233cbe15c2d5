// SPDX-License-Identifier: GPL-2.0
/*
 * poll() on a socket with SO_RCVLOWAT 1500 whose peer's sends are redirected into it
 * (BPF_F_INGRESS) must not report it readable with 1024 bytes queued, and must once 2048 are, as
 * over TCP. Fails on kernels without "tcp_bpf: honour SO_RCVLOWAT in poll readiness" (readable
 * at 1024).
 */
#include <poll.h>
#include "sockmap_fixture.h"

#define LOWAT 1500
#define PART 1024

static int readable(int fd, int timeout_ms)
{
	struct pollfd pfd = { .fd = fd, .events = POLLIN };

	return poll(&pfd, 1, timeout_ms) == 1 && (pfd.revents & POLLIN);
}

int main(int argc, char **argv)
{
	struct redirected_pair pair;
	char part[PART] = { 0 };
	int err, lowat = LOWAT, below, above;

	(void)argc;
	printf("TAP version 13\n1..1\n");
	err = redirected_pair_open(&pair, argv[0]);
	if (err)
		return err;
	if (setsockopt(pair.server, SOL_SOCKET, SO_RCVLOWAT, &lowat, sizeof(lowat)))
		return fixture_skip("set SO_RCVLOWAT");
	if (send(pair.client, part, PART, 0) != PART)
		return fixture_skip("send the first part");
	usleep(50 * 1000);	/* the bytes have landed */
	below = readable(pair.server, 300);
	if (send(pair.client, part, PART, 0) != PART)
		return fixture_skip("send the second part");
	above = readable(pair.server, 2000);
	redirected_pair_close(&pair);
	if (below || !above) {
		printf("not ok 1 with SO_RCVLOWAT %d, poll() said %s with %d bytes queued and %s with %d "
		       "(over TCP: not readable, then readable)\n", LOWAT, below ? "readable" : "not readable",
		       PART, above ? "readable" : "not readable", 2 * PART);
		return KSFT_FAIL;
	}
	printf("ok 1 poll() honoured SO_RCVLOWAT %d (not readable at %d bytes, readable at %d)\n",
	       LOWAT, PART, 2 * PART);
	return KSFT_PASS;
}
