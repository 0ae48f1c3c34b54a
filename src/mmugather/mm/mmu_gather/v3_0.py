"""The Linux 3.0 gather: mm/memory.c and include/asm-generic/tlb.h v3.0 (d16dfc550f53, e303297e6c3a)."""
from __future__ import annotations

import numpy as np

from mmugather.mm.mmu_gather import PAGE_SIZE
from mmugather.mm.page_alloc import BATCH, GFP_NOWAIT
from mmugather.mm.memory.bulk import first_crossing, may_bulk, release_units
from mmugather.mm.pfn_runs import PfnRuns, RunCursor, expand_runs, runs_of
from mmugather.mm.swap_state import PAGEVEC_SIZE, free_pages_and_swap_cache


class Batch:
    """struct mmu_gather_batch, Linux v3.0: next, nr, max, pages[]; `pfn` is the page holding it
    (None for the on-stack `local` bundle). `pages` is a list, or a PfnRuns on the fast path (a 3.0 gather
    may hold every page of an address space until its one flush)."""

    __slots__ = ("pfn", "pages", "max", "next")

    def __init__(self, pfn: int | None, max_: int, pages=None) -> None:
        self.pfn = pfn
        self.pages = [] if pages is None else pages
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
        num_possible_cpus() == 1 (never with `--without-fix tlb_fast_mode`: 29eb77825cc7 removed it); the
        first batch is the 8-entry local bundle."""
        yield 0
        tlb = MmuGather30()
        tlb.mm = mm
        tlb.fullmm = fullmm
        tlb.need_flush = False
        tlb.fast_mode = self.num_online_cpus == 1 and "tlb_fast_mode" not in self.without
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
        new = Batch(pfn, self.MAX_GATHER_BATCH, PfnRuns() if self.fast else None)
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
            if self.fast and batch.next is not None and may_bulk(self, c):
                n, k, nxt = self._free_batches_bulk(c, batch)
                if k:
                    freed += n
                    if n:
                        yield self.costs.page_free * n
                    batch = nxt
                    continue
            pages = batch.pages
            batch.pages = [] if type(pages) is list else PfnRuns()
            freed += len(pages)
            yield free_pages_and_swap_cache(self, c, pages)
            batch = batch.next
        self.metrics.pages_per_flush.append(freed)
        tlb.active = tlb.local

    def _free_batches_bulk(self, c, batch):
        """Fast path of tlb_flush_mmu()'s loop over the batches from `batch` on: free_pages_and_swap_cache()
        of the batches whose steps all start before the horizon, in one pass (mm/memory/bulk.py), stopping
        before a batch holding a frame some TLB, paging-structure cache or walker still reaches. Returns
        (pages released, batches done, the batch to go on with)."""
        chain = []
        b = batch
        while b is not None:
            chain.append(b)
            b = b.next
        lens = np.fromiter((len(b.pages) for b in chain), dtype=np.int64, count=len(chain))
        cost = self.costs.page_free
        last = np.where(lens > 0, cost * ((lens - 1) % PAGEVEC_SIZE + 1), 0)
        k = first_crossing(c.clock, c.clock + np.cumsum(cost * lens), last, c.horizon)
        if int(lens[:k].sum()):
            k = release_units(self, c, [b.pages for b in chain[:k]])
        total = int(lens[:k].sum())
        for b in chain[:k]:
            b.pages = [] if type(b.pages) is list else PfnRuns()
        return total, k, chain[k] if k < len(chain) else None

    def tlb_finish_mmu(self, c, tlb, start: int, end: int):
        """tlb_finish_mmu(), mm/memory.c v3.0: flush, check_pgt_cache(), free the batch pages."""
        yield self.tlb_flush_mmu(c, tlb)
        batch = tlb.local.next
        if self.fast and batch is not None:             # the same frees, at once (no step in between)
            frames = []
            while batch is not None:
                frames.append(batch.pfn)
                batch = batch.next
            self.alloc.free_array(c, np.array(frames, dtype=np.int64))
            self.metrics.gather_memory(-PAGE_SIZE * len(frames))
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

    def _tlb_quiet(self, tlb) -> int:
        """Fast path (mm/memory/bulk.py): how many pages __tlb_remove_page() would batch with no other
        effect (before the one that fills the active batch); 0 in fast mode or when a subclass changed it."""
        cls = type(self)
        if (tlb.fast_mode or cls._tlb_remove_page is not Gather30._tlb_remove_page
                or cls.tlb_remove_page is not Gather30.tlb_remove_page):
            return 0
        return max(0, tlb.active.max - len(tlb.active.pages) - 1)

    def _tlb_add_quiet(self, tlb, pfns) -> None:
        """__tlb_remove_page() of each of pfns (a numpy array, at most `_tlb_quiet(tlb)` of them)."""
        if len(pfns):
            tlb.need_flush = True
            pages = tlb.active.pages
            if isinstance(pages, PfnRuns):
                pages.extend(pfns)
            else:
                pages.extend(pfns.tolist())

    def _tlb_bulk_fills(self, tlb, npages: int):
        """Fast path: where __tlb_remove_page() of the next `npages` pages fills a batch. Returns
        (at, ns, limit): numpy arrays of the k-th page (from 0) whose removal moves to the next batch and
        what that costs (a GFP_NOWAIT allocation, or 0 to reuse a batch kept from an earlier flush); the
        pages from the `limit`-th on cannot be told in advance (an allocation that may fail, or a removal
        returning 0). None when this gather cannot say (fast mode, methods overridden)."""
        if (tlb.fast_mode or type(self)._tlb_remove_page is not Gather30._tlb_remove_page
                or type(self).tlb_next_batch is not Gather30.tlb_next_batch):
            return None
        b = tlb.active
        room = b.max - len(b.pages)
        if room <= 0:
            return None
        at, ns = [], []
        pos = room - 1
        while pos < npages and b.next is not None:      # batches kept from an earlier flush
            b = b.next
            room = b.max - len(b.pages)
            if room <= 0:
                return np.array(at, dtype=np.int64), np.array(ns, dtype=np.int64), pos
            at.append(pos)
            ns.append(0)
            pos += room
        at = np.array(at, dtype=np.int64)
        ns = np.array(ns, dtype=np.int64)
        if pos >= npages:
            return at, ns, npages
        if self.alloc.fail_nowait:                      # the next allocation may fail
            return at, ns, pos
        new = np.arange(pos, npages, self.MAX_GATHER_BATCH, dtype=np.int64)
        return (np.concatenate((at, new)), np.concatenate((ns, np.full(len(new), self.costs.page_alloc))),
                npages)

    def _tlb_bulk_add(self, c, tlb, pfns: np.ndarray, increasing: bool) -> None:
        """Fast path: __tlb_remove_page() of each of `pfns` (int64, `increasing` when sorted), in order, as
        `_tlb_bulk_fills` planned them: batches kept from an earlier flush are filled in turn, new ones
        allocated at once (alloc_many; their cost is the caller's to spend, as the fills said)."""
        a, b = 0, len(pfns)
        if a == b:
            return
        cursor = RunCursor(*runs_of(pfns, increasing))
        tlb.need_flush = True
        while True:
            batch = tlb.active
            pages = batch.pages
            take = min(batch.max - len(pages), b - a)
            if take:
                if isinstance(pages, PfnRuns):
                    pages.extend_runs(*cursor.take(a, a + take))
                else:
                    pages.extend(expand_runs(*cursor.take(a, a + take)).tolist())
                a += take
            if len(pages) < batch.max:
                return
            if batch.next is None:
                break
            tlb.active = batch.next
        # the active batch is full and the last: a new batch for it, and one more for each new one filled
        nmax = self.MAX_GATHER_BATCH
        k = 1 + (b - a) // nmax
        frames = self.alloc.alloc_many(BATCH, k, GFP_NOWAIT)
        self.metrics.gather_memory(PAGE_SIZE * k)
        chunks = cursor.encode_chunks(a, b, nmax) if a < b else []
        prev = tlb.active
        chunks += [(None, 0)] * (k - len(chunks))
        for pfn, (a_, n) in zip(frames, chunks):
            new = Batch(pfn, nmax, PfnRuns(a_, n))
            prev.next = new
            prev = new
        tlb.active = prev

    def tlb_remove_page(self, c, tlb, pfn: int):
        """tlb_remove_page(), asm-generic/tlb.h v3.0: __tlb_remove_page(), tlb_flush_mmu() if it returned 0."""
        if not self._tlb_remove_page(c, tlb, pfn):
            yield self.tlb_flush_mmu(c, tlb)

    def gather_static_bytes(self, ncpus: int) -> int:
        """No per-CPU storage in 3.0 (1c3951769621 removed mmu_gathers)."""
        return 0
