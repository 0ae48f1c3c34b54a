"""will-it-scale's TLB-flush microbenchmarks as built-in workloads: `wis:TEST:MODE:N[:MS]`.

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
tasks together; `ops_per_s` is metrics.loop_iterations over the MS ms the tasks run (default 20). The file
tests start with the file cached whole and fault around 16 pages (machine.fault_around_pages), as the
host's 6.18 kernel runs them after will-it-scale's warm-up (docs/host.md).
"""
from __future__ import annotations

from mmugather.errors import InputError

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


def _testcase(test: str, vma: str, file: str | None, duration_ns: int) -> list[dict]:
    """The program of one task: testcase() of tests/TEST.c as scenario ops."""
    size, file_backed, shared, _ = TESTS[test]
    spec = {"name": vma, "size": size, "shared": shared}
    if file_backed:
        spec.update(kind="file", file=file)
    page = {"vma": vma, "size": 4096}
    return [{"op": "loop", "duration_ns": duration_ns, "body": [
        {"op": "mmap", "vma": spec},
        {"op": "loop", "times": size // 4096, "stride": 4096, "count": True, "body": [
            {"op": "touch", "write": True, **page},
            {"op": "madvise", "advice": "dontneed", **page},
            {"op": "touch", "write": False, **page},
        ]},
        {"op": "munmap", "vma": vma},
    ]}]


def wis_workload(name: str) -> dict:
    """The scenario dict of `wis:TEST:MODE:N[:MS]` (InputError naming the bad field)."""
    parts = name.split(":")
    if len(parts) not in (4, 5) or parts[0] != "wis":
        raise InputError(f"workload '{name}': expected wis:TEST:MODE:N[:MS], e.g. wis:tlb_flush2:threads:2")
    test, mode, n = parts[1], parts[2], parts[3]
    ms = parts[4] if len(parts) == 5 else str(DEFAULT_MS)
    if test not in TESTS:
        raise InputError(f"workload '{name}': TEST must be one of {', '.join(TESTS)}")
    if mode not in MODES:
        raise InputError(f"workload '{name}': MODE must be threads or processes")
    if not n.isdigit() or not 1 <= int(n) <= MAX_TASKS:
        raise InputError(f"workload '{name}': N must be a task count from 1 to {MAX_TASKS}")
    if not ms.isdigit() or not 1 <= int(ms) <= MAX_MS:
        raise InputError(f"workload '{name}': MS must be a simulated run time from 1 to {MAX_MS} ms")
    tasks, duration = int(n), int(ms) * 1_000_000
    file_backed = TESTS[test][1]
    # A file test's file is in the page cache whole once the host's 1 s warm-up has run (every pass maps
    # and touches all of it), and the 6.18 kernel maps 16 cached pages around each read fault
    # (fault_around_bytes 64 KiB, do_fault_around()): so the model's file starts cached and faults around.
    files = [{"name": f"willitscale.{i}", "cached": TESTS[test][0]} for i in range(tasks)] if file_backed else []
    around = {"fault_around_pages": 16} if file_backed else {}
    if mode == "threads":
        threads = [{"cpu": i, "program": _testcase(test, f"addr{i}", f"willitscale.{i}" if file_backed else None,
                                                   duration)} for i in range(tasks)]
        process = [{"name": "wis", "thread": threads}]
    else:
        process = [{"name": f"wis{i}", "thread": [{"cpu": i, "program": _testcase(
            test, "addr", f"willitscale.{i}" if file_backed else None, duration)}]} for i in range(tasks)]
    return {"name": name, "description": f"will-it-scale {test} ({TESTS[test][3]}), {tasks} {mode}, {ms} ms",
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
