/*
 * What a full TLB flush costs the CPU that takes it, against a one-page flush (docs/host.md, issue 22:
 * tlb_flush1 threads:2's receivers take the full-flush branch of flush_tlb_func()). Two threads of one
 * process, A pinned to CPU 0 and B to CPU 1, both SCHED_FIFO where permitted. B runs a user-mode loop
 * that reads the clock and touches one byte in each of W pages of its own (the working set a full flush
 * makes it walk again), counting its iterations. For the first half of the run A sleeps (B's rate alone),
 * for the second half A writes two pages of its own mapping and drops them with one madvise(MADV_DONTNEED),
 * CALLS times: two adjacent pages (MODE `one`: the gathered range is 2 pages, flush_tlb_func() on CPU 1
 * flushes them one by one) or pages 64 apart (MODE `full`: the range is 65 pages, above
 * tlb_single_page_flush_ceiling (33), so flush_tlb_mm_range() asks for TLB_FLUSH_ALL and CPU 1 flushes
 * everything, then refills its TLB). B's time lost per IPI, everything included (the interrupt, the
 * handler, the refills after it), is (its time while A sends - its iterations x its time per iteration
 * alone) / the IPIs CPU 1 took (the TLB row of /proc/interrupts).
 * Prints one JSON object: mode, W, calls, B's ns per iteration alone and while A sends, the TLB row per
 * CPU while A sends, and B's loss per IPI in ns; A's mean ns per madvise.
 *
 * Usage: cc -O2 -pthread -o full_flush_probe benchmarks/full_flush_probe.c && ./full_flush_probe one|full W CALLS
 * Not part of the package.
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

#include "../src/mmugather/host/cprobe.h"

#define PG 4096L
#define GAP_PAGES 64

static volatile int phase; /* 0: B waits, 1: B alone, 2: A sends, 3: stop */
static volatile long b_iter[4], b_ns[4];
static long w;

static void *thread_b(void *unused)
{
	volatile char *ws = mmap(NULL, (w ? w : 1) * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (ws == MAP_FAILED)
		die("mmap");
	for (long i = 0; i < w; i++)
		ws[i * PG] = 1;
	pin_fifo(1);
	while (phase == 0)
		;
	while (phase < 3) {
		int p = phase;
		long t0 = now(), n = 0;
		while (phase == p) {
			for (long i = 0; i < w; i++)
				ws[i * PG]++;
			n++;
			(void)now();
		}
		b_iter[p] += n, b_ns[p] += now() - t0;
	}
	return NULL;
}

int main(int argc, char **argv)
{
	pthread_t b;
	long before[2], after[2], calls;
	int full;

	if (argc != 4 || (strcmp(argv[1], "one") && strcmp(argv[1], "full")) || (w = atol(argv[2])) < 0 ||
	    (calls = atol(argv[3])) < 1) {
		fprintf(stderr, "usage: full_flush_probe one|full W CALLS\n");
		return 2;
	}
	full = !strcmp(argv[1], "full");
	char *p = mmap(NULL, (GAP_PAGES + 1) * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		die("mmap");
	char *second = p + (full ? GAP_PAGES : 1) * PG;
	long len = (full ? GAP_PAGES + 1 : 2) * PG;
	pin_fifo(0);
	if (pthread_create(&b, NULL, thread_b, NULL))
		die("pthread_create");
	usleep(20000);
	phase = 1;
	usleep(200000); /* B alone: its time per iteration */
	tlb_row(before);
	phase = 2;
	long t0 = now();
	for (long i = 0; i < calls; i++) {
		p[0] = 1, second[0] = 1;
		madvise(p, len, MADV_DONTNEED);
	}
	long a_ns = now() - t0;
	phase = 3;
	tlb_row(after);
	pthread_join(b, NULL);
	double alone = (double)b_ns[1] / b_iter[1];
	long ipis = after[1] - before[1];
	printf("{\"mode\": \"%s\", \"w\": %ld, \"calls\": %ld, \"b_iter_alone_ns\": %.1f, \"b_iter_sending_ns\": %.1f, "
	       "\"tlb\": [%ld, %ld], \"b_loss_per_ipi_ns\": %.0f, \"a_call_ns\": %.0f}\n", argv[1], w, calls, alone,
	       (double)b_ns[2] / b_iter[2], after[0] - before[0], ipis, (b_ns[2] - b_iter[2] * alone) / (ipis ? ipis : 1),
	       (double)a_ns / calls);
	return 0;
}
