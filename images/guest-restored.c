/*
 * lab-restored EPOCH_SECONDS NANOSECONDS HEX: run once in a guest restored from a snapshot
 * (lab/vm/guest.py), before anything else. Installed in the image as /usr/local/sbin/lab-restored,
 * built statically by lab/vm/image.py.
 *
 * Every guest restored from one snapshot wakes with the same memory: the same kernel random state
 * and the clock of the moment it was saved. This sets the clock to the host's time and credits HEX
 * (random bytes from the host) to the kernel's input pool, then makes the kernel reseed its random
 * generators from it at once. A static C program rather than a script: it runs in a few
 * milliseconds just after a restore under TCG, where perl or python take a few hundred.
 */
#include <fcntl.h>
#include <linux/random.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>

#define MAX_BYTES 256

static int hex_value(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

int main(int argc, char **argv)
{
	struct {
		struct rand_pool_info info;
		unsigned char bytes[MAX_BYTES];
	} pool;
	struct timespec now;
	size_t length, i;
	int fd;

	if (argc != 4) {
		fprintf(stderr, "usage: %s EPOCH_SECONDS NANOSECONDS HEX\n", argv[0]);
		return 2;
	}
	now.tv_sec = strtoll(argv[1], NULL, 10);
	now.tv_nsec = strtol(argv[2], NULL, 10);
	if (clock_settime(CLOCK_REALTIME, &now) != 0) {
		perror("clock_settime");
		return 1;
	}
	length = strlen(argv[3]) / 2;
	if (length == 0 || length > MAX_BYTES) {
		fprintf(stderr, "HEX: 1 to %d bytes\n", MAX_BYTES);
		return 2;
	}
	for (i = 0; i < length; i++) {
		int high = hex_value(argv[3][2 * i]), low = hex_value(argv[3][2 * i + 1]);

		if (high < 0 || low < 0) {
			fprintf(stderr, "HEX: not lower-case hex\n");
			return 2;
		}
		pool.bytes[i] = (unsigned char)(high << 4 | low);
	}
	pool.info.entropy_count = (int)(8 * length);
	pool.info.buf_size = (int)length;
	fd = open("/dev/urandom", O_RDWR);
	if (fd < 0) {
		perror("/dev/urandom");
		return 1;
	}
	/* RNDADDENTROPY credits the bytes; RNDRESEEDCRNG (since 4.17) reseeds now, not in a minute. */
	if (ioctl(fd, RNDADDENTROPY, &pool) != 0) {
		perror("RNDADDENTROPY");
		return 1;
	}
	if (ioctl(fd, RNDRESEEDCRNG) != 0) {
		perror("RNDRESEEDCRNG");
		return 1;
	}
	return 0;
}
