"""The Linux 3.0 gather: mm/memory.c and include/asm-generic/tlb.h v3.0 (d16dfc550f53, e303297e6c3a)."""
from __future__ import annotations

from collections.abc import Generator, MutableSequence
from typing import TYPE_CHECKING, Any

from mmugather.mm.mmu_gather import PAGE_SIZE, BatchedGather
from mmugather.mm.protocols import Path
from mmugather.mm.swap_state import free_pages_and_swap_cache

if TYPE_CHECKING:
    from mmugather.mm.mm_types import MmStruct


class Batch:
    """struct mmu_gather_batch, Linux v3.0: next, nr, max, pages[]; `pfn` is the page holding it
    (None for the on-stack `local` bundle). `pages` is a list, or whatever the release backend keeps
    pages in (fastpath/: run-length encoded, as a 3.0 gather may hold every page of an address space
    until its one flush)."""

    __slots__ = ("pfn", "pages", "max", "next")

    def __init__(self, pfn: int | None, max_: int, pages: MutableSequence[int] | None = None) -> None:
        self.pfn = pfn
        self.pages = [] if pages is None else pages
        self.max = max_
        self.next: Batch | None = None


class MmuGather30:
    """struct mmu_gather, include/asm-generic/tlb.h v3.0 (e303297e6c3a): mm, [batch under
    CONFIG_HAVE_RCU_TABLE_FREE], need_flush:1 and fast_mode:1 in one unsigned int, unsigned int fullmm,
    active, local (struct mmu_gather_batch: next, nr, max), __pages[MMU_GATHER_BUNDLE]."""

    __slots__ = ("mm", "need_flush", "fast_mode", "fullmm", "local", "active", "batch_count")
    mm: MmStruct
    need_flush: bool
    fast_mode: bool
    fullmm: bool
    local: Batch
    active: Batch
    batch_count: int

    SIZEOF = 8 + 4 + 4 + 8 + 16 + 8 * 8   # 104 on x86-64, on the stack of the task tearing down
    SIZEOF_RCU_TABLE_FREE = SIZEOF + 8    # 112 with the table batch pointer (ppc64)


class Gather30(BatchedGather):
    """The 3.0 gather, as kernel methods (mm/memory.c and include/asm-generic/tlb.h, Linux v3.0).

    Inverted fix switch (3.0 as released has the bug): `--without-fix unlimited_batching` applies
    53a59fc67f97 (v3.8, "mm: limit mmu_gather batching to fix soft lockups on !CONFIG_PREEMPT"): at most
    MAX_GATHER_BATCH_COUNT batch pages, so zap_pte_range() breaks out to flush and free every ~10k pages."""

    MMU_GATHER_BUNDLE = 8
    PAGEVEC_SIZE = 14                          # include/linux/pagevec.h v3.0: free_pages_and_swap_cache()'s chunk

    def tlb_gather_mmu(self, c, mm, fullmm: bool) -> Path:
        """tlb_gather_mmu(), mm/memory.c v3.0: initialise an on-stack gather; fast mode when
        `tlb->fast_mode = (num_possible_cpus() == 1)` (never with `--without-fix tlb_fast_mode`: 29eb77825cc7
        removed it); the first batch is the 8-entry local bundle."""
        yield 0
        tlb = MmuGather30()
        tlb.mm = mm
        tlb.fullmm = fullmm
        tlb.need_flush = False
        tlb.fast_mode = self.num_possible_cpus == 1 and "tlb_fast_mode" not in self.without
        tlb.local = Batch(None, self.MMU_GATHER_BUNDLE)
        tlb.active = tlb.local
        tlb.batch_count = 0
        self.metrics.gather_memory(self.sizeof_mmu_gather())
        return tlb

    def batch_count_limited(self) -> bool:
        """3.0 as released chains batches without a limit; `--without-fix unlimited_batching` applies
        53a59fc67f97's MAX_GATHER_BATCH_COUNT."""
        return "unlimited_batching" in self.without

    def new_batch(self, pfn: int) -> Batch:
        return Batch(pfn, self.MAX_GATHER_BATCH, self.release_backend.page_list())

    def tlb_flush_mmu(self, c, tlb) -> Path:
        """tlb_flush_mmu(), mm/memory.c v3.0: tlb_flush(), then free every batch's pages and rewind to the
        local bundle (the batch pages themselves are kept until tlb_finish_mmu)."""
        if not tlb.need_flush:
            return
        tlb.need_flush = False
        yield self.tlb_flush(c, tlb)
        if tlb.fast_mode:
            return
        freed = yield from self._free_batches(c, tlb, self._free_batch_pages, to_empty=False)
        self.metrics.pages_per_flush.append(freed)
        tlb.active = tlb.local

    def _free_batch_pages(self, c, batch: Batch) -> Generator[Any, Any, int]:
        """tlb_flush_mmu()'s step per batch, v3.0: free_pages_and_swap_cache(batch->pages, batch->nr),
        batch->nr = 0. Returns the pages freed."""
        pages = batch.pages
        batch.pages = type(pages)()                     # an empty page array of the same kind
        n = len(pages)
        yield free_pages_and_swap_cache(self, c, pages)
        return n

    def tlb_finish_mmu(self, c, tlb, start: int, end: int) -> Path:
        """tlb_finish_mmu(), mm/memory.c v3.0: flush, check_pgt_cache(), free the batch pages."""
        yield self.tlb_flush_mmu(c, tlb)
        frames = self.release_backend.batch_frames(tlb.local.next)   # for (batch = tlb->local.next; ...)
        self.release_backend.free_pages(self, c, frames)   # free_pages() of each batch page, in order
        self.metrics.gather_memory(-PAGE_SIZE * len(frames))
        tlb.local.next = None
        self.metrics.gather_memory(-self.sizeof_mmu_gather())

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

    def tlb_remove_page(self, c, tlb, pfn: int) -> Path:
        """tlb_remove_page(), asm-generic/tlb.h v3.0: __tlb_remove_page(), tlb_flush_mmu() if it returned 0."""
        if not self._tlb_remove_page(c, tlb, pfn):
            yield self.tlb_flush_mmu(c, tlb)

    def sizeof_mmu_gather(self) -> int:
        """sizeof(struct mmu_gather) on this arch: the batch pointer only with HAVE_RCU_TABLE_FREE."""
        return MmuGather30.SIZEOF_RCU_TABLE_FREE if self.arch.have_rcu_table_free else MmuGather30.SIZEOF

    def gather_static_bytes(self, ncpus: int) -> int:
        """No per-CPU storage in 3.0 (1c3951769621 removed mmu_gathers)."""
        return 0
