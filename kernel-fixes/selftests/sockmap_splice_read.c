// SPDX-License-Identifier: GPL-2.0
/*
 * splice(2) from a socket whose peer's sends are redirected into it (BPF_F_INGRESS) into a pipe
 * must move those bytes, as over TCP. The client sends 1024 bytes; a splice of up to 4096 bytes
 * from the server must return 1024 and the pipe must hold them, within 2 s (they were queued before it).
 * Fails on kernels without "tcp: splice from a socket in a sockmap through its recvmsg" (the
 * splice blocks: the data is in the psock's queue, which tcp_splice_read does not read).
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include "sockmap_fixture.h"

#define SENT 1024

static void on_alarm(int signum)
{
	(void)signum;	/* only to interrupt a splice that would block for ever */
}

int main(int argc, char **argv)
{
	struct sigaction alarm_action = { .sa_handler = on_alarm };
	unsigned char sent[SENT], got[SENT];
	struct redirected_pair pair;
	int err, i, pipefd[2];
	ssize_t n, r = 0;

	(void)argc;
	printf("TAP version 13\n1..1\n");
	for (i = 0; i < SENT; i++)
		sent[i] = (unsigned char)(i * 13 + 5);
	err = redirected_pair_open(&pair, argv[0]);
	if (err)
		return err;
	if (pipe(pipefd))
		return fixture_skip("make a pipe");
	if (send(pair.client, sent, SENT, 0) != SENT)
		return fixture_skip("send");
	sigaction(SIGALRM, &alarm_action, NULL);	/* no SA_RESTART: the splice returns EINTR */
	alarm(2);
	n = splice(pair.server, NULL, pipefd[1], NULL, 4096, 0);
	alarm(0);
	if (n > 0)
		r = read(pipefd[0], got, sizeof(got));
	redirected_pair_close(&pair);
	if (n != SENT || r != SENT || memcmp(got, sent, SENT)) {
		printf("not ok 1 splice() from the socket returned %zd%s (over TCP: %d bytes, those sent)\n", n,
		       n < 0 && errno == EINTR ? " after 2 s without data" : "", SENT);
		return KSFT_FAIL;
	}
	printf("ok 1 splice() moved the %d redirected bytes into the pipe\n", SENT);
	return KSFT_PASS;
}
