/*
 * Where tlb_flush1's iteration goes on the host (docs/host.md, issue 22): will-it-scale's tlb_flush1 loop
 * (write a page of a MAP_PRIVATE mapping of a cached 128 MiB file, MADV_DONTNEED it, read it back) run
 * whole, then again with each of its three steps timed apart, with what the kernel did per iteration from
 * /proc/vmstat around the loop (system-wide counters: run it on an otherwise idle machine). In 6.18 the
 * first write in each 16-page fault-around window finds a none PTE (do_cow_fault()); the read after the
 * MADV_DONTNEED is do_read_fault() -> do_fault_around() -> filemap_map_pages(), which maps the window's
 * none PTEs read-only (the whole window the first time, then only the page just zapped), so every later
 * write is a write-protect fault on a file page (do_wp_page() -> wp_page_copy()).
 * Then the read fault alone, two ways, on MAP_PRIVATE mappings of the same file (MADV_DONTNEED of the one
 * page, then the read): in one 128 MiB VMA with the 15 other PTEs of its window mapped (filemap_map_pages()
 * walks 16 folios, maps 1), and in 1-page VMAs (do_fault_around() clamps the window to the VMA: 1 folio).
 * (MADV_RANDOM would not do for the second: 6.18's should_fault_around() does not look at VM_RAND_READ.)
 * Last, the first of the two in VMAs of 16, 128, 1024 and 8192 pages over the same file (a read pass over
 * the VMA, then MADV_DONTNEED + timed read of each page): how much the caches the read pass left matter.
 *
 * Usage: cc -O2 -o wis_flush1_probe benchmarks/wis_flush1_probe.c && ./wis_flush1_probe [DIR] [PASSES]
 * Not part of the package; prints ns per page, CPU 0 (repeat it: the host is shared).
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define PG 4096L
#define SIZE (128L << 20)
#define PAGES (SIZE / PG)

static const char *const COUNTERS[] = {"pgfault", "pgmajfault", "pgalloc_normal", "pgfree", "thp_fault_alloc"};
#define NCOUNTERS 5

#include "vmstat.h"

static double now(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec * 1e9 + t.tv_nsec;
}

static double empty_pair(void)
{
	double best = 1e9;
	for (int i = 0; i < 1000; i++) {
		double t0 = now(), t1 = now();
		if (t1 - t0 < best)
			best = t1 - t0;
	}
	return best;
}

static char *map_private(int fd)
{
	char *a = mmap(NULL, SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
	if (a == MAP_FAILED)
		exit(1);
	return a;
}

int main(int argc, char **argv)
{
	char path[256];
	cpu_set_t set;
	int passes = argc > 2 ? atoi(argv[2]) : 3;
	volatile char x;

	CPU_ZERO(&set);
	CPU_SET(0, &set);
	sched_setaffinity(0, sizeof(set), &set);
	snprintf(path, sizeof(path), "%s/wis_flush1_probe.XXXXXX", argc > 1 ? argv[1] : "/tmp");
	int fd = mkstemp(path);
	if (fd < 0 || ftruncate(fd, SIZE) != 0)
		return 1;
	unlink(path);
	char *w = mmap(NULL, SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	memset(w, 0, SIZE); /* cached whole, as after will-it-scale's warm-up */
	munmap(w, SIZE);
	printf("empty clock pair %.0f ns (not subtracted)\n", empty_pair());
	for (int p = 0; p < passes; p++) {
		long before[NCOUNTERS], after[NCOUNTERS];
		char *a = map_private(fd);
		vmstat(before);
		double t0 = now();
		for (long i = 0; i < SIZE; i += PG) {
			a[i] = 1;
			madvise(a + i, PG, MADV_DONTNEED);
			x = a[i];
		}
		double t1 = now();
		vmstat(after);
		munmap(a, SIZE);
		printf("pass %d: tlb_flush1 loop %6.0f ns/iteration;", p, (t1 - t0) / PAGES);
		for (int i = 0; i < NCOUNTERS; i++)
			printf(" %s %.3f", COUNTERS[i], (double)(after[i] - before[i]) / PAGES);
		printf(" per iteration\n");

		/* the same loop, steps timed apart; the first page of each 16-page window apart from the others */
		double s[2][3] = {{0}}, n[2] = {0};
		a = map_private(fd);
		for (long i = 0; i < SIZE; i += PG) {
			int first = (i / PG) % 16 == 0;
			double s0 = now();
			a[i] = 1;
			double s1 = now();
			madvise(a + i, PG, MADV_DONTNEED);
			double s2 = now();
			x = a[i];
			double s3 = now();
			s[first][0] += s1 - s0, s[first][1] += s2 - s1, s[first][2] += s3 - s2, n[first]++;
		}
		munmap(a, SIZE);
		for (int f = 1; f >= 0; f--)
			printf("  %s: write %6.0f, madvise %6.0f, read %6.0f ns/iteration (%.0f)\n",
			       f ? "first page of a window " : "other 15 of each window", s[f][0] / n[f], s[f][1] / n[f],
			       s[f][2] / n[f], n[f]);

		/* the read fault alone: 15 others of the window mapped (fault-around walks 16), then a window of 1 */
		double r = 0;
		a = map_private(fd);
		for (long i = 0; i < SIZE; i += PG)
			x = a[i];
		for (long i = 0; i < SIZE; i += PG) {
			madvise(a + i, PG, MADV_DONTNEED);
			double s0 = now();
			x = a[i];
			r += now() - s0;
		}
		munmap(a, SIZE);
		printf("  read fault of a file page, PTE none, its window's 15 others mapped: %6.0f ns\n", r / PAGES);
		r = 0;
		for (long i = 0; i < SIZE; i += 16 * PG) { /* every 16th page: 2,048 1-page VMAs */
			char *b = mmap(NULL, PG, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, i);
			if (b == MAP_FAILED)
				return 1;
			x = b[0];
			madvise(b, PG, MADV_DONTNEED);
			double s0 = now();
			x = b[0];
			r += now() - s0;
			munmap(b, PG);
		}
		printf("  read fault of a file page, PTE none, in a 1-page VMA (window of 1): %6.0f ns\n", r / (PAGES / 16));
		printf("  the same, window's 15 others mapped, by VMA size:");
		for (long pages = 16; pages <= 8192; pages *= 8) {
			r = 0;
			for (long off = 0; off < PAGES; off += pages) {
				char *b = mmap(NULL, pages * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, off * PG);
				if (b == MAP_FAILED)
					return 1;
				for (long i = 0; i < pages; i++)
					x = b[i * PG];
				for (long i = 0; i < pages; i++) {
					madvise(b + i * PG, PG, MADV_DONTNEED);
					double s0 = now();
					x = b[i * PG];
					r += now() - s0;
				}
				munmap(b, pages * PG);
			}
			printf(" %ld pages %.0f ns;", pages, r / PAGES);
		}
		printf("\n");
	}
	(void)x;
	return 0;
}
