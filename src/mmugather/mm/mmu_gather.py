"""Generic MMU-gather implementation (include/asm-generic/tlb.h; mm/memory.c in v3.0).

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

Two generations are modelled, each a mixin of kernel methods over its own gather structure:
- `Gather2639` (Linux 2.6.39): one gather per CPU (`DEFINE_PER_CPU(struct mmu_gather, mmu_gathers)`),
  taken with get_cpu_var() so preemption stays off from gather to finish; FREE_PTE_NR = 506 slots; the
  flush happens from inside tlb_remove_page, i.e. under the PTE lock; fast mode when one CPU is online.
- `Gather30` (Linux 3.0, d16dfc550f53 + e303297e6c3a): an on-stack gather with MMU_GATHER_BUNDLE = 8
  slots, extended by a chain of page-sized batches (MAX_GATHER_BATCH = 510 slots each) allocated with
  GFP_NOWAIT and, in 3.0, without any limit on their number (MAX_GATHER_BATCH_COUNT came in v3.8 with
  53a59fc67f97); fast mode when num_possible_cpus() == 1.
"""
from __future__ import annotations

from mmugather.kernel.locking import PREEMPT_DISABLE, PREEMPT_ENABLE
from mmugather.mm.page_alloc import BATCH, GFP_NOWAIT
from mmugather.mm.swap_state import free_pages_and_swap_cache

PAGE_SIZE = 4096


class MmuGather2639:
    """struct mmu_gather, include/asm-generic/tlb.h v2.6.39: mm, nr (~0U: fast mode), need_flush, fullmm,
    pages[FREE_PTE_NR]."""

    __slots__ = ("mm", "fast_mode", "need_flush", "fullmm", "pages")

    SIZEOF = 8 + 4 * 4 + 8 * 506   # bytes of per-CPU storage, whether used or not

    def __init__(self) -> None:
        self.mm = None
        self.fast_mode = False
        self.need_flush = False
        self.fullmm = False
        self.pages: list[int] = []


class Gather2639:
    """The 2.6.39 gather, as kernel methods (include/asm-generic/tlb.h, Linux v2.6.39)."""

    FREE_PTE_NR = 506

    def tlb_gather_mmu(self, c, mm, fullmm: bool):
        """tlb_gather_mmu(), asm-generic/tlb.h v2.6.39: `&get_cpu_var(mmu_gathers)`: preemption off until
        tlb_finish_mmu(); fast mode (nr = ~0U) when only one CPU is online."""
        yield PREEMPT_DISABLE
        tlb = c.per_cpu.get("mmu_gathers")
        if tlb is None:
            tlb = c.per_cpu["mmu_gathers"] = MmuGather2639()
        tlb.mm = mm
        tlb.fast_mode = self.num_online_cpus == 1
        tlb.fullmm = fullmm
        return tlb

    def tlb_flush_mmu(self, c, tlb):
        """tlb_flush_mmu(), asm-generic/tlb.h v2.6.39: if anything was unmapped, tlb_flush() then
        free_pages_and_swap_cache() of the batch (nothing to free in fast mode)."""
        if not tlb.need_flush:
            return
        tlb.need_flush = False
        yield self.tlb_flush(c, tlb)
        if not tlb.fast_mode:
            pages, tlb.pages = tlb.pages, []
            self.metrics.pages_per_flush.append(len(pages))
            yield free_pages_and_swap_cache(self, c, pages)

    def tlb_finish_mmu(self, c, tlb, start: int, end: int):
        """tlb_finish_mmu(), asm-generic/tlb.h v2.6.39: flush, check_pgt_cache(), put_cpu_var()."""
        yield self.tlb_flush_mmu(c, tlb)
        yield PREEMPT_ENABLE

    def _tlb_remove_page(self, c, tlb, pfn: int) -> int:
        """The batching half of tlb_remove_page(), asm-generic/tlb.h v2.6.39. Returns the slots left before
        FREE_PTE_NR (0: the caller must tlb_flush_mmu() now, as tlb_remove_page() does itself). In fast
        mode the page is freed at once (free_page_and_swap_cache) and 1 is returned."""
        tlb.need_flush = True
        if tlb.fast_mode:
            self.put_page_now(c, pfn)
            return 1
        pages = tlb.pages
        pages.append(pfn)
        left = self.FREE_PTE_NR - len(pages)
        return left if left > 0 else 0

    def tlb_remove_page(self, c, tlb, pfn: int):
        """tlb_remove_page(), asm-generic/tlb.h v2.6.39: batch the page; flush when nr >= FREE_PTE_NR."""
        if not self._tlb_remove_page(c, tlb, pfn):
            yield self.tlb_flush_mmu(c, tlb)

    def gather_static_bytes(self, ncpus: int) -> int:
        """DEFINE_PER_CPU storage of 2.6.39: one struct mmu_gather per possible CPU."""
        return ncpus * MmuGather2639.SIZEOF


class Batch:
    """struct mmu_gather_batch, Linux v3.0: next, nr, max, pages[]; `pfn` is the page holding it
    (None for the on-stack `local` bundle)."""

    __slots__ = ("pfn", "pages", "max", "next")

    def __init__(self, pfn: int | None, max_: int) -> None:
        self.pfn = pfn
        self.pages: list[int] = []
        self.max = max_
        self.next: Batch | None = None


class MmuGather30:
    """struct mmu_gather, include/asm-generic/tlb.h v3.0: mm, need_flush, fast_mode, fullmm, active,
    local, __pages[MMU_GATHER_BUNDLE]."""

    __slots__ = ("mm", "need_flush", "fast_mode", "fullmm", "local", "active")

    SIZEOF = 8 + 4 + 8 + 16 + 8 * 8   # on the stack of the task tearing down


class Gather30:
    """The 3.0 gather, as kernel methods (mm/memory.c and include/asm-generic/tlb.h, Linux v3.0)."""

    MMU_GATHER_BUNDLE = 8
    MAX_GATHER_BATCH = (PAGE_SIZE - 16) // 8   # 510

    def tlb_gather_mmu(self, c, mm, fullmm: bool):
        """tlb_gather_mmu(), mm/memory.c v3.0: initialise an on-stack gather; fast mode when
        num_possible_cpus() == 1; the first batch is the 8-entry local bundle."""
        yield 0
        tlb = MmuGather30()
        tlb.mm = mm
        tlb.fullmm = fullmm
        tlb.need_flush = False
        tlb.fast_mode = self.num_online_cpus == 1
        tlb.local = Batch(None, self.MMU_GATHER_BUNDLE)
        tlb.active = tlb.local
        self.metrics.gather_memory(MmuGather30.SIZEOF)
        return tlb

    def tlb_next_batch(self, c, tlb) -> bool:
        """tlb_next_batch(), mm/memory.c v3.0: move to the next batch page, allocating it with GFP_NOWAIT;
        False when the allocation fails (the caller must flush)."""
        batch = tlb.active
        if batch.next is not None:
            tlb.active = batch.next
            return True
        pfn = self.alloc.alloc_page(BATCH, GFP_NOWAIT)
        c.clock += self.costs.page_alloc
        if pfn < 0:
            return False
        self.metrics.gather_memory(PAGE_SIZE)
        new = Batch(pfn, self.MAX_GATHER_BATCH)
        tlb.active.next = new
        tlb.active = new
        return True

    def tlb_flush_mmu(self, c, tlb):
        """tlb_flush_mmu(), mm/memory.c v3.0: tlb_flush(), then free every batch's pages and rewind to the
        local bundle (the batch pages themselves are kept until tlb_finish_mmu)."""
        if not tlb.need_flush:
            return
        tlb.need_flush = False
        yield self.tlb_flush(c, tlb)
        if tlb.fast_mode:
            return
        batch = tlb.local
        freed = 0
        while batch is not None:
            pages, batch.pages = batch.pages, []
            freed += len(pages)
            yield free_pages_and_swap_cache(self, c, pages)
            batch = batch.next
        self.metrics.pages_per_flush.append(freed)
        tlb.active = tlb.local

    def tlb_finish_mmu(self, c, tlb, start: int, end: int):
        """tlb_finish_mmu(), mm/memory.c v3.0: flush, check_pgt_cache(), free the batch pages."""
        yield self.tlb_flush_mmu(c, tlb)
        batch = tlb.local.next
        while batch is not None:
            self.alloc.free_page(c, batch.pfn)
            self.metrics.gather_memory(-PAGE_SIZE)
            batch = batch.next
        tlb.local.next = None
        self.metrics.gather_memory(-MmuGather30.SIZEOF)

    def _tlb_remove_page(self, c, tlb, pfn: int) -> int:
        """__tlb_remove_page(), mm/memory.c v3.0: batch the page; returns the free slots left, 0 when the
        active batch is full and no next batch could be had (the caller must flush). Fast mode frees the
        page at once and returns 1."""
        tlb.need_flush = True
        if tlb.fast_mode:
            self.put_page_now(c, pfn)
            return 1
        batch = tlb.active
        pages = batch.pages
        pages.append(pfn)
        left = batch.max - len(pages)
        if left:
            return left
        if not self.tlb_next_batch(c, tlb):
            return 0
        return tlb.active.max - len(tlb.active.pages)

    def tlb_remove_page(self, c, tlb, pfn: int):
        """tlb_remove_page(), asm-generic/tlb.h v3.0: __tlb_remove_page(), tlb_flush_mmu() if it returned 0."""
        if not self._tlb_remove_page(c, tlb, pfn):
            yield self.tlb_flush_mmu(c, tlb)

    def gather_static_bytes(self, ncpus: int) -> int:
        """No per-CPU storage in 3.0 (1c3951769621 removed mmu_gathers)."""
        return 0
