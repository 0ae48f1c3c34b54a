/*
 * Why tlb_flush3 costs more per iteration over a 128 MiB file than over 16 MiB (docs/host.md): the loop of
 * will-it-scale's tlb_flush3 (write a page of a MAP_SHARED file, MADV_DONTNEED it, read it back) timed over
 * each 8 MiB window of a 48 MiB file in /tmp, after the file was written once in order, so each window
 * holds the folios readahead gave it (on Linux 6.18 ext4 with read_ahead_kb 8192: 1 page in the first
 * window, then 4, 16, 64, 256, 512 pages: /proc/kpageflags). Also a read pass then a write pass (each
 * write then a write-protect fault whose ->page_mkwrite walks the page's folio). With NOHUGE=1 the mapping
 * gets MADV_NOHUGEPAGE, so no 2 MiB folio is mapped by a PMD.
 *
 * Beside each window's loop time it prints the loop run again with each of its three steps timed apart,
 * calibrate's file_pmd_faults cycle (read, MADV_DONTNEED, write, each with nothing mapped before it) in C, and what the kernel did per iteration, from /proc/vmstat around the
 * loop (system-wide counters: run it on an otherwise idle machine): thp_split_pmd (__split_huge_pmd_locked()
 * calls), thp_file_mapped (do_set_pmd() mappings of a file folio) and pgfault; and the FilePmdMapped kB of
 * this mapping in /proc/self/smaps after the loop.
 *
 * Usage: cc -O2 -o wis_flush3_probe benchmarks/wis_flush3_probe.c && ./wis_flush3_probe [NOHUGE] [DIR]
 * Not part of the package; prints ns per page, CPU 0, one pass per window (repeat it: the host is shared).
 */
#define _GNU_SOURCE
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define PG 4096L
#define WINDOW (2048 * PG)
#define WINDOWS 6

static const char *const COUNTERS[] = {"thp_split_pmd", "thp_file_mapped", "pgfault"};
#define NCOUNTERS 3

#include "vmstat.h"
#include "../src/mmugather/host/smaps.h"

static double now(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec * 1e9 + t.tv_nsec;
}

int main(int argc, char **argv)
{
	int nohuge = argc > 1 ? atoi(argv[1]) : 0;
	char path[256];
	cpu_set_t set;
	long size = WINDOWS * WINDOW;

	CPU_ZERO(&set);
	CPU_SET(0, &set);
	sched_setaffinity(0, sizeof(set), &set);
	snprintf(path, sizeof(path), "%s/wis_flush3_probe.XXXXXX", argc > 2 ? argv[2] : "/tmp");
	int fd = mkstemp(path);
	if (fd < 0 || ftruncate(fd, size) != 0)
		return 1;
	unlink(path);
	char *a = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (a == MAP_FAILED)
		return 1;
	if (nohuge)
		madvise(a, size, MADV_NOHUGEPAGE);
	memset(a, 1, size);
	printf("mapping %p, 2 MiB aligned: %d, MADV_NOHUGEPAGE: %d\n", (void *)a, ((long)a & ((2L << 20) - 1)) == 0,
	       nohuge);
	for (int w = 0; w < WINDOWS; w++) {
		char *b = a + w * WINDOW;
		volatile char x;
		double t0, t1, t2, t3;
		long before[NCOUNTERS], after[NCOUNTERS];

		madvise(a, size, MADV_DONTNEED);
		for (long i = 0; i < WINDOW; i += PG)
			x = b[i];
		t0 = now();
		for (long i = 0; i < WINDOW; i += PG)
			b[i] = 2;
		t1 = now();
		madvise(a, size, MADV_DONTNEED);
		vmstat(before);
		t2 = now();
		for (long i = 0; i < WINDOW; i += PG) {
			b[i] = 2;
			madvise(b + i, PG, MADV_DONTNEED);
			x = b[i];
		}
		t3 = now();
		vmstat(after);
		long pmd_kb = file_pmd_mapped_kb(a);
		/* the same loop again, each step timed on its own (clock_gettime() adds ~20-50 ns to each) */
		double steps[3] = {0, 0, 0}, s0, s1, s2, s3;
		for (long i = 0; i < WINDOW; i += PG) {
			s0 = now();
			b[i] = 2;
			s1 = now();
			madvise(b + i, PG, MADV_DONTNEED);
			s2 = now();
			x = b[i];
			s3 = now();
			steps[0] += s1 - s0, steps[1] += s2 - s1, steps[2] += s3 - s2;
		}
		/* calibrate's file_pmd_faults cycle (host/calibrate.py) in C, once per page: a read with nothing
		 * mapped, a 1-page MADV_DONTNEED, a write with nothing mapped, an untimed MADV_DONTNEED */
		double cyc[3] = {0, 0, 0};
		madvise(a, size, MADV_DONTNEED);
		for (long i = 0; i < WINDOW; i += PG) {
			s0 = now();
			x = b[i];
			s1 = now();
			madvise(b + i, PG, MADV_DONTNEED);
			s2 = now();
			b[i] = 2;
			s3 = now();
			madvise(b + i, PG, MADV_DONTNEED);
			cyc[0] += s1 - s0, cyc[1] += s2 - s1, cyc[2] += s3 - s2;
		}
		(void)x;
		printf("window %d: write after a read pass %6.0f ns/page; tlb_flush3 loop %6.0f ns/iteration;", w,
		       (t1 - t0) / (WINDOW / PG), (t3 - t2) / (WINDOW / PG));
		for (int i = 0; i < NCOUNTERS; i++)
			printf(" %s %.2f", COUNTERS[i], (double)(after[i] - before[i]) / (WINDOW / PG));
		printf(" per iteration; FilePmdMapped %ld kB\n", pmd_kb);
		printf("          steps timed apart: write %6.0f, madvise %6.0f, read %6.0f ns/iteration\n",
		       steps[0] / (WINDOW / PG), steps[1] / (WINDOW / PG), steps[2] / (WINDOW / PG));
		printf("          calibrate's cycle: read %6.0f, madvise %6.0f, write %6.0f ns each\n",
		       cyc[0] / (WINDOW / PG), cyc[1] / (WINDOW / PG), cyc[2] / (WINDOW / PG));
	}
	return 0;
}
