"""The Linux 6.18 gather: mm/mmu_gather.c and include/asm-generic/tlb.h v6.18, configured as an x86-64
KVM guest of that version is (CONFIG_MMU_GATHER_RCU_TABLE_FREE=y, SMP; CONFIG_PT_RECLAIM where the arch
selects it: `arch.pt_reclaim`)."""
from __future__ import annotations

from array import array
from collections.abc import Generator
from typing import TYPE_CHECKING, Any

from mmugather.kernel.locking import COND_RESCHED
from mmugather.kernel.smp import SmpCallFunctionMany
from mmugather.mm.mmu_gather import PAGE_SIZE, BatchedGather
from mmugather.mm.page_alloc import BATCH, GFP_NOWAIT
from mmugather.mm.pgtable import PAGE_SHIFT, PMD_SHIFT, PUD_SHIFT
from mmugather.mm.protocols import Path
from mmugather.mm.swap_state import free_pages_and_swap_cache

if TYPE_CHECKING:
    from mmugather.mm.arch_protocol import Arch618
    from mmugather.mm.mm_types import MmStruct

TASK_SIZE = 0x7FFF_FFFF_F000
FLUSH_ALL = (1 << 64) - 1                  # ~0UL


class Batch618:
    """struct mmu_gather_batch: next, nr, max, encoded_pages[] (an `array('q')`, read as one array by the
    fast path). An entry is a pfn, or for a folio of several pages the pair (pfn, -nr_pages)
    (ENCODED_PAGE_BIT_NR_PAGES_NEXT); `delayed` holds the indices whose rmap removal waits for the flush
    (ENCODED_PAGE_BIT_DELAY_RMAP)."""

    __slots__ = ("pfn", "pages", "max", "next", "delayed")

    def __init__(self, pfn: int | None, max_: int) -> None:
        self.pfn = pfn
        self.pages = array("q")
        self.max = max_
        self.next: Batch618 | None = None
        self.delayed: list[int] = []


class TableBatch:
    """struct mmu_table_batch: rcu head, nr, tables[MAX_TABLE_BATCH], in a page of its own."""

    __slots__ = ("pfn", "tables")

    def __init__(self, pfn: int) -> None:
        self.pfn = pfn
        self.tables: list[int] = []


class MmuGather618:
    """struct mmu_gather, include/asm-generic/tlb.h v6.18."""

    __slots__ = ("mm", "batch", "start", "end", "fullmm", "need_flush_all", "freed_tables", "delayed_rmap",
                 "cleared_ptes", "cleared_pmds", "cleared_puds", "cleared_p4ds", "vma_exec", "vma_huge",
                 "vma_pfn", "batch_count", "active", "local", "page_size")
    mm: MmStruct
    batch: TableBatch | None
    start: int
    end: int
    fullmm: bool
    need_flush_all: bool
    freed_tables: bool
    delayed_rmap: bool
    cleared_ptes: bool
    cleared_pmds: bool
    cleared_puds: bool
    cleared_p4ds: bool
    vma_exec: bool
    vma_huge: bool
    vma_pfn: bool
    batch_count: int
    active: Batch618
    local: Batch618
    page_size: int

    # on the stack of the task tearing down, x86-64: mm, batch (MMU_GATHER_TABLE_FREE), start, end, one
    # unsigned int of bitfields, batch_count, active, local {next, nr, max}, __pages[8] = 128; `page_size`
    # exists only under CONFIG_MMU_GATHER_PAGE_SIZE (powerpc), which no 6.18 arch of the model selects
    SIZEOF = 8 + 8 + 8 + 8 + 4 + 4 + 8 + 16 + 8 * 8

    def get_unmap_shift(self) -> int:
        """tlb_get_unmap_shift(): the stride of the lowest level cleared."""
        if self.cleared_ptes:
            return PAGE_SHIFT
        if self.cleared_pmds:
            return PMD_SHIFT
        if self.cleared_puds:
            return PUD_SHIFT
        if self.cleared_p4ds:
            return 39
        return PAGE_SHIFT


class Gather618(BatchedGather):
    """The 6.18 gather, as kernel methods (mm/mmu_gather.c, include/asm-generic/tlb.h, Linux v6.18).

    Fix switches (`--without-fix`) model the kernel before a fix, on this code:
    - `tlb_flush_pending` (99baac21e458, 56236a59556c; v4.13/v4.14): without it there is no
      inc/dec_tlb_flush_pending() and tlb_finish_mmu() never forces a flush for a nested gather.
    - `table_invalidate` (d86564a2f085, v4.19): without it tlb_table_invalidate() does nothing, as
      before HAVE_RCU_TABLE_INVALIDATE: a table batch or a single table goes to RCU (or to
      tlb_remove_table_one()) with no flush of the paging-structure caches first.
    - `mm_users_shortcut` (a6f572084fbe, v4.19): without it tlb_remove_table() frees the table at once
      when mm_users < 2, as since 267239116987 (v3.0): lazy-TLB CPUs are not counted in mm_users.
    - `pfnmap_flush` (b67fbebd4cf9, v5.19; CVE-2022-39188): without it tlb_free_vmas() does not flush
      for a VM_PFNMAP VMA before free_pgtables() unlinks it from the file's i_mmap.
    - `no_reset_range` (7a30df49f63a, v5.2): without it the nested gather's forced flush resets the range
      and re-adjusts it to [start, end), dropping freed_tables (the pre-fix tlb_flush_mmu_tlbonly()
      tested tlb->end only, so the flush still happens, but as a last-level flush that skips lazy CPUs).
    """

    MMU_GATHER_BUNDLE = 8
    MAX_TABLE_BATCH = (PAGE_SIZE - 16 - 8) // 8           # 509
    MAX_NR_FOLIOS_PER_FREE = 512
    PAGEVEC_SIZE = 31                  # include/linux/pagevec.h 6.x: free_pages_and_swap_cache()'s folio_batch
    if TYPE_CHECKING:
        arch: Arch618                  # a 6.18 gather runs on a 6.18 arch (ARCHES["6.18"], arch/__init__.py)

    # ------------------------------------------------------------ set-up and range tracking
    def tlb_gather_mmu(self, c, mm, fullmm: bool) -> Path:
        """tlb_gather_mmu() / tlb_gather_mmu_fullmm() -> __tlb_gather_mmu(), mm/mmu_gather.c v6.18."""
        yield 0
        tlb = MmuGather618()
        tlb.mm = mm
        tlb.fullmm = fullmm
        tlb.need_flush_all = False
        tlb.local = Batch618(None, self.MMU_GATHER_BUNDLE)
        tlb.active = tlb.local
        tlb.batch_count = 0
        tlb.delayed_rmap = False
        tlb.batch = None                                  # tlb_table_init()
        tlb.page_size = 0
        tlb.vma_exec = tlb.vma_huge = tlb.vma_pfn = False
        self._tlb_reset_range(tlb)
        if "tlb_flush_pending" not in self.without:
            mm.tlb_flush_pending += 1                     # inc_tlb_flush_pending()
        self.metrics.gather_memory(MmuGather618.SIZEOF)
        return tlb

    @staticmethod
    def _tlb_reset_range(tlb) -> None:
        """__tlb_reset_range(): an empty range, no level cleared, no table freed."""
        if tlb.fullmm:
            tlb.start = tlb.end = FLUSH_ALL
        else:
            tlb.start, tlb.end = TASK_SIZE, 0
        tlb.freed_tables = tlb.cleared_ptes = tlb.cleared_pmds = tlb.cleared_puds = tlb.cleared_p4ds = False

    @staticmethod
    def _tlb_adjust_range(tlb, address: int, size: int) -> None:
        """__tlb_adjust_range()."""
        if address < tlb.start:
            tlb.start = address
        if address + size > tlb.end:
            tlb.end = address + size

    def tlb_flush_pte_range(self, tlb, address: int, size: int) -> None:
        """tlb_flush_pte_range() (tlb_remove_tlb_entry() of a cleared PTE), with __tlb_adjust_range()
        written out: it runs once per PTE on the step path."""
        if address < tlb.start:
            tlb.start = address
        if address + size > tlb.end:
            tlb.end = address + size
        tlb.cleared_ptes = True

    def tlb_flush_pmd_range(self, tlb, address: int, size: int) -> None:
        """tlb_flush_pmd_range()."""
        self._tlb_adjust_range(tlb, address, size)
        tlb.cleared_pmds = True

    def tlb_flush_pud_range(self, tlb, address: int, size: int) -> None:
        """tlb_flush_pud_range()."""
        self._tlb_adjust_range(tlb, address, size)
        tlb.cleared_puds = True

    def tlb_flush_p4d_range(self, tlb, address: int, size: int) -> None:
        """tlb_flush_p4d_range()."""
        self._tlb_adjust_range(tlb, address, size)
        tlb.cleared_p4ds = True

    def tlb_change_page_size(self, c, tlb, page_size: int) -> Path:
        """tlb_change_page_size(): flush before mixing page sizes (CONFIG_MMU_GATHER_PAGE_SIZE arches:
        powerpc; a no-op on x86 and arm64, which do not select it)."""
        if self.arch.mmu_gather_page_size:
            if tlb.page_size and tlb.page_size != page_size and not tlb.fullmm and not tlb.need_flush_all:
                yield self.tlb_flush_mmu(c, tlb)
            tlb.page_size = page_size

    def tlb_start_vma(self, c, tlb, vma) -> None:
        """tlb_start_vma() -> tlb_update_vma_flags() (no-op for fullmm)."""
        if tlb.fullmm:
            return
        tlb.vma_pfn |= vma.pfnmap

    def tlb_end_vma(self, c, tlb, vma) -> Path:
        """tlb_end_vma(): flush and reset the range at VMA boundaries, unless fullmm or the arch selects
        CONFIG_MMU_GATHER_MERGE_VMAS (x86 does; arm64 does not)."""
        if tlb.fullmm or self.arch.mmu_gather_merge_vmas:
            return
        yield self.tlb_flush_mmu_tlbonly(c, tlb)

    def tlb_free_vmas(self, c, tlb) -> Path:
        """tlb_free_vmas(): flush now if a VM_PFNMAP/VM_MIXEDMAP VMA is about to be unlinked (vma_pfn), so
        that a driver's unmap_mapping_range() that no longer finds the VMA in i_mmap cannot return (and
        the driver free the frames) while TLBs still map them. Without the `pfnmap_flush` fix
        (b67fbebd4cf9, v5.19) there is no such flush: on an arch that selects MMU_GATHER_MERGE_VMAS (x86)
        tlb_end_vma() did not flush either, so the first flush came in tlb_finish_mmu()."""
        if tlb.fullmm or "pfnmap_flush" in self.without:
            return
        if tlb.vma_pfn:
            yield self.tlb_flush_mmu_tlbonly(c, tlb)

    # ------------------------------------------------------------ flushing
    def tlb_flush_mmu_tlbonly(self, c, tlb) -> Path:
        """tlb_flush_mmu_tlbonly(), asm-generic/tlb.h v6.18: flush the TLBs for the gathered range if
        anything was cleared or freed, then reset the range."""
        if not (tlb.freed_tables or tlb.cleared_ptes or tlb.cleared_pmds or tlb.cleared_puds or tlb.cleared_p4ds):
            return
        yield self.tlb_flush(c, tlb)
        self._tlb_reset_range(tlb)

    def tlb_flush_mmu(self, c, tlb) -> Path:
        """tlb_flush_mmu(), mm/mmu_gather.c v6.18: tlb_flush_mmu_tlbonly(), then tlb_flush_mmu_free():
        tlb_table_flush() and tlb_batch_pages_flush()."""
        yield self.tlb_flush_mmu_tlbonly(c, tlb)
        yield self.tlb_table_flush(c, tlb)
        yield self.tlb_batch_pages_flush(c, tlb)

    def tlb_finish_mmu(self, c, tlb, start: int, end: int) -> Path:
        """tlb_finish_mmu(), mm/mmu_gather.c v6.18: when another gather on this mm is in flight
        (mm_tlb_flush_nested()), force a flush of everything including page-table caches; flush; free
        the batch pages; dec_tlb_flush_pending()."""
        mm = tlb.mm
        if "tlb_flush_pending" not in self.without and mm.tlb_flush_pending > 1:
            if "no_reset_range" in self.without:
                self._tlb_reset_range(tlb)                    # arch_tlb_finish_mmu(..., force), v4.14-v5.1
                self._tlb_adjust_range(tlb, start, end - start)
                tlb.cleared_ptes = True                       # the flush then tested tlb->end only
            else:
                tlb.fullmm = True
                self._tlb_reset_range(tlb)
                tlb.freed_tables = True
        yield self.tlb_flush_mmu(c, tlb)
        self.tlb_batch_list_free(c, tlb)
        if "tlb_flush_pending" not in self.without:
            mm.tlb_flush_pending -= 1                         # dec_tlb_flush_pending()
        self.metrics.gather_memory(-MmuGather618.SIZEOF)

    # ------------------------------------------------------------ page batching
    def tlb_next_batch(self, c, tlb) -> bool:
        """tlb_next_batch(), mm/mmu_gather.c v6.18: no new batch while delayed rmaps are pending outside
        the local one; then as in 3.0 (mm/mmu_gather/__init__.py), at most MAX_GATHER_BATCH_COUNT batch
        pages."""
        if tlb.delayed_rmap and tlb.active is not tlb.local:
            return False
        return super().tlb_next_batch(c, tlb)

    def batch_count_limited(self) -> bool:
        return True

    def new_batch(self, pfn: int) -> Batch618:
        return Batch618(pfn, self.MAX_GATHER_BATCH)

    def _tlb_remove_folio_pages_size(self, c, tlb, pfn: int, nr_pages: int, delay_rmap: bool) -> bool:
        """__tlb_remove_folio_pages_size(), mm/mmu_gather.c v6.18: batch the page (a folio of several
        pages takes two entries: page and nr_pages); keep room for two more entries; True when no room
        can be had (the caller must flush)."""
        batch = tlb.active
        pages = batch.pages
        if delay_rmap:
            batch.delayed.append(len(pages))
        if nr_pages == 1:
            pages.append(pfn)
        else:
            pages.append(pfn)
            pages.append(-nr_pages)
        if len(pages) >= batch.max - 1:
            if not self.tlb_next_batch(c, tlb):
                return True
        return False

    def _tlb_remove_page(self, c, tlb, pfn: int) -> bool:
        """__tlb_remove_page() -> __tlb_remove_page_size(tlb, page, PAGE_SIZE): True = must flush."""
        return self._tlb_remove_folio_pages_size(c, tlb, pfn, 1, False)

    def tlb_remove_page(self, c, tlb, pfn: int) -> Path:
        """tlb_remove_page(): batch the page, tlb_flush_mmu() if the gather is full."""
        if self._tlb_remove_page(c, tlb, pfn):
            yield self.tlb_flush_mmu(c, tlb)

    def tlb_delay_rmap(self, tlb) -> bool:
        """tlb_delay_rmap() (CONFIG_SMP): set delayed_rmap and say yes."""
        tlb.delayed_rmap = True
        return True

    def tlb_flush_rmaps(self, c, tlb, vma) -> None:
        """tlb_flush_rmaps(), mm/mmu_gather.c v6.18: after the flush, do the rmap removals that were
        delayed (dirty shared file pages), in the local batch and the active one only."""
        if not tlb.delayed_rmap:
            return
        batches = [tlb.local] if tlb.active is tlb.local else [tlb.local, tlb.active]
        mapcount = self.alloc.mapcount
        for batch in batches:
            for i in batch.delayed:
                pfn = batch.pages[i]
                n = -batch.pages[i + 1] if i + 1 < len(batch.pages) and batch.pages[i + 1] < 0 else 1
                mapcount[pfn] -= n                        # folio_remove_rmap_ptes()
            batch.delayed = []
        tlb.delayed_rmap = False

    def tlb_batch_pages_flush(self, c, tlb) -> Path:
        """tlb_batch_pages_flush(), mm/mmu_gather.c v6.18: __tlb_batch_free_encoded_pages() of every batch
        that holds pages; rewind to the local batch (the batch pages are kept)."""
        freed = yield from self._free_batches(c, tlb, self._tlb_batch_free_encoded_pages, to_empty=True)
        if freed:
            self.metrics.pages_per_flush.append(freed)
        tlb.active = tlb.local

    def _tlb_batch_free_encoded_pages(self, c, batch: Batch618) -> Generator[Any, Any, int]:
        """__tlb_batch_free_encoded_pages(), mm/mmu_gather.c v6.18: free the batch's pages, at most
        MAX_NR_FOLIOS_PER_FREE entries (plus a trailing nr_pages entry) between cond_resched() calls.
        Returns the pages freed."""
        freed = 0
        pages = batch.pages
        while pages:
            nr = min(self.MAX_NR_FOLIOS_PER_FREE, len(pages))
            if nr < len(pages) and pages[nr] < 0:
                nr += 1
            chunk, pages = pages[:nr], pages[nr:]
            pfns = [p for p in chunk if p >= 0]
            freed += len(pfns)
            yield free_pages_and_swap_cache(self, c, pfns)
            yield COND_RESCHED
        batch.pages = array("q")
        return freed

    def tlb_batch_list_free(self, c, tlb) -> None:
        """tlb_batch_list_free(): give back the batch pages."""
        batch = tlb.local.next
        while batch is not None:
            self.alloc.free_page(c, batch.pfn)
            self.metrics.gather_memory(-PAGE_SIZE)
            batch = batch.next
        tlb.local.next = None

    # ------------------------------------------------------------ page-table freeing (RCU)
    def tlb_remove_table(self, c, tlb, pfn: int) -> Path:
        """tlb_remove_table(), mm/mmu_gather.c v6.18: batch the table page in a page-sized table batch
        (GFP_NOWAIT); flush the batch when it holds MAX_TABLE_BATCH tables; when no batch page can be
        had, tlb_table_invalidate() and free the one table after a grace period (PT_RECLAIM: call_rcu).
        Without the `mm_users_shortcut` fix (a6f572084fbe), v3.0-v4.18's first test: with fewer than two
        users of the mm "there cannot be a concurrent page-table walk", so __tlb_remove_table() at once."""
        if "mm_users_shortcut" in self.without and tlb.mm.users < 2:
            self.alloc.free_page(c, pfn)                      # __tlb_remove_table(table)
            yield self.costs.pgtable_free
            return
        if tlb.batch is None:
            bpfn = self.alloc.alloc_page(BATCH, GFP_NOWAIT)
            yield self.costs.page_alloc
            if bpfn < 0:
                yield self.tlb_table_invalidate(c, tlb)
                yield self.tlb_remove_table_one(c, pfn)
                return
            tlb.batch = TableBatch(bpfn)
            self.metrics.gather_memory(PAGE_SIZE)
        tlb.batch.tables.append(pfn)
        if len(tlb.batch.tables) == self.MAX_TABLE_BATCH:
            yield self.tlb_table_flush(c, tlb)

    def tlb_table_invalidate(self, c, tlb) -> Path:
        """tlb_table_invalidate(): tlb_needs_table_invalidate() (true on x86 and arm64): flush the TLB and
        paging-structure caches before the tables go to RCU. Without the `table_invalidate` fix
        (d86564a2f085, v4.19) there is no such flush: RCU table freeing gave no TLB invalidation."""
        if "table_invalidate" in self.without:
            return
        if self.arch.tlb_needs_table_invalidate:
            yield self.tlb_flush_mmu_tlbonly(c, tlb)

    def tlb_table_flush(self, c, tlb) -> Path:
        """tlb_table_flush(): invalidate, then hand the table batch to call_rcu()."""
        batch = tlb.batch
        if batch is None:
            return
        yield self.tlb_table_invalidate(c, tlb)
        tlb.batch = None
        self.engine.rcu.call_rcu(c, self._tlb_remove_table_rcu(batch))

    def _tlb_remove_table_rcu(self, batch: TableBatch):
        def tlb_remove_table_rcu(cpu) -> None:
            """tlb_remove_table_rcu() -> __tlb_remove_table_free(): free each table, then the batch page."""
            self.release_backend.free_pages(self, cpu, batch.tables + [batch.pfn])
            self.metrics.gather_memory(-PAGE_SIZE)
        return tlb_remove_table_rcu

    def tlb_remove_table_one(self, c, pfn: int) -> Path:
        """tlb_remove_table_one(), mm/mmu_gather.c v6.18. With CONFIG_PT_RECLAIM (the arch selects
        ARCH_SUPPORTS_PT_RECLAIM): __tlb_remove_table_one(), call_rcu() on the table's own rcu head
        (pt_rcu_head), so it is freed after a grace period. Without: tlb_remove_table_sync_one()
        (smp_call_function() of an empty handler, waiting for every other CPU: none is inside an IRQs-off
        walk once it answers), then __tlb_remove_table() at once."""
        if self.arch.pt_reclaim:
            def tlb_remove_table_one_rcu(cpu, pfn=pfn) -> None:
                self.alloc.free_page(cpu, pfn)
            self.engine.rcu.call_rcu(c, tlb_remove_table_one_rcu)
            return
        yield self.tlb_remove_table_sync_one(c)
        self.alloc.free_page(c, pfn)
        yield self.costs.pgtable_free

    def tlb_remove_table_sync_one(self, c) -> Path:
        """tlb_remove_table_sync_one(), mm/mmu_gather.c (MMU_GATHER_RCU_TABLE_FREE; empty without it):
        smp_call_function(tlb_remove_table_smp_sync, NULL, 1), an IPI to every other CPU, waiting for each:
        a CPU inside an IRQs-off lockless walk (gup_fast) answers only once it has left it."""
        if not self.arch.have_rcu_table_free:
            return
        others = [x.id for x in self.engine.cpus if x is not c]
        if others:
            yield SmpCallFunctionMany(others, _tlb_remove_table_smp_sync)

    def pte_free_tlb(self, c, tlb, pt, address: int) -> Path:
        """pte_free_tlb(): tlb_flush_pmd_range(address, PAGE_SIZE), freed_tables = 1, then the arch's
        ___pte_free_tlb() -> tlb_remove_ptdesc() -> tlb_remove_table()."""
        self.tlb_flush_pmd_range(tlb, address, PAGE_SIZE)
        tlb.freed_tables = True
        yield self.tlb_remove_table(c, tlb, pt.pfn)

    def pmd_free_tlb(self, c, tlb, pmd, address: int) -> Path:
        """pmd_free_tlb(): tlb_flush_pud_range(), freed_tables = 1, tlb_remove_table()."""
        self.tlb_flush_pud_range(tlb, address, PAGE_SIZE)
        tlb.freed_tables = True
        yield self.tlb_remove_table(c, tlb, pmd.pfn)

    def pud_free_tlb(self, c, tlb, pud, address: int) -> Path:
        """pud_free_tlb(): tlb_flush_p4d_range(), freed_tables = 1, tlb_remove_table()."""
        self.tlb_flush_p4d_range(tlb, address, PAGE_SIZE)
        tlb.freed_tables = True
        yield self.tlb_remove_table(c, tlb, pud.pfn)

    def gather_static_bytes(self, ncpus: int) -> int:
        """No per-CPU gather storage."""
        return 0


def _tlb_remove_table_smp_sync(t) -> int:
    """tlb_remove_table_smp_sync(): simply deliver the interrupt."""
    return 0
