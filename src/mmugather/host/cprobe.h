/*
 * What the host probes of `mmugather calibrate` share (calls_probe.c, shootdown_probe.c; host/calibrate.py
 * compiles each with cc, which finds this header beside the source): the clock, the exit on a failed call,
 * pinning to a CPU, the printer of one JSON sample list, and the TLB shootdown counts of CPUs 0 and 1.
 */
#ifndef MMUGATHER_CPROBE_H
#define MMUGATHER_CPROBE_H
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* CLOCK_MONOTONIC in ns (the vDSO: no system call). */
static inline long now(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec * 1000000000L + t.tv_nsec;
}

static inline void die(const char *what)
{
	perror(what);
	exit(1);
}

/* Pin the calling thread to `cpu`, SCHED_FIFO where permitted. */
static inline void pin_fifo(int cpu)
{
	cpu_set_t s;
	struct sched_param p = { .sched_priority = 1 };
	CPU_ZERO(&s);
	CPU_SET(cpu, &s);
	if (sched_setaffinity(0, sizeof(s), &s))
		die("sched_setaffinity");
	sched_setscheduler(0, SCHED_FIFO, &p); /* where permitted */
}

/* `"name": [v0,v1,...], ` (ns, one decimal): one member of the probe's JSON object, more to follow. */
static inline void print_samples(const char *name, const double *v, long n)
{
	printf("\"%s\": [", name);
	for (long i = 0; i < n; i++)
		printf(i ? ",%.1f" : "%.1f", v[i]);
	printf("], ");
}
/* /proc/interrupts' TLB row (x86: TLB shootdowns taken) for CPUs 0 and 1; -1 when absent. */
static inline void tlb_row(long out[2])
{
	char line[1 << 12];
	FILE *f = fopen("/proc/interrupts", "r");
	out[0] = out[1] = -1;
	while (f && fgets(line, sizeof(line), f))
		if (strstr(line, "TLB:")) {
			sscanf(strchr(line, ':') + 1, "%ld %ld", &out[0], &out[1]);
			break;
		}
	if (f)
		fclose(f);
}

#endif
