"""will-it-scale's TLB-flush microbenchmarks as built-in workloads: `wis:TEST:MODE:N[:MS]`, or
`wis:TEST:MODE:N:Pp` for P whole passes (P = 1-9: each task maps, walks and unmaps its region P times).

Modelled line by line on will-it-scale (github.com/antonblanchard/will-it-scale) tests/tlb_flush1.c,
tlb_flush2.c and tlb_flush3.c, and on main.c's two harness modes: "threads" (N threads of one process,
task i pinned to CPU i) and "processes" (N processes, one thread each, process i on CPU i). Each task
runs the test's testcase():

    while (1) {                                          loop (duration_ns = MS ms)
        addr = mmap(NULL, SIZE, PROT_READ|PROT_WRITE,      mmap
                    FLAGS, fd, 0);
        for (i = 0; i < SIZE; i += pgsize) {               loop (times = SIZE / 4 KiB, stride 4 KiB, count)
            *(addr + i) = 1;                                 touch, write
            madvise(addr + i, pgsize, MADV_DONTNEED);        madvise dontneed, one page
            assert(*(addr + i) == 0 or 1);                   touch, read
            (*iteration)++;                                  (the loop's count)
        }
        munmap(addr, SIZE);                                munmap
    }

tlb_flush1: a private mapping (MAP_PRIVATE) of the task's own 128 MiB file (the write makes a private
copy; after MADV_DONTNEED the read sees the file's zero again); tlb_flush2: 1 MiB of anonymous memory
(MAP_ANONYMOUS | MAP_PRIVATE); tlb_flush3: a shared mapping (MAP_SHARED) of the task's own 128 MiB file
(the read finds the 1 it wrote, in the page cache). will-it-scale reports iterations per second of all
tasks together; `ops_per_s` is metrics.loop_iterations over the MS ms the tasks run (default 20), and
`ops_per_s_over_run` the iterations of P passes over the simulated time they took. The file
tests start with the file cached whole and fault around 16 pages (machine.fault_around_pages), as the
host's 6.18 kernel runs them after will-it-scale's warm-up (docs/host.md). tlb_flush3's file holds its pages
from 40 MiB on in PMD-sized folios (`pmd_folios_from`), as ext4's readahead left the host's (/proc/kpageflags
of a 128 MiB file written once in order, Linux 6.18 ext4, read_ahead_kb 8192: 2,048 folios of 1 page, 512
of 4, 128 of 16, 32 of 64, 8 of 256, then 44 of 512 pages from 40 MiB on), so its shared mapping maps them
by PMDs (mm/huge_memory.py); the smaller large folios below 40 MiB are 1-page folios in the model.
tlb_flush1's private mapping never maps a PMD (its first access in each 2 MiB is a write, a copy mapped by
a PTE), so its file keeps 1-page folios.
"""
from __future__ import annotations

from mmugather.errors import InputError

PMD_FOLIOS_FROM = 40 << 20     # tlb_flush3's file: PMD-sized folios from here on (the module docstring)
TESTS = {
    # test: (mapping size, file-backed, shared, what will-it-scale calls it)
    "tlb_flush1": (128 << 20, True, False, "TLB flush of separated file private mapping"),
    "tlb_flush2": (1 << 20, False, False, "TLB flush of anonymous memory private mapping"),
    "tlb_flush3": (128 << 20, True, True, "TLB flush of separated file shared mapping"),
}
MODES = ("threads", "processes")
DEFAULT_MS = 20
MAX_TASKS = 64
MAX_MS = 10_000
MAX_PASSES = 9


def _testcase(test: str, vma: str, file: str | None, bound: dict, first_page: int = 0) -> list[dict]:
    """The program of one task: testcase() of tests/TEST.c as scenario ops, its endless loop bounded by
    `bound` ({"duration_ns": ...} or {"times": passes}); each pass walks the pages from `first_page` on."""
    size, file_backed, shared, _ = TESTS[test]
    spec = {"name": vma, "size": size, "shared": shared}
    if file_backed:
        spec.update(kind="file", file=file)
    page = {"vma": vma, "size": 4096, **({"offset": first_page * 4096} if first_page else {})}
    return [{"op": "loop", **bound, "body": [
        {"op": "mmap", "vma": spec},
        {"op": "loop", "times": size // 4096 - first_page, "stride": 4096, "count": True, "body": [
            {"op": "touch", "write": True, **page},
            {"op": "madvise", "advice": "dontneed", **page},
            {"op": "touch", "write": False, **page},
        ]},
        {"op": "munmap", "vma": vma},
    ]}]


def wis_workload(name: str, phase: int = 0) -> dict:
    """The scenario dict of `wis:TEST:MODE:N[:MS]` or `wis:TEST:MODE:N:Pp` (InputError naming the bad
    field). With `phase` K (0-15), task i walks its mapping from page (i * K) % 16 on, so that neighbouring
    tasks' 16-page fault-around windows stand K pages apart: the model's tasks start together and, timed
    alike, keep the phase they start with, while the host's drift through all 16 (docs/host.md, "tlb_flush1
    threads:2 taken apart"); benchmarks/wis_host.py --phases averages over them."""
    if not 0 <= phase < 16:
        raise InputError(f"workload '{name}': phase {phase} is not a page offset from 0 to 15")
    parts = name.split(":")
    if len(parts) not in (4, 5) or parts[0] != "wis":
        raise InputError(f"workload '{name}': expected wis:TEST:MODE:N[:MS] or wis:TEST:MODE:N:Pp, e.g. "
                         f"wis:tlb_flush2:threads:2")
    test, mode, n = parts[1], parts[2], parts[3]
    ms = parts[4] if len(parts) == 5 else str(DEFAULT_MS)
    if test not in TESTS:
        raise InputError(f"workload '{name}': TEST must be one of {', '.join(TESTS)}")
    if mode not in MODES:
        raise InputError(f"workload '{name}': MODE must be threads or processes")
    if not n.isdigit() or not 1 <= int(n) <= MAX_TASKS:
        raise InputError(f"workload '{name}': N must be a task count from 1 to {MAX_TASKS}")
    if ms.endswith("p"):
        if not ms[:-1].isdigit() or not 1 <= int(ms[:-1]) <= MAX_PASSES:
            raise InputError(f"workload '{name}': Pp must be a number of whole passes from 1p to {MAX_PASSES}p")
        bound, span = {"times": int(ms[:-1])}, f"{ms[:-1]} pass(es)"
    elif not ms.isdigit() or not 1 <= int(ms) <= MAX_MS:
        raise InputError(f"workload '{name}': MS must be a simulated run time from 1 to {MAX_MS} ms")
    else:
        bound, span = {"duration_ns": int(ms) * 1_000_000}, f"{ms} ms"
    tasks = int(n)
    file_backed = TESTS[test][1]
    # A file test's file is in the page cache whole once the host's 1 s warm-up has run (every pass maps
    # and touches all of it), and the 6.18 kernel maps 16 cached pages around each read fault
    # (fault_around_bytes 64 KiB, do_fault_around()): so the model's file starts cached and faults around.
    huge = {"pmd_folios_from": PMD_FOLIOS_FROM} if test == "tlb_flush3" else {}
    files = [{"name": f"willitscale.{i}", "cached": TESTS[test][0], **huge}
             for i in range(tasks)] if file_backed else []
    around = {"fault_around_pages": 16} if file_backed else {}
    if mode == "threads":
        threads = [{"cpu": i, "program": _testcase(test, f"addr{i}", f"willitscale.{i}" if file_backed else None,
                                                   bound, i * phase % 16)} for i in range(tasks)]
        process = [{"name": "wis", "thread": threads}]
    else:
        process = [{"name": f"wis{i}", "thread": [{"cpu": i, "program": _testcase(
            test, "addr", f"willitscale.{i}" if file_backed else None, bound, i * phase % 16)}]}
            for i in range(tasks)]
    return {"name": name, "description": f"will-it-scale {test} ({TESTS[test][3]}), {tasks} {mode}, {span}",
            "seed": 1, "machine": {"cpus": tasks, "preempt": "voluntary", "latency_task": False, **around},
            "files": files, "process": process}


def counted_window_ns(scenario) -> int | None:
    """The run time over which counted loop iterations are measured: the tightest duration_ns enclosing a
    counted loop (the longest such over all threads), or None when no counted loop is time-bounded."""
    from mmugather.workloads.scenario import LoopOp

    def windows(ops, bound):
        for op in ops:
            if isinstance(op, LoopOp):
                b = min(x for x in (bound, op.duration_ns) if x is not None) if (bound or op.duration_ns) else None
                if op.count and b is not None:
                    yield b
                yield from windows(op.body, b)

    found = [w for p in scenario.process for t in p.thread for w in windows(t.program, None)]
    return max(found) if found else None


def ops_per_s(scenario, metrics: dict) -> float | None:
    """Counted loop iterations per simulated second, all tasks together (None if nothing is counted)."""
    window = counted_window_ns(scenario)
    return None if window is None else metrics["loop_iterations"] * 1e9 / window


def ops_per_s_over_run(metrics: dict) -> float | None:
    """Counted loop iterations per simulated second of the whole run (for `wis:...:Pp`, whose loops are
    bounded by passes, not time; the run's end includes each task's exit), None if nothing ran."""
    if not metrics["loop_iterations"] or not metrics["sim_time_ns"]:
        return None
    return metrics["loop_iterations"] * 1e9 / metrics["sim_time_ns"]
