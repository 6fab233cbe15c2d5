// SPDX-License-Identifier: GPL-2.0
/*
 * Closing a TCP socket that holds redirected data it never read must reset the connection, as
 * closing one with unread TCP data does: the peer's recv() then fails with ECONNRESET instead of
 * reading EOF (over TCP: ECONNRESET, and a later send fails with EPIPE).
 * Fails on kernels without "bpf, sockmap: reset a TCP connection closed with unread redirected
 * data" (the peer reads EOF and its data was silently dropped).
 */
#include "sockmap_fixture.h"

int main(int argc, char **argv)
{
	struct redirected_pair pair;
	char data[1024] = { 1 };
	ssize_t n;
	int err;

	(void)argc;
	printf("TAP version 13\n1..1\n");
	err = redirected_pair_open(&pair, argv[0]);
	if (err)
		return err;
	if (send(pair.client, data, sizeof(data), 0) != sizeof(data))
		return fixture_skip("send");
	usleep(50 * 1000);
	close(pair.server);	/* 1024 redirected bytes unread */
	pair.server = -1;
	usleep(50 * 1000);
	n = recv(pair.client, data, sizeof(data), 0);
	err = errno;
	redirected_pair_close(&pair);
	if (n < 0 && err == ECONNRESET) {
		printf("ok 1 closing with unread data reset the connection\n");
		return KSFT_PASS;
	}
	printf("not ok 1 the peer of a socket closed with unread redirected data saw %s, not ECONNRESET\n",
	       n == 0 ? "EOF" : n > 0 ? "data" : strerror(err));
	return KSFT_FAIL;
}
