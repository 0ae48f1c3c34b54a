"""mm/memory.c v3.0: the zap walk of the preemptible mmu_gather."""
from __future__ import annotations

from mmugather.kernel.locking import COND_RESCHED, SpinLock, SpinUnlock
from mmugather.mm.memory import TlbRef, ZapUpperLevels, _vma_ranges
from mmugather.mm.pgtable import PMD_SIZE, addr_end, pmd_index
from mmugather.mm.protocols import Path


class Memory30(ZapUpperLevels):
    """The zap walk of Linux 3.0 (mm/memory.c v3.0): one gather across the whole unmap_vmas(); when
    __tlb_remove_page() reports no room, zap_pte_range() drops the PTE lock, flushes, and starts again;
    cond_resched() after every PTE table (97a894136f29)."""

    def zap_pte_range(self, c, tlb, vma, pt, addr: int, end: int, details) -> Path:
        """zap_pte_range(), mm/memory.c v3.0 (force_flush, goto again): the loop over the entries under
        the PTE lock as 2.6.39's (mm/memory/__init__.py `_zap_pte_loop`), but a gather with no room makes
        it break out, drop the lock, flush and start again."""
        while True:                                     # again:
            yield SpinLock(pt.ptl)
            addr, anon, file, none, _, force_flush = yield from self._zap_pte_loop(c, tlb, pt, addr, end, None)
            if none:
                yield none
            self._add_mm_rss(tlb.mm, anon, file)
            yield SpinUnlock(pt.ptl)
            # mmu_gather ran out of room to batch pages: break out of the PTE lock to avoid doing the
            # potentially expensive TLB invalidate and page-free while holding it.
            if force_flush:
                yield self.tlb_flush_mmu(c, tlb)
                if addr != end:
                    continue
            return addr

    def zap_pmd_range(self, c, tlb, vma, pmd, addr: int, end: int, details) -> Path:
        """zap_pmd_range(), mm/memory.c v3.0: cond_resched() after each PTE table (none entries skip it).
        The zap backend may take the next run of whole entries at once (mm/protocols.py PmdRun)."""
        while True:
            addr = yield from self._pmd_runs(c, tlb, pmd, addr, end, details)
            if addr == end:
                return addr
            nxt = addr_end(addr, end, PMD_SIZE)
            pt = pmd.entries.get(pmd_index(addr))
            if pt is None:
                yield self.costs.pmd_none
            else:
                nxt = yield self.zap_pte_range(c, tlb, vma, pt, addr, nxt, details)
                yield COND_RESCHED
            addr = nxt
            if addr == end:
                return addr

    def unmap_vmas(self, c, tlbp: TlbRef, vmas: list, start_addr: int, end_addr: int, details) -> Path:
        """unmap_vmas(), mm/memory.c v3.0: unmap_page_range() over every VMA in range with one gather,
        between mmu_notifier_invalidate_range_start() and _end() (which may sleep: the gather is
        preemptible now)."""
        start = start_addr
        mm = tlbp.tlb.mm
        yield self.mmu_notifier_invalidate_range_start(c, mm, start_addr, end_addr)
        for vma, start, end in _vma_ranges(vmas, start_addr, end_addr):
            while start != end:
                start = yield self.unmap_page_range(c, tlbp.tlb, vma, start, end, details)
        yield self.mmu_notifier_invalidate_range_end(c, mm, start_addr, end_addr)
        return start
