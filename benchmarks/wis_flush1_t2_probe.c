/*
 * tlb_flush1 threads:2 taken apart on the host (docs/host.md, issue 22): will-it-scale's tlb_flush1 loop
 * (write a page of a MAP_PRIVATE mapping of a cached 128 MiB file, MADV_DONTNEED it, read it back) in
 * THREADS threads of one process, thread i pinned to CPU i, each on a file of its own (as
 * benchmarks/wis_tlb_flush.c), every step timed apart (a clock pair each, ~20 ns, not subtracted).
 * After a 1 s warm-up each thread counts SECONDS of iterations and keeps, per step and per kind of page,
 * the mean and a histogram (50 ns bins) of the step's time. The kinds: the first page of each 16-page
 * fault-around window (its write finds the PTE none: do_cow_fault(), no flush; its read maps the window)
 * and the other 15 (the write finds the read-only PTE that the read-back's fault-around mapped:
 * do_wp_page() -> wp_page_copy() -> ptep_clear_flush(), a shootdown when the other thread runs).
 * VARIANT picks the loop, one change at a time:
 *   loop    write, MADV_DONTNEED, read (tlb_flush1 as it is: 2 shootdowns per iteration with 2 threads)
 *   noread  write, MADV_DONTNEED (every write finds the PTE none: only MADV_DONTNEED's shootdown)
 *   nodn    read, write (no MADV_DONTNEED: each write copies a page the read mapped read-only, so only
 *           wp_page_copy()'s shootdown, sent under the PTE lock; the read faults only on the first page of
 *           a window, mapping all 16, and the rest are TLB misses or hits)
 * Prints one JSON object: ops_per_s (all threads), the TLB row of /proc/interrupts per CPU over the counted
 * seconds, per thread and step {kind: [n, mean_ns, p10, p50, p90]}, and with two threads "phase": how
 * many of thread 0's iterations found thread 1 0..15 pages ahead modulo 16 (where their fault-around
 * windows stand to each other) and "phase_changes": how often that offset changed.
 *
 * `phase=K` (2 threads): both threads start every pass together (a barrier after the mmap), thread 1 at
 * page K of its mapping, so that their 16-page windows are K pages apart (will-it-scale's threads fall
 * into whatever phase their start times give, and it changes at each pass's munmap).
 * `fifo`: both threads SCHED_FIFO (cprobe.h's pin_fifo()), so that other jobs on a shared machine do not
 * deschedule them: a descheduled thread's CPU leaves the mm and is sent no IPI (on a quiet machine the
 * rate is the same either way: docs/host.md).
 *
 * Usage: cc -O2 -pthread -o wis_flush1_t2_probe benchmarks/wis_flush1_t2_probe.c
 *        ./wis_flush1_t2_probe loop|noread|nodn THREADS SECONDS [fifo] [phase=K]
 * Not part of the package; benchmarks/wis_flush1_t2.py runs it beside the shootdown probe and the model.
 */
#define _GNU_SOURCE
#include <assert.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "../src/mmugather/host/cprobe.h"

#define PG 4096UL
#define SIZE (128UL << 20)
#define MAX_THREADS 2
#define BINS 4000 /* 50 ns each: 0-200 us, the last bin holds the rest */
#define BIN_NS 50
#define STEPS 3
#define KINDS 2 /* 0: other 15 pages of a window, 1: its first page */

static const char *const STEP_NAMES[STEPS] = {"write", "madvise", "read"};
static const char *const KIND_NAMES[KINDS] = {"other15", "first"};

struct stats {
	unsigned long n[STEPS][KINDS];
	double sum[STEPS][KINDS];
	unsigned int hist[STEPS][KINDS][BINS];
	unsigned long iterations;
};

static struct stats *stats;
#define MAX_LOG 400000
static long *log_ns[MAX_THREADS], *log_page[MAX_THREADS]; /* each counted iteration's start and page */
static volatile int counting, stop;
static const char *variant;
static int fifo;
static long phase = -1; /* phase=K: thread 1 starts each pass at page K, both threads start each pass together */
static pthread_barrier_t pass_start;

static void pin_cpu(int cpu)
{
	cpu_set_t set;
	CPU_ZERO(&set);
	CPU_SET(cpu, &set);
	if (sched_setaffinity(0, sizeof(set), &set))
		die("sched_setaffinity");
}


static void record(struct stats *s, int step, int kind, long ns)
{
	long bin = ns / BIN_NS;
	s->n[step][kind]++;
	s->sum[step][kind] += ns;
	s->hist[step][kind][bin < BINS ? bin : BINS - 1]++;
}

/* One pass over the mapping: the variant's steps, each timed; recorded only while counting. */
static void pass(char *addr, struct stats *s, unsigned long first)
{
	volatile char x;
	int rd = strcmp(variant, "noread") != 0, dn = strcmp(variant, "nodn") != 0;

	for (unsigned long i = first; i < SIZE && !stop; i += PG) {
		int kind = (i / PG) % 16 == 0;
		long t0 = now(), t1 = t0, t2, t3;
		if (!dn) { /* nodn: the read first, so that the write copies a page mapped read-only */
			x = addr[i];
			t1 = now();
		}
		addr[i] = 1;
		t2 = now();
		if (dn)
			madvise(addr + i, PG, MADV_DONTNEED);
		t3 = now();
		if (dn && rd)
			x = addr[i];
		long t4 = now();
		if (counting) {
			record(s, 0, kind, t2 - t1);
			if (dn)
				record(s, 1, kind, t3 - t2);
			if (rd || !dn)
				record(s, 2, kind, dn ? t4 - t3 : t1 - t0);
			long nr = s - stats;
			if (s->iterations < MAX_LOG)
				log_ns[nr][s->iterations] = t0, log_page[nr][s->iterations] = (long)(i / PG);
			s->iterations++;
		}
	}
	(void)x;
}

static void *task(void *arg)
{
	long nr = (long)arg;
	char path[] = "/tmp/wis_flush1_t2.XXXXXX";
	int fd;

	if (fifo)
		pin_fifo((int)nr);
	else
		pin_cpu((int)nr);
	fd = mkstemp(path);
	assert(fd >= 0 && ftruncate(fd, SIZE) == 0);
	unlink(path);
	char *w = mmap(NULL, SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	assert(w != MAP_FAILED);
	memset(w, 0, SIZE); /* cached whole, as after will-it-scale's warm-up */
	munmap(w, SIZE);
	while (!stop) {
		char *addr = mmap(NULL, SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
		assert(addr != MAP_FAILED);
		if (phase >= 0)
			pthread_barrier_wait(&pass_start);
		pass(addr, &stats[nr], nr == 1 && phase > 0 ? phase * PG : 0);
		munmap(addr, SIZE);
	}
	return NULL;
}

/*
 * The two threads' phase: for each counted iteration of thread 0, thread 1's page at that moment (its
 * latest iteration begun) less thread 0's, modulo 16 (where the two 16-page fault-around windows stand to
 * each other); prints the histogram of the 16 offsets and how often the offset changed from one of thread
 * 0's iterations to the next.
 */
static void print_phase(void)
{
	long hist[16] = {0}, changes = 0, last = -1, k = 0;
	long n0 = stats[0].iterations < MAX_LOG ? (long)stats[0].iterations : MAX_LOG;
	long n1 = stats[1].iterations < MAX_LOG ? (long)stats[1].iterations : MAX_LOG;

	for (long j = 0; j < n0; j++) {
		while (k + 1 < n1 && log_ns[1][k + 1] <= log_ns[0][j])
			k++;
		if (!n1 || log_ns[1][k] > log_ns[0][j])
			continue;
		long off = ((log_page[1][k] - log_page[0][j]) % 16 + 16) % 16;
		hist[off]++;
		changes += last >= 0 && off != last;
		last = off;
	}
	printf(", \"phase\": [");
	for (int b = 0; b < 16; b++)
		printf(b ? ", %ld" : "%ld", hist[b]);
	printf("], \"phase_changes\": %ld", changes);
}

/* The q-quantile of a histogram, in ns (the bin's middle). */
static double quantile(const unsigned int *h, unsigned long n, double q)
{
	unsigned long want = (unsigned long)(q * n), seen = 0;
	for (int b = 0; b < BINS; b++) {
		seen += h[b];
		if (seen > want)
			return (b + 0.5) * BIN_NS;
	}
	return BINS * BIN_NS;
}

int main(int argc, char **argv)
{
	pthread_t threads[MAX_THREADS];
	long before[2], after[2], t0, t1;
	int n, seconds;

	if (argc < 4 || (strcmp(argv[1], "loop") && strcmp(argv[1], "noread") && strcmp(argv[1], "nodn")) ||
	    (n = atoi(argv[2])) < 1 || n > MAX_THREADS || (seconds = atoi(argv[3])) < 1) {
		fprintf(stderr, "usage: %s loop|noread|nodn THREADS(1|2) SECONDS [fifo] [phase=K]\n", argv[0]);
		return 2;
	}
	for (int a = 4; a < argc; a++) {
		if (!strcmp(argv[a], "fifo"))
			fifo = 1;
		else if (!strncmp(argv[a], "phase=", 6) && n == 2 && (phase = atol(argv[a] + 6)) >= 0 && phase < 16)
			continue;
		else {
			fprintf(stderr, "%s: unknown option %s (fifo, or phase=K with 0 <= K < 16 and 2 threads)\n", argv[0], argv[a]);
			return 2;
		}
	}
	variant = argv[1];
	if (phase >= 0)
		pthread_barrier_init(&pass_start, NULL, 2);
	stats = calloc(n, sizeof(*stats));
	for (int i = 0; i < n; i++) {
		log_ns[i] = calloc(MAX_LOG, sizeof(long));
		log_page[i] = calloc(MAX_LOG, sizeof(long));
	}
	for (long i = 0; i < n; i++)
		pthread_create(&threads[i], NULL, task, (void *)i);
	sleep(1);
	tlb_row(before);
	t0 = now();
	counting = 1;
	sleep(seconds);
	counting = 0;
	t1 = now();
	tlb_row(after);
	stop = 1;
	usleep(100000); /* no join: with phase=K one thread may wait at the barrier for good; exit() ends both */
	unsigned long total = 0;
	for (int i = 0; i < n; i++)
		total += stats[i].iterations;
	printf("{\"variant\": \"%s\", \"fifo\": %d, \"phase\": %ld, \"threads\": %d, \"ops_per_s\": %.0f, \"iterations\": %lu, \"tlb\": [%ld, %ld], "
	       "\"steps\": [", variant, fifo, phase, n, total * 1e9 / (t1 - t0), total, after[0] - before[0], after[1] - before[1]);
	for (int i = 0; i < n; i++) {
		printf(i ? ", {" : "{");
		for (int s = 0; s < STEPS; s++) {
			printf(s ? ", \"%s\": {" : "\"%s\": {", STEP_NAMES[s]);
			for (int k = 0; k < KINDS; k++) {
				unsigned long c = stats[i].n[s][k];
				const unsigned int *h = stats[i].hist[s][k];
				printf(k ? ", \"%s\": [%lu, %.0f, %.0f, %.0f, %.0f]" : "\"%s\": [%lu, %.0f, %.0f, %.0f, %.0f]",
				       KIND_NAMES[k], c, c ? stats[i].sum[s][k] / c : 0.0, quantile(h, c, 0.1),
				       quantile(h, c, 0.5), quantile(h, c, 0.9));
			}
			printf("}");
		}
		printf("}");
	}
	printf("]");
	if (n == 2)
		print_phase();
	printf("}\n");
	return 0;
}
