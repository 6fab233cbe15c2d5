// SPDX-License-Identifier: GPL-2.0
/*
 * sockbench: the workload of `sockredir-lab bench redirect`. One process runs a whole plan of
 * measurements, so that the transports are interleaved run by run and no interpreter or SSH round
 * trip sits between them. The lab builds it statically on the host and copies it to the target.
 *
 * Plan: one run per line on stdin,
 *     ID CGROUP TRANSPORT MODE SIZE CLIENT_CPU SERVER_CPU SECONDS PORT
 *   CGROUP      cgroup directory to move into before creating any socket ("-": stay): a socket
 *               belongs to the cgroup of the process that creates it, so the redirect applies
 *               exactly to runs in the cgroup where it is installed
 *   TRANSPORT   tcp (127.0.0.1, TCP_NODELAY both ends) | unix (AF_UNIX stream socketpair)
 *   MODE        rr: the client sends SIZE bytes, the server answers SIZE bytes, repeat;
 *               stream: the client writes SIZE bytes per write(), the server reads with a
 *               256 KiB buffer until EOF
 *   CLIENT_CPU, SERVER_CPU   CPU to pin each process to, -1: not pinned
 *   PORT        the TCP server's port, 0: any free one (a fixed port lets a port policy of the
 *               redirect tell these connections apart)
 * Result: one JSON object per line on stdout (flushed per run), {"id": ..., ...} or
 * {"id": ..., "error": "..."}; a failed run does not stop the plan.
 *
 * Figures: rr rate = round trips per second seen by the client, with p50/p99 of the round-trip
 * times; stream rate = bytes per second at the receiver, from the client's first write to the
 * receiver's EOF (with the redirect a sender can run far ahead of its reader, so the sender's
 * count would overstate). cpu_ns_per_byte = user + system time of client and server / payload
 * bytes (both directions for rr).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <fcntl.h>
#include <arpa/inet.h>

#define READ_BUFFER (256 * 1024)
#define MAX_SAMPLES (4 * 1024 * 1024)

struct run {
	char id[64];
	char cgroup[512];
	char transport[16];
	char mode[16];
	long size;
	int client_cpu;
	int server_cpu;
	double seconds;
	int port;
};

/* What the server child reports to the parent through a pipe. */
struct server_report {
	int64_t bytes;
	double eof_at;		/* CLOCK_MONOTONIC seconds */
	int error;		/* errno of a failed call, 0 if none */
	char where[32];
};

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static double cpu_seconds(const struct rusage *ru)
{
	return ru->ru_utime.tv_sec + ru->ru_utime.tv_usec / 1e6 + ru->ru_stime.tv_sec +
	       ru->ru_stime.tv_usec / 1e6;
}

static int pin(int cpu)
{
	cpu_set_t set;

	if (cpu < 0)
		return 0;
	CPU_ZERO(&set);
	CPU_SET(cpu, &set);
	return sched_setaffinity(0, sizeof(set), &set);
}

static int join_cgroup(const char *dir)
{
	char path[600], pid[32];
	int fd, len, ok;

	if (strcmp(dir, "-") == 0)
		return 0;
	snprintf(path, sizeof(path), "%s/cgroup.procs", dir);
	fd = open(path, O_WRONLY);
	if (fd < 0)
		return -1;
	len = snprintf(pid, sizeof(pid), "%d\n", getpid());
	ok = write(fd, pid, len) == len;
	close(fd);
	return ok ? 0 : -1;
}

static int write_all(int fd, const char *buf, long len)
{
	while (len > 0) {
		ssize_t n = write(fd, buf, len);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		buf += n;
		len -= n;
	}
	return 0;
}

/* 1: got len bytes, 0: EOF before the first byte, -1: error (errno set; EPIPE for a short read). */
static int read_exact(int fd, char *buf, long len)
{
	long got = 0;

	while (got < len) {
		ssize_t n = read(fd, buf + got, len - got);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		if (n == 0) {
			if (got == 0)
				return 0;
			errno = EPIPE;
			return -1;
		}
		got += n;
	}
	return 1;
}

static void nodelay(int fd)
{
	int one = 1;

	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

/* A connected pair: fds[0] the client's, fds[1] the server's (accepted). */
static int connect_pair(const char *transport, int port, int fds[2], const char **where)
{
	struct sockaddr_in addr = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK),
				    .sin_port = htons(port) };
	socklen_t len = sizeof(addr);
	int listener, one = 1;

	if (strcmp(transport, "unix") == 0) {
		*where = "socketpair";
		return socketpair(AF_UNIX, SOCK_STREAM, 0, fds);
	}
	*where = "bind";
	listener = socket(AF_INET, SOCK_STREAM, 0);
	/* A fixed port is reused run after run: a previous run's TIME_WAIT must not refuse it. */
	if (listener < 0 || setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) ||
	    bind(listener, (struct sockaddr *)&addr, sizeof(addr)))
		return -1;
	*where = "listen";
	if (listen(listener, 1) || getsockname(listener, (struct sockaddr *)&addr, &len))
		return -1;
	*where = "connect";
	fds[0] = socket(AF_INET, SOCK_STREAM, 0);
	if (fds[0] < 0 || connect(fds[0], (struct sockaddr *)&addr, sizeof(addr)))
		return -1;
	*where = "accept";
	fds[1] = accept(listener, NULL, NULL);
	close(listener);
	if (fds[1] < 0)
		return -1;
	nodelay(fds[0]);
	nodelay(fds[1]);
	return 0;
}

static void server(int fd, const struct run *run, int report_fd)
{
	struct server_report report = { 0 };
	long bufsize = run->size > READ_BUFFER ? run->size : READ_BUFFER;
	char *buf = malloc(bufsize);
	int rc;

	if (!buf || pin(run->server_cpu)) {
		report.error = buf ? errno : ENOMEM;
		snprintf(report.where, sizeof(report.where), "server setup");
		goto out;
	}
	if (strcmp(run->mode, "rr") == 0) {
		while ((rc = read_exact(fd, buf, run->size)) > 0) {
			if (write_all(fd, buf, run->size)) {
				rc = -1;
				break;
			}
			report.bytes += 2 * run->size;
		}
	} else {
		ssize_t n;

		while ((n = read(fd, buf, READ_BUFFER)) != 0) {
			if (n < 0 && errno == EINTR)
				continue;
			if (n < 0)
				break;
			report.bytes += n;
		}
		rc = n == 0 ? 0 : -1;
	}
	report.eof_at = now();
	if (rc < 0) {
		report.error = errno;
		snprintf(report.where, sizeof(report.where), "server %s", run->mode);
	}
out:
	if (write(report_fd, &report, sizeof(report)) != sizeof(report))
		_exit(3);
	_exit(0);
}

static int compare_doubles(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return (x > y) - (x < y);
}

static double percentile(double *sorted, long n, double p)
{
	long i = (long)(p * (n - 1) + 0.5);

	return n ? sorted[i] : 0;
}

static void fail(const struct run *run, const char *where, int err)
{
	printf("{\"id\": \"%s\", \"error\": \"%s: %s\"}\n", run->id, where, strerror(err));
	fflush(stdout);
}

static void measure(const struct run *run, double *samples)
{
	struct server_report report;
	struct rusage before, after, child;
	long nsamples = 0, ops = 0;
	const char *where = "";
	int fds[2] = { -1, -1 }, pipefd[2], status, err = 0;
	char *buf;
	double start, end, elapsed, payload;
	pid_t pid;

	if (join_cgroup(run->cgroup))
		return fail(run, "join cgroup", errno);
	if (pin(run->client_cpu))
		return fail(run, "pin client", errno);
	buf = calloc(1, run->size > READ_BUFFER ? run->size : READ_BUFFER);
	if (!buf || pipe(pipefd))
		return fail(run, "setup", errno);
	if (connect_pair(run->transport, run->port, fds, &where)) {
		err = errno;
		goto out;
	}
	pid = fork();
	if (pid < 0) {
		err = errno;
		where = "fork";
		goto out;
	}
	if (pid == 0) {
		close(fds[0]);
		close(pipefd[0]);
		server(fds[1], run, pipefd[1]);
	}
	close(fds[1]);
	fds[1] = -1;
	getrusage(RUSAGE_SELF, &before);
	start = now();
	end = start + run->seconds;
	if (strcmp(run->mode, "rr") == 0) {
		double t0 = start, t1;

		where = "client rr";
		do {
			if (write_all(fds[0], buf, run->size) || read_exact(fds[0], buf, run->size) != 1) {
				err = errno ? errno : EPIPE;
				break;
			}
			t1 = now();
			if (nsamples < MAX_SAMPLES)
				samples[nsamples++] = t1 - t0;
			ops++;
			t0 = t1;
		} while (t1 < end);
	} else {
		where = "client stream";
		do {
			if (write_all(fds[0], buf, run->size)) {
				err = errno;
				break;
			}
			ops++;
		} while (now() < end);
	}
	shutdown(fds[0], SHUT_WR);
	if (read(pipefd[0], &report, sizeof(report)) != sizeof(report)) {
		err = err ? err : EPIPE;
		where = "server report";
	}
	getrusage(RUSAGE_SELF, &after);
	if (wait4(pid, &status, 0, &child) < 0 && !err) {
		err = errno;
		where = "wait";
	}
	if (!err && report.error) {
		err = report.error;
		where = report.where;
	}
	if (err)
		goto out;
	elapsed = report.eof_at - start;
	payload = (double)report.bytes;
	qsort(samples, nsamples, sizeof(double), compare_doubles);
	printf("{\"id\": \"%s\", \"ops\": %ld, \"bytes\": %lld, \"elapsed_s\": %.6f, \"rate\": %.3f, "
	       "\"p50_us\": %.3f, \"p99_us\": %.3f, \"cpu_client_s\": %.6f, \"cpu_server_s\": %.6f, "
	       "\"cpu_ns_per_byte\": %.4f}\n",
	       run->id, ops, (long long)report.bytes, elapsed,
	       strcmp(run->mode, "rr") == 0 ? ops / elapsed : payload / elapsed,
	       percentile(samples, nsamples, 0.50) * 1e6, percentile(samples, nsamples, 0.99) * 1e6,
	       cpu_seconds(&after) - cpu_seconds(&before), cpu_seconds(&child),
	       payload ? (cpu_seconds(&after) - cpu_seconds(&before) + cpu_seconds(&child)) * 1e9 / payload : 0);
	fflush(stdout);
out:
	if (err)
		fail(run, where, err);
	close(pipefd[0]);
	close(pipefd[1]);
	if (fds[0] >= 0)
		close(fds[0]);
	if (fds[1] >= 0)
		close(fds[1]);
	free(buf);
}

int main(void)
{
	double *samples = malloc(MAX_SAMPLES * sizeof(double));
	char line[1024];
	struct run run;

	if (!samples)
		return 1;
	/* A server that died early must surface as an error of its run, not kill the plan. */
	signal(SIGPIPE, SIG_IGN);
	while (fgets(line, sizeof(line), stdin)) {
		memset(&run, 0, sizeof(run));
		if (sscanf(line, "%63s %511s %15s %15s %ld %d %d %lf %d", run.id, run.cgroup, run.transport,
			   run.mode, &run.size, &run.client_cpu, &run.server_cpu, &run.seconds, &run.port) != 9 ||
		    run.size < 1 || run.seconds <= 0 || run.port < 0 || run.port > 65535 ||
		    (strcmp(run.mode, "rr") && strcmp(run.mode, "stream")) ||
		    (strcmp(run.transport, "tcp") && strcmp(run.transport, "unix"))) {
			printf("{\"id\": \"%s\", \"error\": \"malformed plan line\"}\n", run.id);
			fflush(stdout);
			continue;
		}
		errno = 0;
		measure(&run, samples);
	}
	return 0;
}
