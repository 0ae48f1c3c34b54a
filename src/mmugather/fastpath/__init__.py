"""The fast path: runs of teardown steps executed in one numpy pass, with exactly the effects, the metrics
and the simulated clock of running them one step at a time. The kernel model (mm/) does not know it
exists: its loops ask a backend, through the hooks of mm/protocols.py, for "the next run of steps you can
take at once"; this package holds the bulk backends, and `backends()` picks them when a Simulation is
built with `fast=True` (sim/simulation.py). The explorer and the tracer keep the step-by-step backend.

Why this is exact. The engine (machine/engine.py) runs one CPU's steps back to back until its clock reaches
`horizon`, the time of the next event on its queue; no other CPU acts in between. A step that starts
before the horizon runs whole, the engine stops after the first step that ends at or after it. So a
stretch of steps of one CPU that (a) all start before the horizon, (b) begin with no interrupt pending and
no reschedule asked (`attention` off: nothing to take between steps) and (c) take no lock another CPU
holds, interleaves with nothing: running it as one numpy pass and spending its summed cost in one yield
leaves the machine in the state the steps would have left it in, at the same simulated time. The last
step is yielded so that the engine stops after it exactly when it would have (an int when the last step
was a cost, `Elapse` when it was a handler that also moved the preemption point).

What is not reproduced: a PTE lock's `acquired_at` keeps its earlier value (the engine sets it when it
grants the lock and reads it only at the unlock that follows), and the clock is not advanced step by step
inside the pass (nothing reads it there).

Which steps a backend may replace. A bulk backend reproduces the stock code of one policy (`reference`:
Linux2639, Linux30, Linux618) and names, per hook, the kernel methods whose behaviour it reproduces. A
plugin policy may override any kernel method; `backends()` gives it the bulk hook only when it overrides
none of that hook's methods (`overridden()`, the one place this is decided), else the step-by-step one.

The modules:
- core.py: `zap_steps()` (a run of zap_pte_range()'s steps over one table; a run of present PTEs mapping
  consecutive frames going up, the common case of a small VMA, with a few numpy calls and no pfn array),
  `rmap_remove()`,
  `free_tables()` (free_pmd_range()'s free_pte_range() calls), `release_steps()`, `release_runs()`,
  `release_flat()` (free_pages_and_swap_cache() and the gathers' loops over batches), `TableRun`,
  `first_crossing()` (the engine's cut rule over units of steps). A pass over whole tables takes at most
  PASS_TABLES of them: its host memory (their pfns, read as int32 a few tables at a time, per-entry
  temporaries) stays bounded.
- backend.py: `BulkBackend`, what the versions share (the three hooks), `PagesRunner`.
- tables.py: zap_pmd_range() over runs of whole PTE tables for 3.0 and 6.18, the gather's batch changes
  included, and 6.18's forced flushes of a full gather when they involve no other CPU; from MIN_PASS PMD
  entries on (below, zap_steps()' runs per table cost less than a pass's set-up).
- v2_6_39.py, v3_0.py, v6_18.py: each version's gather seen from outside, and 2.6.39's own pass, which
  also crosses ZAP_BLOCK restarts and flushes from under the PTE lock. 3.0 holds the full batches a pass
  fills as one `BatchRecord` (their frames and pages at once), made into the kernel's Batch objects only
  when something else than the bulk backend reads their pages or links.
The allocator (PageAlloc.release_array, release_span, free_array) and the invariant checker
(on_free_array, on_free_each_array) have array forms of their per-frame work for these.

tests/test_fastpath.py checks that both paths agree on random workloads, and that the step path never
enters this package.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from mmugather.fastpath.backend import BulkBackend
from mmugather.fastpath.v2_6_39 import Bulk2639
from mmugather.fastpath.v3_0 import Bulk30
from mmugather.fastpath.v6_18 import Bulk618
from mmugather.mm.protocols import STEP_BY_STEP, ReleaseBackend, TableFreeBackend, ZapBackend

BULK_BACKENDS: tuple[type[BulkBackend], ...] = (Bulk2639, Bulk30, Bulk618)


@dataclass(frozen=True)
class Backends:
    """The backend of each hook a kernel uses (Kernel.use_backends)."""

    zap: ZapBackend
    tables: TableFreeBackend
    release: ReleaseBackend


STEP = Backends(STEP_BY_STEP, STEP_BY_STEP, STEP_BY_STEP)


def overridden(policy_cls: type, reference: type, methods: Iterable[str]) -> set[str]:
    """The kernel methods among `methods` that policy_cls (a subclass of the stock policy `reference`)
    does not take from it unchanged."""
    return {m for m in methods if getattr(policy_cls, m) is not getattr(reference, m)}


def backends(policy_cls: type, arch: Any) -> Backends:
    """The hooks a kernel of policy_cls on `arch` may use for speed: for each hook, the bulk backend of
    the stock policy policy_cls derives from when policy_cls overrides none of the methods it reproduces
    and it applies on this arch; else step by step."""
    for bulk_cls in BULK_BACKENDS:
        if issubclass(policy_cls, bulk_cls.reference):
            bulk = bulk_cls(arch)
            hooks = ((bulk.zap_on, bulk_cls.zap_reproduces), (bulk.tables_on, bulk_cls.tables_reproduces),
                     (bulk.release_on, bulk_cls.release_reproduces))
            return Backends(*[bulk if on and not overridden(policy_cls, bulk_cls.reference, methods) else STEP_BY_STEP
                              for on, methods in hooks])
    return STEP
