/*
 * The FilePmdMapped reader shared by host/calls_probe.c (shipped, compiled by calibrate) and
 * benchmarks/wis_flush3_probe.c (which includes it from here).
 */
#ifndef MMUGATHER_SMAPS_H
#define MMUGATHER_SMAPS_H
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* FilePmdMapped (kB) of the mapping starting at p (/proc/self/smaps; -1 if absent) */
static long file_pmd_mapped_kb(const char *p)
{
	char want[32], line[512];
	long kb = -1;
	int inside = 0;
	FILE *f = fopen("/proc/self/smaps", "r");
	snprintf(want, sizeof(want), "%lx-", (unsigned long)p);
	while (f && fgets(line, sizeof(line), f)) {
		char *sp = strchr(line, ' ');
		if (sp && memchr(line, '-', sp - line))
			inside = !strncmp(line, want, strlen(want));
		else if (inside && !strncmp(line, "FilePmdMapped:", 14))
			kb = atol(line + 14);
	}
	if (f)
		fclose(f);
	return kb;
}
#endif
