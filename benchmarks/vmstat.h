/*
 * The /proc/vmstat reader of the benchmarks' C probes (wis_flush1_probe.c, wis_flush3_probe.c): a probe
 * defines COUNTERS (the counter names) and NCOUNTERS, then includes this file.
 */
#ifndef VMSTAT_H
#define VMSTAT_H
#include <stdio.h>
#include <string.h>

/* out[i] = the current value of COUNTERS[i] in /proc/vmstat, or -1 where the kernel has no such counter. */
static void vmstat(long *out)
{
	char name[64];
	long value;
	FILE *f = fopen("/proc/vmstat", "r");

	for (int i = 0; i < NCOUNTERS; i++)
		out[i] = -1;
	while (f && fscanf(f, "%63s %ld", name, &value) == 2)
		for (int i = 0; i < NCOUNTERS; i++)
			if (strcmp(name, COUNTERS[i]) == 0)
				out[i] = value;
	if (f)
		fclose(f);
}
#endif
