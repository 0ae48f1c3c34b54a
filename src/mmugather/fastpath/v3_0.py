"""The bulk backend of Linux 3.0 (mm/memory.c and include/asm-generic/tlb.h v3.0): the gather's batches
seen from outside, for zap_pte_range()'s runs, zap_pmd_range()'s pass over whole tables (tables.py),
free_pmd_range()'s runs and tlb_flush_mmu()'s loop over batches. Batch pages are run-length encoded
(PfnRuns): a 3.0 gather may hold every page of an address space until its one flush."""
from __future__ import annotations

from collections import deque
from itertools import repeat
from operator import attrgetter
from typing import Any

import numpy as np

from mmugather.fastpath.backend import BulkBackend
from mmugather.fastpath.core import first_crossing, may_bulk, release_units
from mmugather.fastpath.tables import zap_tables
from mmugather.mm.mmu_gather import PAGE_SIZE
from mmugather.mm.mmu_gather.v3_0 import Batch
from mmugather.mm.page_alloc import BATCH, GFP_NOWAIT, FrameSpan
from mmugather.mm.pfn_runs import PfnRuns, RunCursor, expand_runs, runs_of
from mmugather.mm.protocols import FreedBatches, PmdRun
from mmugather.policies.linux_3_0 import Linux30


_PAGES = attrgetter("pages")     # a batch's pages


class Bulk30(BulkBackend):
    """Reproduces Linux30's zap_pte_range() and page batching (__tlb_remove_page(), tlb_remove_page(),
    tlb_next_batch()), free_pte_range() with the x86 pte_free_tlb() (not on an arch with
    HAVE_RCU_TABLE_FREE), and free_pages_and_swap_cache() of its batches."""

    reference = Linux30
    zap_reproduces = frozenset({"zap_pte_range", "_zap_pte_loop", "_tlb_remove_page",
                                "tlb_remove_page", "tlb_next_batch", "batch_count_limited", "new_batch"})
    tables_reproduces = frozenset({"free_pte_range", "pte_free_tlb", "_tlb_remove_page", "tlb_remove_page"})
    tracks_range = False

    def __init__(self, arch: Any) -> None:
        super().__init__(arch)
        self.tables_on = not arch.have_rcu_table_free       # else pte_free_tlb() is tlb_remove_table()

    def quiet(self, kernel: Any, tlb: Any) -> int:
        """__tlb_remove_page() batches quietly up to the page that fills the active batch; not in fast mode."""
        if tlb.fast_mode:
            return 0
        return max(0, tlb.active.max - len(tlb.active.pages) - 1)

    def add_quiet(self, kernel: Any, tlb: Any, pfns: np.ndarray) -> None:
        if len(pfns):
            tlb.need_flush = True
            pages = tlb.active.pages
            if isinstance(pages, PfnRuns):
                pages.extend(pfns)
            else:
                pages.extend(pfns.tolist())

    def pmd_run(self, kernel: Any, c: Any, tlb: Any, pmd: Any, addr: int, end: int, details: Any,
                zap_work: list[int] | None = None) -> PmdRun | None:
        """tables.zap_tables(): each PMD entry one zap_pte_range() and cond_resched(), or a pmd_none step."""
        if not may_bulk(c) or tlb.mm.zero_ptes:
            return None
        return zap_tables(self, kernel, c, tlb, pmd, addr, end, cond_after_none=False)

    # ------------------------------------------------------------ tables.TablesGather
    def tables_fills(self, kernel: Any, tlb: Any, npages: int) -> tuple | None:
        """Where __tlb_remove_page() of the next `npages` pages fills a batch: (at, ns, limit), numpy arrays
        of the k-th page (from 0) whose removal moves to the next batch and what that costs (a GFP_NOWAIT
        allocation, or 0 to reuse a batch kept from an earlier flush); the pages from the `limit`-th on
        cannot be told in advance (an allocation that may fail). None in fast mode or on a full batch."""
        if tlb.fast_mode:
            return None
        b = tlb.active
        room = b.max - len(b.pages)
        if room <= 0:
            return None
        at: list[int] = []
        ns: list[int] = []
        pos = room - 1
        while pos < npages and b.next is not None:      # batches kept from an earlier flush
            b = b.next
            room = b.max - len(b.pages)
            if room <= 0:
                return np.array(at, dtype=np.int64), np.array(ns, dtype=np.int64), pos
            at.append(pos)
            ns.append(0)
            pos += room
        at_a = np.array(at, dtype=np.int64)
        ns_a = np.array(ns, dtype=np.int64)
        if pos >= npages:
            return at_a, ns_a, npages
        if kernel.alloc.fail_nowait:                    # the next allocation may fail
            return at_a, ns_a, pos
        new = np.arange(pos, npages, kernel.MAX_GATHER_BATCH, dtype=np.int64)
        return (np.concatenate((at_a, new)), np.concatenate((ns_a, np.full(len(new), kernel.costs.page_alloc))),
                npages)

    def tables_cycle(self, kernel: Any, c: Any, tlb: Any, limit: int) -> None:
        return None                                     # (a full 3.0 gather ends the pass)

    def tables_add(self, kernel: Any, c: Any, tlb: Any, pfns: np.ndarray, fs: FrameSpan | None) -> None:
        """__tlb_remove_page() of each of `pfns` (int32 or int64, `fs` their FrameSpan if known), in order, as
        tables_fills() planned them: batches kept from an earlier flush are filled in turn, new ones
        allocated at once (alloc_many; their cost is the caller's to spend, as the fills said)."""
        a, b = 0, len(pfns)
        if a == b:
            return
        runs = fs.runs(pfns) if fs is not None else None
        cursor = RunCursor(*(runs if runs is not None else runs_of(pfns)))
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
        self._new_batches(kernel, tlb, cursor, a, b)

    def _new_batches(self, kernel: Any, tlb: Any, cursor: RunCursor, a: int, b: int) -> None:
        """The active batch is full and the last: a new batch for it, and one more for each new one
        filled, holding pages a..b."""
        nmax = kernel.MAX_GATHER_BATCH
        k = 1 + (b - a) // nmax
        frames = kernel.alloc.alloc_many(BATCH, k, GFP_NOWAIT)
        kernel.metrics.gather_memory(PAGE_SIZE * k)
        encs, counts = cursor.encode_chunks(a, b, nmax) if a < b else ([], [])
        pages = [*map(PfnRuns, encs, counts), *(PfnRuns() for _ in range(k - len(encs)))]  # (+ an empty last)
        batches = [tlb.active, *map(Batch, frames, repeat(nmax), pages)]  # type: ignore[arg-type]  # page_list()'s kind
        deque(map(setattr, batches[:-1], repeat("next"), batches[1:]), 0)    # each one's next
        tlb.active = batches[-1]

    def tables_flushes(self, kernel: Any, c: Any, tlb: Any, pfns: np.ndarray, fs: FrameSpan | None, limit: int,
                       nflush: int) -> None:
        raise AssertionError("tables_flushes: a 3.0 pass has no forced flush")

    def tables_range(self, kernel: Any, tlb: Any, start: int, end: int) -> None:
        """A 3.0 gather tracks no range."""

    # ------------------------------------------------------------ ReleaseBackend
    def page_list(self) -> PfnRuns:
        return PfnRuns()

    def batches_run(self, kernel: Any, c: Any, batch: Any) -> FreedBatches | None:
        """tlb_flush_mmu()'s loop over the batches from `batch` on (more than one): free_pages_and_swap_cache()
        of the batches whose steps all start before the horizon, in one pass, stopping before a batch
        holding a frame some TLB, paging-structure cache or walker still reaches."""
        if batch.next is None or not may_bulk(c):
            return None
        chain = []
        b = batch
        while b is not None:
            chain.append(b)
            b = b.next
        pages = list(map(_PAGES, chain))
        lens = np.array([p.n if type(p) is PfnRuns else len(p) for p in pages], dtype=np.int64)
        cost = kernel.costs.page_free
        last = np.where(lens > 0, cost * ((lens - 1) % kernel.PAGEVEC_SIZE + 1), 0)
        k = first_crossing(c.clock, c.clock + np.cumsum(cost * lens), last, c.horizon)
        if int(lens[:k].sum()):
            k = release_units(kernel, c, pages[:k])
        if not k:
            return None
        total = int(lens[:k].sum())
        runs = [p for p in pages[:k] if type(p) is PfnRuns]
        deque(map(PfnRuns.clear, runs), 0)              # (emptied in place)
        if len(runs) < k:                               # lists (the local bundle's)
            for b, p in zip(chain[:k], pages):
                if type(p) is not PfnRuns:
                    b.pages = [] if type(p) is list else PfnRuns()
        return FreedBatches(total, chain[k] if k < len(chain) else None, cost * total if total else None)
