"""What a run measured: counters, per-CPU IPI counts and interval distributions, and their summary."""
from __future__ import annotations

import math
from array import array

import numpy as np


class Metrics:
    """Accumulates during a run; `summary()` gives the JSON-ready `metrics` object of the CLI."""

    def __init__(self, ncpus: int) -> None:
        self.tlb_flushes = 0
        self.ipis_sent = 0
        self.ipis_by_cpu = [0] * ncpus
        self.pages_unmapped = 0
        self.pages_freed = 0
        self.page_tables_freed = 0
        self.page_tables_reclaimed = 0
        self.lock_breaks = 0
        self.flushes_under_pte_lock = 0
        self.frees_under_pte_lock = 0
        self.pte_lock_hold = array("q")
        self.preempt_off = array("q")
        self.sched_latency = array("q")
        self.pages_per_flush = array("q")
        self.gather_memory_bytes = 0
        self.gather_memory_now = 0
        self.segv = 0
        self.rcu_callbacks = 0
        self.faults = 0
        self.syscall_ns = array("q")    # entry to return of each system call a user thread made
        self.loop_iterations = 0        # iterations of `loop` ops marked `count`, all tasks together
        self.design_events: dict[str, int] = {}   # Engine.note(): events a design names, by name

    def gather_memory(self, delta: int) -> None:
        """Account memory held by gathers (batch pages, per-CPU or on-stack structures); track the peak."""
        self.gather_memory_now += delta
        if self.gather_memory_now > self.gather_memory_bytes:
            self.gather_memory_bytes = self.gather_memory_now

    def summary(self, *, sim_time_ns: int, nowait_attempts: int, nowait_failures: int, violations: list) -> dict:
        return {
            "tlb_flushes": self.tlb_flushes,
            "ipis_sent": self.ipis_sent,
            "ipis_by_cpu": list(self.ipis_by_cpu),
            "pages_unmapped": self.pages_unmapped,
            "pages_freed": self.pages_freed,
            "page_tables_freed": self.page_tables_freed,
            "page_tables_reclaimed": self.page_tables_reclaimed,
            "i_mmap_lock_breaks": self.lock_breaks,
            "rcu_callbacks": self.rcu_callbacks,
            "flushes_under_pte_lock": self.flushes_under_pte_lock,
            "frees_under_pte_lock": self.frees_under_pte_lock,
            "pte_lock_hold_ns": _dist(self.pte_lock_hold, ("max", "p50", "p99")),
            "preempt_off_ns": _dist(self.preempt_off, ("max", "p99")),
            "sched_latency_ns": _dist(self.sched_latency, ("max", "p99")),
            "pages_per_flush": _dist(self.pages_per_flush, ("max", "p50")),
            "batch_alloc_attempts": nowait_attempts,
            "batch_alloc_failures": nowait_failures,
            "gather_memory_bytes": self.gather_memory_bytes,
            "page_faults": self.faults,
            "syscall_ns": _dist(self.syscall_ns, ("max", "p50")),
            "loop_iterations": self.loop_iterations,
            "segv": self.segv,
            "sim_time_ns": sim_time_ns,
            "violations": violations,
            # only when a design noted events (Engine.note), so the metrics of the kernels keep their keys
            **({"design_events": dict(sorted(self.design_events.items()))} if self.design_events else {}),
        }


def _dist(values: array, keys: tuple[str, ...]) -> dict:
    """max and percentiles (nearest-rank, so every value is one that was observed) of an interval list."""
    if not values:
        return {k: 0 for k in keys}
    # (a short list sorts faster in Python than numpy's fixed cost per call)
    a = sorted(values) if len(values) <= _SORT_IN_PYTHON else np.sort(np.frombuffer(values, dtype=np.int64))
    out = {}
    for k in keys:
        if k == "max":
            out[k] = int(a[-1])
        else:
            q = int(k[1:]) / 100
            out[k] = int(a[max(0, math.ceil(q * len(a)) - 1)])
    return out


_SORT_IN_PYTHON = 64        # _dist(): up to this many values, sorted() instead of np.sort()
