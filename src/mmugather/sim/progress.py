"""How far a running Simulation has come: a fraction of its work, for compare's progress bar
(cli/progress.py; in a worker, parallel.py publishes it).

A run's work is what ends it. Every process exits when its programs end (workloads/program.py
_do_exit(): exit_mm() unmaps all it still maps), so a run that starts with pages mapped ends once it has
unmapped them all: the measure is the kernel's own count of pages unmapped (metrics.pages_unmapped, kept
by zap_pte_range() and its PMD and bulk forms) against the resident pages (mm->rss) of every mm when
the run starts. A program with a top-level loop bounded by duration_ns (will-it-scale, `wis:`) runs at
least as long as its longest such loop: the measure is then the simulated time (engine.now) against that bound. Where
both apply, the smaller; where neither (nothing resident, no timed loop), 0 until the run ends.

Measured against wall time (the fraction sampled every 0.5 s of a lone run, against the share of the
run's wall time gone): on `default` it lags wall time by at most 0.34 (2.6.39), 0.32 (3.0), 0.21 (6.18):
about 0.5 done at 0.8 of the wall time, because munmap and MADV_DONTNEED run beside seven churning threads
that cost wall time per simulated ns, while exit_mmap's 1 GiB, the churners stopped, goes faster (the
simulated time against its end lags alike: it is no better). On `wis:tlb_flush2:threads:2` it is within
0.02 of wall time, on `wis:tlb_flush1:processes:4` (16 s) it leads by at most 0.08; `exit-8g` and the
shipped snapshots end within 0.1 s. Reading it costs a few attribute reads: the watcher thread reads it every
0.1 s without slowing the run.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from mmugather.workloads.scenario import LoopOp

if TYPE_CHECKING:
    from mmugather.sim.simulation import Simulation


class RunFraction:
    """Callable: the fraction of `sim`'s work done, in [0, 1), never falling between calls (1 is the
    caller's to say: the run has ended). Build it before sim.run() starts."""

    def __init__(self, sim: Simulation) -> None:
        self.sim = sim
        self.resident = sum(sum(mm.rss) for mm in sim.mms)
        self.unmapped0 = sim.metrics.pages_unmapped
        self.timed = max((op.duration_ns for p in sim.scenario.process for t in p.thread for op in t.program
                          if isinstance(op, LoopOp) and op.duration_ns is not None), default=0)
        self.best = 0.0

    def __call__(self) -> float:
        sim = self.sim
        parts = []
        if self.resident:
            parts.append((sim.metrics.pages_unmapped - self.unmapped0) / self.resident)
        if self.timed:
            parts.append(sim.engine.now / self.timed)
        now = min(0.99, max(0.0, min(parts, default=0.0)))
        self.best = max(self.best, now)
        return self.best
