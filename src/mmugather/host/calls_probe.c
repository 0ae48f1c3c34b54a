/*
 * The short-call probe of `mmugather calibrate` (host/calibrate.py compiles it with cc and runs it): one
 * thread pinned to CPU 0 (SCHED_FIFO where permitted). Each call is timed by a pair of
 * clock_gettime(CLOCK_MONOTONIC) reads (the vDSO) around exactly the call; "empty" holds the same pair
 * around nothing, whose median calibrate.py subtracts from every per-call sample. In Python the timing
 * around a ctypes wrapper cost 0.6-1.5 us more than the ctypes call calibrate subtracted; here it is ~20 ns,
 * measured the same way.
 *   null        ns per getppid() (syscall(2): no libc cache), one sample per loop of NULL_CALLS;
 *   mmap, munmap, dontneed, mprotect
 *               SAMPLES calls each, back to back (caches warm, as in a loop), one 1-page call per sample:
 *               mmap of an anonymous page (not populated; unmapped after, untimed), and munmap,
 *               MADV_DONTNEED, mprotect to read-only of a page just written (THP off);
 *   write_fault, zero, read_fault
 *               per repeat on fresh anonymous memory of FAULT_PAGES pages (THP off), ns per page: a memset
 *               pass faulting every page less a second (hot) pass; the fastest of three hot passes (a 4 KiB
 *               memset: the clear_page() estimate); after MADV_DONTNEED, a memchr pass faulting every page
 *               (the zero page) less a hot one;
 *   shared_write_fault, private_write_fault, private_wp_copy
 *               per repeat, over a file of FAULT_PAGES pages in DIR already in the page cache, ns per page of
 *               a write pass less a hot pass: MAP_SHARED (written once, then MADV_DONTNEED), a fresh
 *               MAP_PRIVATE, and a fresh MAP_PRIVATE after a read pass (each write copies a mapped page);
 *   map_pages_1, map_pages_16
 *               per repeat over a MAP_PRIVATE file of FAULT_PAGES pages in DIR already in the page cache
 *               in 1-page folios (written through a MADV_RANDOM shared mapping: no readahead),
 *               ns per read fault (clock pair around each, averaged over the pass): each page read once with
 *               its PTE none after a 1-page MADV_DONTNEED (untimed), every other page of its fault-around
 *               window mapped by a read pass before: in 1-page VMAs (the window clamped to the VMA: 1 folio
 *               walked, 1 mapped), and in one 16-page-aligned VMA (16 folios walked, 1 mapped);
 *   pmd_read, pmd_wp_write, pmd_split, pmd_write
 *               over the 2 MiB ranges of a MAP_SHARED 128 MiB file in DIR written once in order whose read
 *               fault maps one PMD (FilePmdMapped of /proc/self/smaps grows by 2 MiB: a PMD-sized folio),
 *               PMD_CYCLES cycles per range and repeat on one range at a time, the first not kept: a 1-byte
 *               read with the PMD none, a 1-byte write to that read-only PMD, a 1-page MADV_DONTNEED of the
 *               range's first page (splits the PMD), a 1-byte write with the PMD none, then an untimed
 *               MADV_DONTNEED. Fewer than MIN_PMD_RANGES such ranges (tmpfs, THP off): no samples.
 * Prints one JSON object of those sample lists (ns) and "pmd_ranges".
 * Usage: calls_probe DIR SAMPLES REPEATS
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "cprobe.h"
#include "smaps.h"

#define PG 4096L
#define NULL_CALLS 200
#define FAULT_PAGES 4096L
#define PMD (2L << 20)
#define PMD_FILE (128L << 20)
#define PMD_CYCLES 8
#define PMD_REPEATS 3
#define MIN_PMD_RANGES 4

static volatile long sink;

static char *map(long size, int flags, int fd)
{
	char *p = mmap(NULL, size, PROT_READ | PROT_WRITE, flags, fd, 0);
	if (p == MAP_FAILED)
		die("mmap");
	return p;
}

static char *anon(long size)
{
	char *p = map(size, MAP_PRIVATE | MAP_ANONYMOUS, -1);
	madvise(p, size, MADV_NOHUGEPAGE);
	return p;
}

static void empty_and_null(long samples, long repeats)
{
	double *e = calloc(samples, sizeof(double)), *n = calloc(repeats, sizeof(double));
	for (long i = 0; i < samples; i++) {
		long t0 = now();
		e[i] = now() - t0;
	}
	for (long r = 0; r < repeats; r++) {
		long t0 = now();
		for (int i = 0; i < NULL_CALLS; i++)
			syscall(SYS_getppid);
		n[r] = (double)(now() - t0) / NULL_CALLS;
	}
	print_samples("empty", e, samples);
	print_samples("null", n, repeats);
	free(e);
	free(n);
}

enum call { MMAP, MUNMAP, DONTNEED, MPROTECT };

static void one_page_calls(enum call c, const char *name, long samples)
{
	double *v = calloc(samples, sizeof(double));
	for (long i = 0; i < samples; i++) {
		char *p = NULL;
		long t0, t1;
		if (c != MMAP) {
			p = anon(PG);
			p[0] = 1;
		}
		t0 = now();
		if (c == MMAP)
			p = mmap(NULL, PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		else if (c == MUNMAP)
			munmap(p, PG);
		else if (c == DONTNEED)
			madvise(p, PG, MADV_DONTNEED);
		else
			mprotect(p, PG, PROT_READ);
		t1 = now();
		if (c != MUNMAP)
			munmap(p, PG);
		v[i] = t1 - t0;
	}
	print_samples(name, v, samples);
	free(v);
}

static double write_pass(char *p, long size)
{
	long t0 = now();
	memset(p, 1, size);
	return (double)(now() - t0) / (size / PG);
}

static double read_pass(char *p, long size)
{
	long t0 = now();
	sink = (long)memchr(p, 2, size);
	return (double)(now() - t0) / (size / PG);
}

static double min3(double a, double b, double c)
{
	return a < b ? (a < c ? a : c) : (b < c ? b : c);
}

static void anon_faults(long repeats)
{
	long size = FAULT_PAGES * PG;
	double *w = calloc(repeats, sizeof(double)), *z = calloc(repeats, sizeof(double));
	double *r = calloc(repeats, sizeof(double));
	for (long i = 0; i < repeats; i++) {
		char *p = anon(size);
		double first = write_pass(p, size), second = write_pass(p, size);
		w[i] = first - second;
		z[i] = min3(second, write_pass(p, size), write_pass(p, size));
		madvise(p, size, MADV_DONTNEED);
		first = read_pass(p, size);
		r[i] = first - read_pass(p, size);
		munmap(p, size);
	}
	print_samples("write_fault", w, repeats);
	print_samples("zero", z, repeats);
	print_samples("read_fault", r, repeats);
}

static int temp_file(const char *dir, long size)
{
	char path[4096];
	snprintf(path, sizeof(path), "%s/calls_probe.XXXXXX", dir);
	int fd = mkstemp(path);
	if (fd < 0)
		die("mkstemp");
	unlink(path);
	if (ftruncate(fd, size))
		die("ftruncate");
	return fd;
}

static void file_faults(const char *dir, long repeats)
{
	long size = FAULT_PAGES * PG;
	int fd = temp_file(dir, size);
	double *out[3];
	for (int k = 0; k < 3; k++)
		out[k] = calloc(repeats, sizeof(double));
	for (long i = 0; i < repeats; i++) {
		for (int k = 0; k < 2; k++) {
			char *p = map(size, k ? MAP_PRIVATE : MAP_SHARED, fd);
			if (!k) {
				memset(p, 1, size);
				madvise(p, size, MADV_DONTNEED);
			}
			double first = write_pass(p, size);
			out[k][i] = first - write_pass(p, size);
			munmap(p, size);
		}
		char *p = map(size, MAP_PRIVATE, fd);
		read_pass(p, size);
		double first = write_pass(p, size);
		out[2][i] = first - write_pass(p, size);
		munmap(p, size);
	}
	close(fd);
	print_samples("shared_write_fault", out[0], repeats);
	print_samples("private_write_fault", out[1], repeats);
	print_samples("private_wp_copy", out[2], repeats);
}

/* ns per read fault, averaged over `pages` pages read in VMAs of `win` pages each at file offset 0 on */
static double read_after_dontneed(int fd, long pages, long win)
{
	double total = 0;
	for (long off = 0; off < pages; off += win) {
		char *p = mmap(NULL, win * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, off * PG);
		if (p == MAP_FAILED)
			die("mmap");
		for (long i = 0; i < win; i++)
			sink = p[i * PG];
		for (long i = 0; i < win; i++) {
			madvise(p + i * PG, PG, MADV_DONTNEED);
			long t0 = now();
			sink = *(volatile char *)(p + i * PG);
			total += now() - t0;
		}
		munmap(p, win * PG);
	}
	return total / pages;
}

static void fault_around(const char *dir, long repeats)
{
	int fd = temp_file(dir, FAULT_PAGES * PG);
	char *w = map(FAULT_PAGES * PG, MAP_SHARED, fd);
	double *one = calloc(repeats, sizeof(double)), *all = calloc(repeats, sizeof(double));
	madvise(w, FAULT_PAGES * PG, MADV_RANDOM); /* no readahead: 1-page folios, as the model's file */
	memset(w, 0, FAULT_PAGES * PG);            /* in the page cache */
	munmap(w, FAULT_PAGES * PG);
	for (long i = 0; i < repeats; i++) {
		one[i] = read_after_dontneed(fd, FAULT_PAGES, 1);
		all[i] = read_after_dontneed(fd, FAULT_PAGES, 16);
	}
	close(fd);
	print_samples("map_pages_1", one, repeats);
	print_samples("map_pages_16", all, repeats);
	free(one);
	free(all);
}

static void pmd_faults(const char *dir)
{
	int fd = temp_file(dir, PMD_FILE);
	char *p = map(PMD_FILE, MAP_SHARED, fd), *ranges[PMD_FILE / PMD];
	long n = 0, k = 0, max = PMD_REPEATS * (PMD_FILE / PMD) * (PMD_CYCLES - 1);
	double *v[4];
	const char *names[4] = { "pmd_read", "pmd_wp_write", "pmd_split", "pmd_write" };
	memset(p, 1, PMD_FILE);
	madvise(p, PMD_FILE, MADV_DONTNEED);
	for (char *r = p; r < p + PMD_FILE; r += PMD) {
		long before = file_pmd_mapped_kb(p);
		sink = *(volatile char *)r;
		if (file_pmd_mapped_kb(p) - before == PMD >> 10)
			ranges[n++] = r;
	}
	madvise(p, PMD_FILE, MADV_DONTNEED);
	for (int j = 0; j < 4; j++)
		v[j] = calloc(max, sizeof(double));
	for (int rep = 0; n >= MIN_PMD_RANGES && rep < PMD_REPEATS; rep++)
		for (long i = 0; i < n; i++)
			for (int c = 0; c < PMD_CYCLES; c++) {
				volatile char *r = ranges[i];
				long t[5];
				t[0] = now();
				sink = *r;
				t[1] = now();
				*r = 1;
				t[2] = now();
				madvise(ranges[i], PG, MADV_DONTNEED);
				t[3] = now();
				*r = 1;
				t[4] = now();
				madvise(ranges[i], PG, MADV_DONTNEED);
				for (int j = 0; c && j < 4; j++)
					v[j][k] = t[j + 1] - t[j];
				k += c != 0;
			}
	munmap(p, PMD_FILE);
	close(fd);
	for (int j = 0; j < 4; j++)
		print_samples(names[j], v[j], k);
	printf("\"pmd_ranges\": %ld}\n", n);
}

int main(int argc, char **argv)
{
	long samples, repeats;
	if (argc != 4 || (samples = atol(argv[2])) < 1 || (repeats = atol(argv[3])) < 1) {
		fprintf(stderr, "usage: calls_probe DIR SAMPLES REPEATS\n");
		return 2;
	}
	pin_fifo(0);
	printf("{");
	empty_and_null(samples, repeats);
	one_page_calls(MMAP, "mmap", samples);
	one_page_calls(MUNMAP, "munmap", samples);
	one_page_calls(DONTNEED, "dontneed", samples);
	one_page_calls(MPROTECT, "mprotect", samples);
	anon_faults(repeats);
	file_faults(argv[1], repeats);
	fault_around(argv[1], repeats);
	pmd_faults(argv[1]);
	return 0;
}
