// SPDX-License-Identifier: GPL-2.0
/*
 * recv(MSG_WAITALL) on a socket whose peer's sends are redirected into it (BPF_F_INGRESS) must
 * wait for the whole length, as it does over TCP. The peer sends 1024 bytes, then 3072 more 100 ms
 * later; a recv of 4096 bytes with MSG_WAITALL must return 4096, in order.
 * Fails on kernels without "tcp_bpf: honour MSG_WAITALL in tcp_bpf_recvmsg" (returns 1024).
 */
#include <pthread.h>
#include "sockmap_fixture.h"

#define FIRST 1024
#define TOTAL 4096

static unsigned char sent[TOTAL];

static void *late_sender(void *arg)
{
	int fd = *(int *)arg;

	usleep(100 * 1000);
	if (send(fd, sent + FIRST, TOTAL - FIRST, 0) != TOTAL - FIRST)
		perror("send");
	return NULL;
}

int main(int argc, char **argv)
{
	unsigned char got[TOTAL];
	struct redirected_pair pair;
	pthread_t thread;
	ssize_t n;
	int err, i;

	(void)argc;
	printf("TAP version 13\n1..1\n");
	for (i = 0; i < TOTAL; i++)
		sent[i] = (unsigned char)(i * 7 + 3);
#ifdef WAITALL_WITH_STREAM_VERDICT
	fixture_stream_verdict = 1;
#endif
	err = redirected_pair_open(&pair, argv[0]);
	if (err)
		return err;
	if (send(pair.client, sent, FIRST, 0) != FIRST)
		return fixture_skip("send the first part");
	pthread_create(&thread, NULL, late_sender, &pair.client);
	n = recv(pair.server, got, TOTAL, MSG_WAITALL);
	pthread_join(thread, NULL);
	redirected_pair_close(&pair);
	if (n != TOTAL || memcmp(got, sent, TOTAL)) {
		printf("not ok 1 recv(MSG_WAITALL) of %d bytes returned %zd%s\n", TOTAL, n,
		       n == TOTAL ? " bytes that differ from those sent" : " (over TCP: all of them)");
		return KSFT_FAIL;
	}
	printf("ok 1 recv(MSG_WAITALL) waited for all %d bytes\n", TOTAL);
	return KSFT_PASS;
}
