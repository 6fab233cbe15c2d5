// SPDX-License-Identifier: GPL-2.0
/*
 * A blocking recv() on a socket in a sockmap must block until data, EOF or an error, as over TCP;
 * it must never fail with EAGAIN. The server end is in the map (its reads take tcp_bpf_recvmsg),
 * the client end is not (so everything goes over TCP). One thread blocks in recv() on the server
 * while another sends 16 MiB from the server to the client, which reads it in small bites: each
 * time the server's full send buffer drains, the ACKs wake the server's wait queue for write
 * space, and that queue is the one its reader sleeps on. Then the client sends one byte, which
 * the blocked recv() must return.
 * Fails on kernels without "tcp_bpf: keep waiting after a wake-up that brought no data"
 * (recv() returns -1 with EAGAIN during the transfer).
 */
#include <pthread.h>
#include "sockmap_fixture.h"

#define TRANSFER (16 << 20)
#define BITE 4096

struct reader {
	int fd;
	ssize_t got;
	int err;
	char byte;
};

static void *blocked_reader(void *arg)
{
	struct reader *r = arg;

	r->got = recv(r->fd, &r->byte, 1, 0);
	r->err = r->got < 0 ? errno : 0;
	return NULL;
}

static void *bulk_sender(void *arg)
{
	static char chunk[65536];
	int fd = *(int *)arg;
	size_t sent = 0;

	while (sent < TRANSFER) {
		ssize_t n = send(fd, chunk, sizeof(chunk), 0);

		if (n <= 0) {
			perror("send");
			break;
		}
		sent += n;
	}
	return NULL;
}

int main(int argc, char **argv)
{
	struct redirected_pair pair;
	struct reader reader = { 0 };
	pthread_t reading, sending;
	char bite[BITE];
	size_t received = 0;
	int err, sndbuf = 65536;
	__u32 port;

	(void)argc;
	printf("TAP version 13\n1..1\n");
	err = redirected_pair_open(&pair, argv[0]);
	if (err)
		return err;
	/* Only the server stays in the map: the client's data comes over TCP. */
	port = local_port(pair.client);
	if (!getenv("SOCKMAP_PLAIN") && bpf_map_delete_elem(pair.map_fd, &port))
		return fixture_skip("take the client out of the sockhash");
	setsockopt(pair.server, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof(sndbuf));
	reader.fd = pair.server;
	pthread_create(&reading, NULL, blocked_reader, &reader);
	usleep(50 * 1000);	/* the reader is asleep in recv() */
	pthread_create(&sending, NULL, bulk_sender, &pair.server);
	while (received < TRANSFER) {
		ssize_t n = recv(pair.client, bite, sizeof(bite), 0);

		if (n <= 0)
			break;
		received += n;
		if (received % (256 * BITE) == 0)
			usleep(1000);	/* let the server's send buffer fill, then drain */
	}
	pthread_join(sending, NULL);
	if (send(pair.client, "x", 1, 0) != 1)
		perror("send the byte");
	pthread_join(reading, NULL);
	redirected_pair_close(&pair);
	if (reader.got != 1 || reader.byte != 'x') {
		printf("not ok 1 a blocking recv() returned %zd (%s) while the socket also sent %zu bytes; "
		       "over TCP it waits for the byte\n", reader.got,
		       reader.got < 0 ? strerror(reader.err) : "not the byte", received);
		return KSFT_FAIL;
	}
	printf("ok 1 a blocking recv() waited through %zu bytes sent the other way\n", received);
	return KSFT_PASS;
}
