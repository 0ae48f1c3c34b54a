"""Generic MMU-gather implementation (include/asm-generic/tlb.h, mm/mmu_gather.c), one module per version.

The mmu_gather data structure is used by the mm code to implement the correct and efficient ordering of
freeing pages and TLB invalidations. This correct ordering is:

  1) unhook page
  2) TLB invalidate page
  3) free page

That is, we must never free a page before we have ensured there are no live translations left to it.
(sim/invariants.py checks exactly that, at every step.)

The API, by lifecycle:
- gather:  `tlb_gather_mmu(c, mm, fullmm)`: set up a gather for tearing down (part of) mm; `fullmm` when
  the mm has no users left and the whole address space goes (exit, execve).
- remove:  `_tlb_remove_page(c, tlb, pfn)` (the kernel's __tlb_remove_page) only batches the page and
  reports the free slots left, 0 meaning "you must flush"; `tlb_remove_page` flushes itself when needed.
  `pte_free_tlb` hands a page-table page to the gather (x86 ___pte_free_tlb batches it like any page).
- flush:   `tlb_flush_mmu(c, tlb)`: invalidate the TLBs (`arch.tlb_flush`), then free the batched pages.
- finish:  `tlb_finish_mmu(c, tlb, start, end)`: final flush, give back the gather's own memory.

Three versions are modelled, one module each, each a mixin of kernel methods over its own gather
structure (mm/protocols.py `MmuGather` lists what every one provides):
- `Gather2639` (Linux 2.6.39): one gather per CPU (`DEFINE_PER_CPU(struct mmu_gather, mmu_gathers)`),
  taken with get_cpu_var() so preemption stays off from gather to finish; FREE_PTE_NR = 506 slots; the
  flush happens from inside tlb_remove_page, i.e. under the PTE lock; fast mode when one CPU is online.
- `Gather30` (Linux 3.0, d16dfc550f53 + e303297e6c3a): an on-stack gather with MMU_GATHER_BUNDLE = 8
  slots, extended by a chain of page-sized batches (MAX_GATHER_BATCH = 510 slots each) allocated with
  GFP_NOWAIT and, in 3.0, without any limit on their number (MAX_GATHER_BATCH_COUNT came in v3.8 with
  53a59fc67f97); fast mode when num_possible_cpus() == 1. `RcuTableFree30` (rcu_table_v3_0.py) adds
  HAVE_RCU_TABLE_FREE for the arches that select it.
- `Gather618` (Linux 6.18): the range-tracking gather of mm/mmu_gather.c: an on-stack gather whose batches
  are capped at MAX_GATHER_BATCH_COUNT, a forced flush under the PTE lock when it fills, delayed rmaps of
  dirty shared file pages, page tables freed through an RCU table batch (MMU_GATHER_RCU_TABLE_FREE).

`BatchedGather` below is what the 3.0 and 6.18 gathers share: the chain of page-sized batches of
e303297e6c3a (tlb_next_batch()) and the loop over the batches that frees their pages.

The loops that free what a gather batched ask the kernel's release backend (mm/protocols.py) for runs
to take at once; nothing here knows how fast it runs.
"""
from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any

from mmugather.mm.kernel_part import KernelPart
from mmugather.mm.page_alloc import BATCH, GFP_NOWAIT

PAGE_SIZE = 4096


class BatchedGather(KernelPart):
    """The batch chain of the 3.0 and 6.18 gathers (mm/memory.c v3.0, mm/mmu_gather.c v6.18: the same code
    in both): each version says whether MAX_GATHER_BATCH_COUNT bounds the chain (`batch_count_limited`)
    and how a new batch looks (`new_batch`)."""

    MAX_GATHER_BATCH = (PAGE_SIZE - 16) // 8             # 510
    MAX_GATHER_BATCH_COUNT = 10000 // MAX_GATHER_BATCH    # 19 (include/asm-generic/tlb.h, v3.8 on)

    def batch_count_limited(self) -> bool:
        """Whether tlb_next_batch() stops at MAX_GATHER_BATCH_COUNT batch pages (53a59fc67f97, v3.8)."""
        raise NotImplementedError

    def new_batch(self, pfn: int) -> Any:
        """A struct mmu_gather_batch of MAX_GATHER_BATCH entries in page pfn."""
        raise NotImplementedError

    def tlb_next_batch(self, c, tlb) -> bool:
        """tlb_next_batch(), mm/memory.c v3.0 / mm/mmu_gather.c v6.18 (6.18 first tests its delayed rmaps,
        v6_18.py): move to the next batch page, reusing one kept from before, else allocating it with
        GFP_NOWAIT (at most MAX_GATHER_BATCH_COUNT when `batch_count_limited()`); False when none can be
        had (the caller must flush)."""
        batch = tlb.active
        if batch.next is not None:
            tlb.active = batch.next
            return True
        if self.batch_count_limited() and tlb.batch_count == self.MAX_GATHER_BATCH_COUNT:
            return False
        pfn = self.alloc.alloc_page(BATCH, GFP_NOWAIT)
        c.clock += self.costs.page_alloc
        if pfn < 0:
            return False
        tlb.batch_count += 1
        self.metrics.gather_memory(PAGE_SIZE)
        new = self.new_batch(pfn)
        tlb.active.next = new
        tlb.active = new
        return True

    def _free_batches(self, c, tlb, free_batch: Callable[[Any, Any], Generator[Any, Any, int]],
                      to_empty: bool) -> Generator[Any, Any, int]:
        """The loop over the gather's batches that frees their pages: `for (batch = &tlb->local; batch;
        batch = batch->next)` in tlb_flush_mmu() v3.0, `... batch && batch->nr; ...` (`to_empty`) in
        tlb_batch_pages_flush() v6.18; `free_batch(c, batch)` frees one batch's pages as that version
        does and returns how many. The release backend may free the next batches at once
        (mm/protocols.py FreedBatches). Returns the pages freed."""
        batch = tlb.local
        freed = 0
        batches_run = self.release_backend.batches_run
        while batch is not None and (not to_empty or batch.pages):
            run = batches_run(self, c, batch)              # the next batches at once, or None
            if run is not None:
                freed += run.pages
                if run.step is not None:
                    yield run.step
                batch = run.next
                continue
            freed += yield from free_batch(c, batch)
            batch = batch.next
        return freed
