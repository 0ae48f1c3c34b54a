/*
 * The loop of will-it-scale's tests/tlb_flush{1,2,3}.c (github.com/antonblanchard/will-it-scale), in a
 * self-contained harness: N tasks (threads of one process, or processes), task i pinned to CPU i % ncpus,
 * each counting iterations in a shared array; after a 1 s warm-up the counts over SECONDS are summed.
 * Prints one line: ops_per_s=<iterations per second, all tasks together>.
 *
 * Usage: wis_tlb_flush TEST(1|2|3) MODE(threads|processes) N SECONDS
 * Built and run by benchmarks/wis_host.py; not part of the package.
 */
#define _GNU_SOURCE
#include <assert.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#define MAX_TASKS 64
#define SLOT 16 /* counters 128 bytes apart, as will-it-scale's CACHELINE_SIZE */

static volatile unsigned long *counts;
static int test;

static void pin(int cpu)
{
	cpu_set_t set;
	CPU_ZERO(&set);
	CPU_SET(cpu, &set);
	sched_setaffinity(0, sizeof(set), &set);
}

static void *task(void *arg)
{
	long nr = (long)arg;
	volatile unsigned long *iteration = &counts[nr * SLOT];
	unsigned long size = test == 2 ? 1UL << 20 : 128UL << 20;
	unsigned long pg = getpagesize(), i;
	int fd = -1, flags = MAP_PRIVATE | MAP_ANONYMOUS;

	pin(nr % sysconf(_SC_NPROCESSORS_ONLN));
	if (test != 2) {
		char path[] = "/tmp/wis_tlb_flush.XXXXXX";
		fd = mkstemp(path);
		assert(fd >= 0 && ftruncate(fd, size) == 0);
		unlink(path);
		flags = test == 1 ? MAP_PRIVATE : MAP_SHARED;
	}
	for (;;) {
		char *addr = mmap(NULL, size, PROT_READ | PROT_WRITE, flags, fd, 0);
		assert(addr != MAP_FAILED);
		for (i = 0; i < size; i += pg) {
			addr[i] = 1;
			madvise(addr + i, pg, MADV_DONTNEED);
			assert(addr[i] == (test == 3));
			(*iteration)++;
		}
		munmap(addr, size);
	}
	return NULL;
}

static unsigned long total(int n)
{
	unsigned long sum = 0;
	for (int i = 0; i < n; i++)
		sum += counts[i * SLOT];
	return sum;
}

int main(int argc, char **argv)
{
	pid_t pids[MAX_TASKS];
	pthread_t threads[MAX_TASKS];
	int n, seconds, threaded;
	unsigned long before;

	if (argc != 5) {
		fprintf(stderr, "usage: %s TEST(1|2|3) threads|processes N SECONDS\n", argv[0]);
		return 2;
	}
	test = atoi(argv[1]);
	threaded = strcmp(argv[2], "threads") == 0;
	n = atoi(argv[3]);
	seconds = atoi(argv[4]);
	if (test < 1 || test > 3 || n < 1 || n > MAX_TASKS || seconds < 1)
		return 2;
	counts = mmap(NULL, MAX_TASKS * SLOT * sizeof(long), PROT_READ | PROT_WRITE,
		      MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	assert(counts != MAP_FAILED);
	for (long i = 0; i < n; i++) {
		if (threaded) {
			pthread_create(&threads[i], NULL, task, (void *)i);
		} else if ((pids[i] = fork()) == 0) {
			task((void *)i);
			_exit(0);
		}
	}
	sleep(1);
	before = total(n);
	sleep(seconds);
	printf("ops_per_s=%lu\n", (total(n) - before) / seconds);
	fflush(stdout);
	if (!threaded)
		for (int i = 0; i < n; i++)
			kill(pids[i], SIGKILL), waitpid(pids[i], NULL, 0);
	return 0;
}
