/*
 * The shootdown probe of `mmugather calibrate` (host/calibrate.py compiles it with cc and runs it): two
 * threads of one process, A pinned to CPU 0 and B to CPU 1, both SCHED_FIFO where permitted. A writes one
 * byte of its own 4 KiB anonymous page and drops it with madvise(MADV_DONTNEED), CALLS times back to back,
 * timing each madvise (CLOCK_MONOTONIC, the vDSO). What B does meanwhile is the MODE:
 *   alone    no thread B (CPU 1 is not in the mm's cpumask: no IPI);
 *   running  B spins in user mode reading the clock; every gap above 300 ns between two reads is time
 *            taken from it (an IPI's interrupt, or the odd timer tick): the receiver's side of a shootdown;
 *   mutual   B runs A's loop on its own page, so each thread's flush shoots down the other (will-it-scale's
 *            threads:2 shape).
 * This is C, not Python, because B must run its loop without waiting for Python's GIL: a thread waiting
 * for the GIL sleeps, its CPU goes idle and lazy, and the kernel sends it no flush.
 * Prints one JSON object: the TLB row of /proc/interrupts before less after per CPU ("tlb"), A's and B's
 * per-call ns ("a_ns", "b_ns") and B's gaps in ns ("gaps").
 * Usage: shootdown_probe alone|running|mutual CALLS
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "cprobe.h"

#define PG 4096
#define GAP_NS 300
#define MAX_GAPS 1000000

static volatile int go, stop;
static long calls, ngaps;
static double *a_ns, *b_ns, *gaps;
static const char *mode;

static void dontneed_loop(double *out)
{
	char *p = mmap(NULL, PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		die("mmap");
	for (long i = 0; i < calls; i++) {
		p[0] = 1;
		long t0 = now();
		madvise(p, PG, MADV_DONTNEED);
		out[i] = now() - t0;
	}
	munmap(p, PG);
}

static void *thread_b(void *unused)
{
	pin_fifo(1);
	while (!go)
		;
	if (!strcmp(mode, "mutual")) {
		dontneed_loop(b_ns);
		return NULL;
	}
	long last = now();
	while (!stop) {
		long t = now();
		if (t - last > GAP_NS && ngaps < MAX_GAPS)
			gaps[ngaps++] = t - last;
		last = t;
	}
	return NULL;
}

int main(int argc, char **argv)
{
	pthread_t b;
	long before[2], after[2];

	if (argc != 3 || (strcmp(argv[1], "alone") && strcmp(argv[1], "running") && strcmp(argv[1], "mutual")) ||
	    (calls = atol(argv[2])) < 1) {
		fprintf(stderr, "usage: shootdown_probe alone|running|mutual CALLS\n");
		return 2;
	}
	mode = argv[1];
	a_ns = calloc(calls, sizeof(double));
	b_ns = calloc(calls, sizeof(double));
	gaps = calloc(MAX_GAPS, sizeof(double));
	pin_fifo(0);
	int two = strcmp(mode, "alone") != 0;
	if (two && pthread_create(&b, NULL, thread_b, NULL))
		die("pthread_create");
	usleep(20000); /* B on CPU 1, in its loop */
	tlb_row(before);
	go = 1;
	dontneed_loop(a_ns);
	stop = 1;
	if (two)
		pthread_join(b, NULL);
	tlb_row(after);
	printf("{");
	print_samples("a_ns", a_ns, calls);
	print_samples("b_ns", b_ns, strcmp(mode, "mutual") ? 0 : calls);
	print_samples("gaps", gaps, ngaps);
	printf("\"tlb\": [%ld, %ld]}\n", after[0] - before[0], after[1] - before[1]);
	return 0;
}
