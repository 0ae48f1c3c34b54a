"""The bulk backend of Linux 6.18 (mm/mmu_gather.c, include/asm-generic/tlb.h, mm/memory.c v6.18): the
range-tracking gather seen from outside, for zap_pte_range()'s runs, zap_pmd_range()'s pass over whole
tables (tables.py) with the forced flushes of a full gather on x86, free_pmd_range()'s runs into the table
batch, and tlb_batch_pages_flush()'s loop over batches."""
from __future__ import annotations

from array import array
from typing import Any

import numpy as np

from mmugather.fastpath.backend import BulkBackend
from mmugather.fastpath.core import first_crossing, may_bulk, release_flat
from mmugather.fastpath.tables import zap_tables
from mmugather.kernel.sched import P_COND_RESCHED, TLBSTATE_LAZY, TLBSTATE_OK, Elapse
from mmugather.mm.mmu_gather import PAGE_SIZE
from mmugather.mm.mmu_gather.v6_18 import Batch618
from mmugather.mm.page_alloc import BATCH, GFP_NOWAIT, FrameSpan
from mmugather.mm.pgtable import PAGE_SHIFT
from mmugather.mm.protocols import FreedBatches, PmdRun
from mmugather.policies.linux_6_18 import Linux618

_FLUSH_ARCHES = ("x86", "x86-kvm")          # the forced flushes a pass emulates are flush_tlb_mm_range()'s


class Bulk618(BulkBackend):
    """Reproduces Linux618's zap_pte_range(), page batching and range tracking, the flush path a forced
    flush takes, free_pte_range() into the RCU table batch, and tlb_batch_pages_flush()'s frees."""

    reference = Linux618
    zap_reproduces = frozenset({
        "zap_pte_range", "_zap_pte_pass", "zap_present_ptes", "tlb_next_batch",
        "batch_count_limited", "new_batch", "_tlb_remove_folio_pages_size", "tlb_flush_pte_range",
        "tlb_flush", "tlb_flush_mmu", "tlb_flush_mmu_tlbonly", "tlb_table_flush", "tlb_batch_pages_flush",
        "tlb_flush_rmaps", "_tlb_reset_range"})
    tables_reproduces = frozenset({"free_pte_range", "pte_free_tlb", "tlb_remove_table", "tlb_flush_pmd_range",
                                   "_tlb_adjust_range"})
    stop_dirty_file = True
    tracks_range = True

    def __init__(self, arch: Any) -> None:
        super().__init__(arch)
        self.pmd_runs_on = not arch.mmu_gather_page_size    # else tlb_change_page_size() may flush
        self.cycle_on = arch.name in _FLUSH_ARCHES and type(arch) is Linux618.arches.get(arch.name)

    def quiet(self, kernel: Any, tlb: Any) -> int:
        """__tlb_remove_folio_pages_size() batches quietly up to the page that leaves no room for two more
        entries."""
        batch = tlb.active
        return max(0, batch.max - 2 - len(batch.pages))

    def add_quiet(self, kernel: Any, tlb: Any, pfns: np.ndarray) -> None:
        tlb.active.pages.frombytes(pfns.tobytes())

    def add_quiet_run(self, kernel: Any, tlb: Any, start: int, n: int) -> None:
        tlb.active.pages.frombytes(np.arange(start, start + n, dtype=np.int64).tobytes())

    def record_run(self, kernel: Any, tlb: Any, addr: int, npages: int) -> None:
        """tlb_remove_tlb_entry() of each PTE cleared: one range."""
        kernel.tlb_flush_pte_range(tlb, addr, npages << PAGE_SHIFT)

    def pte_free_quiet(self, kernel: Any, tlb: Any) -> int:
        """pte_free_tlb() calls that would only record the range and add their table to the table batch
        (before the one that fills it); 0 without a table batch (allocating one is a step)."""
        if tlb.batch is None:
            return 0
        return kernel.MAX_TABLE_BATCH - 1 - len(tlb.batch.tables)

    def pte_free_add_quiet(self, kernel: Any, tlb: Any, pts: list, addrs: list) -> None:
        if pts:
            kernel._tlb_adjust_range(tlb, addrs[0], addrs[-1] + PAGE_SIZE - addrs[0])
            tlb.cleared_pmds = tlb.freed_tables = True
            tlb.batch.tables.extend([pt.pfn for pt in pts])

    def pmd_run(self, kernel: Any, c: Any, tlb: Any, pmd: Any, addr: int, end: int, details: Any,
                zap_work: list[int] | None = None) -> PmdRun | None:
        """tables.zap_tables(): each PMD entry one zap_pte_range() and cond_resched(), the forced flushes
        included; not when zap_pte_range() may free emptied tables (reclaim_pt)."""
        if not self.pmd_runs_on or (details is not None and details.reclaim_pt) or not may_bulk(c) \
                or tlb.mm.zero_ptes:
            return None
        return zap_tables(self, kernel, c, tlb, pmd, addr, end, cond_after_none=True, dirty_file_stops=True,
                          forced_flush=True)

    # ------------------------------------------------------------ tables.TablesGather
    def tables_fills(self, kernel: Any, tlb: Any, npages: int) -> tuple | None:
        """Where __tlb_remove_folio_pages_size() of the next `npages` single pages leaves no room for two
        more entries, so that tlb_next_batch() runs: (at, ns, limit), numpy arrays of page ordinals and the
        cost there (a GFP_NOWAIT allocation, or 0 to reuse a batch kept from an earlier flush), and the
        ordinal of the first page whose removal cannot be told (MAX_GATHER_BATCH_COUNT reached, an
        allocation that may fail); None with delayed rmaps pending or a full batch."""
        if tlb.delayed_rmap:
            return None
        b = tlb.active
        room = b.max - 1 - len(b.pages)
        if room <= 0:
            return None
        at, ns = [], []
        pos = room - 1
        count = tlb.batch_count
        new = False                                      # past the last existing batch
        while pos < npages:
            if not new and b.next is not None:
                b = b.next
                room = b.max - 1 - len(b.pages)
                if room <= 0:
                    break
                cost = 0
            else:
                if count == kernel.MAX_GATHER_BATCH_COUNT or kernel.alloc.fail_nowait:
                    break
                count += 1
                new = True
                room = kernel.MAX_GATHER_BATCH - 1
                cost = kernel.costs.page_alloc
            at.append(pos)
            ns.append(cost)
            pos += room
        return np.array(at, dtype=np.int64), np.array(ns, dtype=np.int64), min(pos, npages)

    def tables_add(self, kernel: Any, c: Any, tlb: Any, pfns: np.ndarray, fs: FrameSpan | None) -> None:
        """__tlb_remove_folio_pages_size() of each of `pfns` (int32 or int64), in order, as tables_fills() planned
        them (their cost is the caller's to spend): batches kept from an earlier flush are filled in turn,
        new ones allocated at once (_new_batches)."""
        a, b = 0, len(pfns)
        while a < b:
            batch = tlb.active
            take = min(batch.max - 1 - len(batch.pages), b - a)
            batch.pages.frombytes(pfns[a:a + take].astype(np.int64, copy=False).tobytes())
            a += take
            if len(batch.pages) < batch.max - 1:
                break
            if batch.next is None:
                self._new_batches(kernel, tlb, pfns[a:])
                break
            tlb.active = batch.next

    @staticmethod
    def _new_batches(kernel: Any, tlb: Any, pfns: np.ndarray) -> None:
        """The active batch is full and the last: tlb_next_batch() for it, and again for each new batch
        filled, the new batches taking `pfns` (max - 1 entries each; the last one, active, may be empty).
        The frames are the ones one allocation after another would give (alloc_many)."""
        per = kernel.MAX_GATHER_BATCH - 1
        k = 1 + len(pfns) // per
        frames = kernel.alloc.alloc_many(BATCH, k, GFP_NOWAIT)
        tlb.batch_count += k
        kernel.metrics.gather_memory(PAGE_SIZE * k)
        batch = tlb.active
        raw = np.ascontiguousarray(pfns, dtype=np.int64).data.cast("B")    # (one int64 copy; each batch a slice)
        size = per * 8
        for j, pfn in enumerate(frames):
            new = Batch618(pfn, kernel.MAX_GATHER_BATCH)
            new.pages.frombytes(raw[j * size:(j + 1) * size])
            batch.next = batch = new
        tlb.active = batch

    def tables_cycle(self, kernel: Any, c: Any, tlb: Any, limit: int) -> tuple | None:
        """zap_pte_range()'s forced-flush cycle as a pass may run it, when page `limit` of a run finds the
        gather full (tlb_next_batch() at MAX_GATHER_BATCH_COUNT): under the PTE lock
        tlb_flush_mmu_tlbonly() (a flush_tlb_mm_range() of the whole mm on this CPU alone, no IPI), after
        the unlock tlb_flush_mmu() freeing every batch (one free_pages_and_swap_cache() and one
        cond_resched() each), the batches kept, so the next flush comes `period` pages later. Returns
        (period, ns of the first flush step, ns of the later ones (a lazy CPU leaves the mm at the first),
        ns of the frees), or None when only the step path can tell: an arch other than x86 (native or
        KVM), another CPU in mm_cpumask, anything cached or reached that a flush or free would touch, a TLB
        generation ahead of the mm's, a table batch or delayed rmaps pending, GFP_NOWAIT failing, a gather
        not filled page by page, a first flush that could be a ranged one."""
        arch, mm, inv = self.arch, tlb.mm, kernel.invariants
        if (not self.cycle_on or tlb.batch is not None or tlb.delayed_rmap or kernel.alloc.fail_nowait
                or not mm.cpumask <= {c.id} or c.tlb or c.pwc or c.dangling or inv.tlb_refs or inv.pwc_refs
                or inv.walking or (c.loaded_mm is mm and c.per_cpu.get("tlb_gen", 0) > mm.tlb_gen)
                or not (tlb.fullmm or tlb.need_flush_all or limit >= arch.tlb_single_page_flush_ceiling)):
            return None
        per = kernel.MAX_GATHER_BATCH - 1
        period = self._period(kernel)
        if period <= 512 or per > kernel.MAX_NR_FOLIOS_PER_FREE:
            return None                                  # (a flush per table at most; a batch, one free)
        chain, room = [], 0
        b, seen = tlb.local, False
        while b is not None:
            if b.delayed:
                return None
            chain.append(b.pages)
            seen = seen or b is tlb.active
            if seen:
                room += b.max - 1 - len(b.pages)
            b = b.next
        room += (kernel.MAX_GATHER_BATCH_COUNT - tlb.batch_count) * per
        held = np.frombuffer(b"".join(chain), dtype=np.int64)
        if limit != room - 1 or len(held) + room != period or (len(held) and held.min() < 0):
            return None                                  # (pairs: a folio of several pages)
        costs = kernel.costs
        first = costs.flush_call + (costs.flush_full if c.loaded_mm is mm else 0)    # flush_tlb_func() here
        later = costs.flush_call if c.loaded_mm is mm and c.tlbstate == TLBSTATE_LAZY else first
        return (period, first, later,
                costs.page_free * period + costs.cond_resched * (1 + kernel.MAX_GATHER_BATCH_COUNT))

    @staticmethod
    def _period(kernel: Any) -> int:
        """The pages a gather of kept batches takes between two forced flushes: the local bundle and
        MAX_GATHER_BATCH_COUNT page batches, each used to max-1 entries."""
        return kernel.MMU_GATHER_BUNDLE - 1 + kernel.MAX_GATHER_BATCH_COUNT * (kernel.MAX_GATHER_BATCH - 1)

    def tables_flushes(self, kernel: Any, c: Any, tlb: Any, pfns: np.ndarray, fs: FrameSpan | None, limit: int,
                       nflush: int) -> None:
        """`pfns` (their rmaps already removed; `fs` their FrameSpan if known) batched in order through
        `nflush` cycles tables_cycle() planned, the first forced by pfns[limit]: the batch pages the first
        cycle allocates, each flush as flush_tlb_mm_range() runs it on this CPU alone (tlb_gen, the local
        flush; a lazy CPU switches to init_mm at the first), the pages freed in order (those batched
        before, then pfns up to the last flush's), the range reset, the pages after the last flush batched."""
        period = self._period(kernel)
        chain = []
        b = tlb.local
        while b is not None:
            chain.append(b)
            b = b.next
        held = np.frombuffer(b"".join([x.pages for x in chain]), dtype=np.int64)
        self.tables_add(kernel, c, tlb, pfns[:limit], None)     # (the batch pages it allocates)
        b = tlb.local
        while b is not None:
            b.pages = array("q")
            b = b.next
        tlb.active = tlb.local
        last = limit + (nflush - 1) * period + 1
        m, mm = kernel.metrics, tlb.mm
        m.tlb_flushes += nflush
        m.flushes_under_pte_lock += nflush
        mm.tlb_gen += nflush
        if c.loaded_mm is mm and c.tlbstate == TLBSTATE_LAZY:
            self.arch.load_cr3(c, None)                      # switch_mm_irqs_off(NULL, &init_mm)
            c.tlbstate = TLBSTATE_OK
        elif c.loaded_mm is mm:
            self.arch.tlb.flush_all(c)
            c.per_cpu["tlb_gen"] = mm.tlb_gen
        kernel.alloc.release_array(c, held)
        kernel.alloc.release_array(c, pfns[:last], fs=fs.prefix(pfns, last) if fs is not None else None)
        m.pages_per_flush.frombytes(np.full(nflush, period, dtype=np.int64).tobytes())
        kernel._tlb_reset_range(tlb)
        self.tables_add(kernel, c, tlb, pfns[last:], None)

    def tables_range(self, kernel: Any, tlb: Any, start: int, end: int) -> None:
        """tlb_flush_pte_range() of every PTE cleared in [start, end), at once."""
        kernel._tlb_adjust_range(tlb, start, end - start)
        tlb.cleared_ptes = True

    # ------------------------------------------------------------ ReleaseBackend
    def batches_run(self, kernel: Any, c: Any, batch: Any) -> FreedBatches | None:
        """tlb_batch_pages_flush()'s loop from `batch` on: a batch holds fewer than MAX_NR_FOLIOS_PER_FREE
        entries, so each is one free_pages_and_swap_cache() and one cond_resched(); the batches whose steps
        all start before the horizon go in one pass, up to the first one holding a frame something still
        reaches."""
        if c.preempt_count or c.irqs_off or not may_bulk(c):
            return None
        chain = []
        b = batch
        while b is not None and b.pages:
            chain.append(b)
            b = b.next
        lens = np.array([len(x.pages) for x in chain], dtype=np.int64)
        if lens.max() > kernel.MAX_NR_FOLIOS_PER_FREE:
            return None
        pfns = np.frombuffer(b"".join([x.pages for x in chain]), dtype=np.int64)
        pages = pfns >= 0
        if not pages.all():                               # (pfn, -nr_pages) pairs: the pfns only
            lens = np.add.reduceat(pages, np.cumsum(lens) - lens, dtype=np.int64)
            pfns = pfns[pages]
        cost, cond = kernel.costs.page_free, kernel.costs.cond_resched
        k = first_crossing(c.clock, c.clock + np.cumsum(cost * lens + cond), np.full(len(chain), cond), c.horizon)
        if k:
            k = release_flat(kernel, c, pfns, lens[:k])
        if not k:
            return None
        for x in chain[:k]:
            x.pages = array("q")
        n = int(lens[:k].sum())
        return FreedBatches(n, chain[k] if k < len(chain) else b, Elapse(cost * n + cond * k, P_COND_RESCHED))

