"""mm/memory.c v6.18: the zap walk of today's kernel (range-tracking gather, forced flush under the PTE
lock, delayed rmap, PT_RECLAIM of emptied PTE tables)."""
from __future__ import annotations

from mmugather.kernel.locking import COND_RESCHED, SpinLock, SpinUnlock
from mmugather.kernel.sched import Elapse
from mmugather.mm.memory import Memory, ZapUpperLevels
from mmugather.mm.page_alloc import ANON
from mmugather.mm.pgtable import PAGE_SHIFT, PAGE_SIZE, PMD_SHIFT, PMD_SIZE, _PAGE_DIRTY, addr_end, pmd_index, pte_index
from mmugather.mm.protocols import Path


class ZapDetails:
    """struct zap_details (v6.18): `reclaim_pt` asks zap_pte_range() to free PTE tables it empties
    (set by MADV_DONTNEED, CONFIG_PT_RECLAIM)."""

    __slots__ = ("reclaim_pt",)

    def __init__(self, reclaim_pt: bool = False) -> None:
        self.reclaim_pt = reclaim_pt


class Memory618(ZapUpperLevels, Memory):
    """The zap walk of Linux v6.18 (mm/memory.c): PTEs cleared under the PTE lock, each recorded in the
    gather's range (tlb_remove_tlb_entry); a full gather or a dirty shared file page forces a flush of the
    TLB (and of delayed rmaps) before the PTE lock is dropped, and a free of the batch after; cond_resched()
    after every PMD entry.

    Fix switch (`--without-fix force_flush_range`, e6c495a96ce0 + 2b047252d087, v3.11): without it the
    forced flush of a full gather covers [addr, end), the PTEs this call has not zapped yet, instead of
    those it has, as 597e1c3580b7 (v3.6) set tlb->start/end before that flush."""

    def zap_pte_range(self, c, tlb, vma, pmd, addr: int, end: int, details) -> Path:
        """zap_pte_range(), mm/memory.c v6.18 (with zap_present_ptes() for order-0 folios): returns the
        address it stopped at (< end when a full gather forced a break). The zap backend may take the next
        run of entries at once (mm/protocols.py PteRun; the run records its range in the gather)."""
        mm = tlb.mm
        pt = pmd.entries.get(pmd_index(addr))
        if pt is None:                                   # pte_offset_map_lock() failed: table reclaimed
            return addr
        ptes = pt.ptes
        costs = self.costs
        c_zap, c_none = costs.pte_zap, costs.pte_none
        kind, mapcount = self.alloc.kind, self.alloc.mapcount
        force_flush = force_break = False
        can_reclaim_pt = (details is not None and details.reclaim_pt and end - addr >= PMD_SIZE
                          and self.arch.pt_reclaim)          # reclaim_pt_is_enabled(): CONFIG_PT_RECLAIM
        start = addr
        yield self.tlb_change_page_size(c, tlb, PAGE_SIZE)
        anon = file = 0
        yield SpinLock(pt.ptl)
        i = pte_index(addr)
        iend = i + ((end - addr) >> PAGE_SHIFT)
        none = 0
        flush_pte_range, remove = self.tlb_flush_pte_range, self._tlb_remove_folio_pages_size
        pte_run = self.zap_backend.pte_run
        while True:
            run = pte_run(self, c, tlb, pt, addr, i, iend, none)
            if run is not None:                          # entries i..run.last at once, but for the last page
                addr += (run.last - i) << PAGE_SHIFT
                i = run.last
                anon += run.anon
                file += run.file
                if not run.n:                            # only empty entries left
                    none += run.ns
                    break
                yield run.ns
                none = 0
                if remove(c, tlb, run.pfn, 1, False):
                    force_flush = force_break = True
                    addr += PAGE_SIZE
                    break
            elif ptent := ptes[i]:
                ptes[i] = 0                                      # ptep_get_and_clear_full()
                flush_pte_range(tlb, addr, PAGE_SIZE)            # tlb_remove_tlb_entry()
                pfn = ptent >> PAGE_SHIFT
                delay_rmap = False
                if kind[pfn] == ANON:
                    anon += 1
                else:
                    file += 1
                    if ptent & _PAGE_DIRTY and self.tlb_delay_rmap(tlb):
                        delay_rmap = force_flush = True
                if not delay_rmap:
                    mapcount[pfn] -= 1                           # folio_remove_rmap_ptes()
                    if mapcount[pfn] < 0:
                        raise AssertionError(f"zap_pte_range: pfn {pfn} mapcount < 0 (print_bad_pte)")
                yield c_zap + none
                none = 0
                if remove(c, tlb, pfn, 1, delay_rmap):
                    force_flush = force_break = True
                    addr += PAGE_SIZE
                    break
            else:
                none += c_none
            i += 1
            addr += PAGE_SIZE
            if addr == end:
                break
        if none:
            yield none
        self._add_mm_rss(mm, anon, file)
        if force_flush:                                   # do the actual TLB flush before dropping ptl
            if force_break and "force_flush_range" in self.without:
                tlb.start, tlb.end = addr, end            # v3.6-v3.10: the PTEs not zapped yet (597e1c3580b7)
            yield self.tlb_flush_mmu_tlbonly(c, tlb)
            self.tlb_flush_rmaps(c, tlb, vma)
        yield SpinUnlock(pt.ptl)
        if force_flush:
            yield self.tlb_flush_mmu(c, tlb)
        if can_reclaim_pt and not force_break and addr == end:
            yield self.try_to_free_pte(c, tlb, pmd, pt, start)
        return addr

    def try_to_free_pte(self, c, tlb, pmd, pt, addr: int) -> Path:
        """try_get_and_clear_pmd() / try_to_free_pte() + free_pte(), mm/pt_reclaim.c v6.18: under the PMD
        lock, if every PTE is none, clear the PMD entry and pte_free_tlb() the table."""
        mm = tlb.mm
        yield SpinLock(mm.page_table_lock)
        empty = pmd.entries.get(pmd_index(addr)) is pt and pt.ptes.count(0) == len(pt.ptes)
        if empty:
            del pmd.entries[pmd_index(addr)]                  # pmd_clear()
            del mm.pte_tables[addr >> PMD_SHIFT]
        yield SpinUnlock(mm.page_table_lock)
        if empty:
            mm.nr_ptes -= 1                                   # mm_dec_nr_ptes()
            self.metrics.page_tables_reclaimed += 1
            yield self.pte_free_tlb(c, tlb, pt, addr & ~(PMD_SIZE - 1))

    def zap_pmd_range(self, c, tlb, vma, pmd, addr: int, end: int, details) -> Path:
        """zap_pmd_range(), mm/memory.c v6.18: zap each PTE table, retrying one that stopped early;
        cond_resched() after every entry (the `continue` for a none PMD reaches it too). The zap backend
        may take the next run of whole entries at once, the forced flushes of a full gather included
        (mm/protocols.py PmdRun)."""
        pmd_run = self.zap_backend.pmd_run
        while True:
            run = pmd_run(self, c, tlb, pmd, addr, end, details)
            if run is not None:
                addr = run.addr
                yield Elapse(run.ns, run.point)
                if addr == end:
                    return addr
                continue
            nxt = addr_end(addr, end, PMD_SIZE)
            if pmd_index(addr) not in pmd.entries:
                yield self.costs.pmd_none
                addr = nxt
            else:
                addr = yield self.zap_pte_range(c, tlb, vma, pmd, addr, nxt, details)
            yield COND_RESCHED
            if addr == end:
                return addr

    def unmap_page_range(self, c, tlb, vma, addr: int, end: int, details) -> Path:
        """unmap_page_range(), mm/memory.c v6.18: tlb_start_vma(), the walk (as v3.0's), tlb_end_vma()."""
        self.tlb_start_vma(c, tlb, vma)
        yield super().unmap_page_range(c, tlb, vma, addr, end, details)
        yield self.tlb_end_vma(c, tlb, vma)

    def unmap_single_vma(self, c, tlb, vma, start_addr: int, end_addr: int, details) -> Path:
        """unmap_single_vma(), mm/memory.c v6.18: the part of vma inside [start_addr, end_addr)."""
        start = max(vma.start, start_addr)
        if start >= vma.end:
            return
        end = min(vma.end, end_addr)
        if end <= vma.start:
            return
        if start != end:
            yield self.unmap_page_range(c, tlb, vma, start, end, details)

    def unmap_vmas(self, c, tlb, vmas: list, start_addr: int, end_addr: int, details=None) -> Path:
        """unmap_vmas(), mm/memory.c v6.18: mmu_notifier_invalidate_range_start(), unmap_single_vma() of
        every VMA, mmu_notifier_invalidate_range_end()."""
        if not vmas:
            return
        mm = vmas[0].mm
        yield self.mmu_notifier_invalidate_range_start(c, mm, start_addr, end_addr)
        for vma in vmas:
            yield self.unmap_single_vma(c, tlb, vma, start_addr, end_addr, details)
        yield self.mmu_notifier_invalidate_range_end(c, mm, start_addr, end_addr)

    def zap_page_range_single_batched(self, c, tlb, vma, address: int, size: int, details) -> Path:
        """zap_page_range_single_batched(), mm/memory.c v6.18: notifiers around unmap_single_vma() of
        [address, address + size) with the caller's gather."""
        end = address + size
        yield self.mmu_notifier_invalidate_range_start(c, vma.mm, address, end)
        yield self.unmap_single_vma(c, tlb, vma, address, end, details)
        yield self.mmu_notifier_invalidate_range_end(c, vma.mm, address, end)

    def zap_page_range_single(self, c, vma, address: int, size: int, details=None) -> Path:
        """zap_page_range_single(), mm/memory.c v6.18: a gather of its own around the batched zap."""
        tlb = yield self.tlb_gather_mmu(c, vma.mm, False)
        yield self.zap_page_range_single_batched(c, tlb, vma, address, size, details)
        yield self.tlb_finish_mmu(c, tlb, address, address + size)

    def zap_page_range(self, c, vma, address: int, size: int, details=None) -> Path:
        """The 6.18 kernel has no zap_page_range(); its callers use zap_page_range_single()."""
        yield self.zap_page_range_single(c, vma, address, size, details)

    def free_pgtables(self, c, tlb, vmas: list, floor: int, ceiling: int) -> Path:
        """free_pgtables(), mm/memory.c v6.18: tlb_free_vmas(), then as before (runs of VMAs no more than
        a PMD apart go down together, their tables through pte_free_tlb() and friends)."""
        yield self.tlb_free_vmas(c, tlb)
        yield super().free_pgtables(c, tlb, vmas, floor, ceiling)
