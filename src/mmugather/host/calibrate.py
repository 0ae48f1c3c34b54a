"""Host timings for calibrating and benchmarking the simulator against the real kernel.

Each measurement runs in a fresh child pinned to CPU 0 (see worker.py), so "single-threaded" really means
no other CPU is in the mm's cpumask. Timings are time.perf_counter_ns around the one syscall.
"""
from __future__ import annotations

import statistics
import time

from mmugather.host import syscalls as sc
from mmugather.host.worker import SecondThread, run_worker

_MUNMAP_BYTES = 256 << 20
_RATE_BYTES = 1 << 30
_ONE_PAGE_SAMPLES = 201


def _touched(size: int) -> int:
    addr = sc.mmap(size)
    sc.madvise(addr, size, sc.MADV_NOHUGEPAGE)
    sc.touch(addr, size)
    return addr


def _timed_munmap(addr: int, size: int) -> int:
    t0 = time.perf_counter_ns()
    sc.munmap(addr, size)
    return time.perf_counter_ns() - t0


def _munmap_ns(job: dict) -> dict:
    """Worker job: ns of munmap of `bytes` of touched 4 KiB pages, per run."""
    sc.pin(0)
    return {"ns": [_timed_munmap(_touched(job["bytes"]), job["bytes"]) for _ in range(job["runs"])]}


def _one_page(job: dict) -> dict:
    """Worker job: ns of 1-page munmaps with no other thread, then with thread B running on CPU 1."""
    sc.pin(0)
    alone = [_timed_munmap(_touched(sc.PAGE), sc.PAGE) for _ in range(job["samples"])]
    b = SecondThread("running")
    try:
        running = []
        while len(running) < job["samples"]:
            pages = [_touched(sc.PAGE) for _ in range(job["samples"] - len(running))]
            b.enter()
            got = []
            for addr in pages:
                if not b.inside():
                    break
                got.append(_timed_munmap(addr, sc.PAGE))
            valid = b.inside()
            b.leave()
            for addr in pages[len(got):]:
                sc.munmap(addr, sc.PAGE)
            running += got if valid else got[:-1]
    finally:
        b.stop()
    return {"alone": alone, "running": running}


JOBS = {"munmap_ns": _munmap_ns, "one_page": _one_page}


def calibrate(runs: int = 5, timeout: float = 120.0) -> dict:
    """Measure on this host: `munmap_ns_per_page` (zap + free of touched 4 KiB pages, 256 MiB region,
    single-threaded, median of `runs`), `munmap_1page_alone_ns`, `munmap_1page_running_ns` (medians, B
    running on CPU 1) and their difference `shootdown_round_trip_ns` (one-target IPI estimate).
    Raises WorkerError if a child fails or times out."""
    big = run_worker({"kind": "munmap_ns", "bytes": _MUNMAP_BYTES, "runs": runs}, timeout)
    one = run_worker({"kind": "one_page", "samples": _ONE_PAGE_SAMPLES}, timeout)
    alone, running = statistics.median(one["alone"]), statistics.median(one["running"])
    return {"munmap_ns_per_page": statistics.median(big["ns"]) / (_MUNMAP_BYTES // sc.PAGE),
            "munmap_1page_alone_ns": alone, "munmap_1page_running_ns": running,
            "shootdown_round_trip_ns": running - alone}


def host_kernel_pages_per_s(runs: int = 3, timeout: float = 120.0) -> float:
    """4 KiB pages per second that this host's kernel munmaps (touched, THP off, 1 GiB, median of `runs`)."""
    out = run_worker({"kind": "munmap_ns", "bytes": _RATE_BYTES, "runs": runs}, timeout)
    return (_RATE_BYTES // sc.PAGE) * 1e9 / statistics.median(out["ns"])
