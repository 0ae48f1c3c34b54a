"""mm/memory.c v2.6.39: the zap walk with its zap_work budget."""
from __future__ import annotations

from mmugather.kernel.locking import COND_RESCHED, SpinLock, SpinUnlock, spin_needbreak
from mmugather.mm.memory import Memory, TlbRef, _vma_ranges
from mmugather.mm.pgtable import (
    PAGE_SIZE, PGDIR_SIZE, PMD_SIZE, PUD_SIZE, addr_end, pgd_index, pmd_index, pud_index,
)
from mmugather.mm.protocols import Path


class Memory2639(Memory):
    """The zap walk of Linux 2.6.39 (mm/memory.c v2.6.39): a zap_work budget of ZAP_BLOCK_SIZE bytes
    (PAGE_SIZE per present PTE, 1 per empty entry) bounds each gather; tlb_remove_page() may flush and free
    from inside zap_pte_range(), under the PTE lock."""

    def zap_block_size(self) -> int:
        """ZAP_BLOCK_SIZE: 8 pages with CONFIG_PREEMPT, 1024 otherwise."""
        return (8 if self.engine.full else 1024) * PAGE_SIZE

    def zap_pte_range(self, c, tlb, vma, pt, addr: int, end: int, zap_work: list, details) -> Path:
        """zap_pte_range(), mm/memory.c v2.6.39: the loop over the entries under the PTE lock
        (mm/memory/__init__.py `_zap_pte_loop`) with the zap_work budget; tlb_remove_page() flushes a full
        gather from inside it."""
        yield SpinLock(pt.ptl)
        addr, anon, file, none, work, _ = yield from self._zap_pte_loop(c, tlb, pt, addr, end, zap_work[0])
        zap_work[0] = work
        if none:
            yield none
        self._add_mm_rss(tlb.mm, anon, file)
        yield SpinUnlock(pt.ptl)
        return addr

    def zap_pmd_range(self, c, tlb, vma, pmd, addr: int, end: int, zap_work: list, details) -> Path:
        """zap_pmd_range(), mm/memory.c v2.6.39. The zap backend may take the next run of whole entries at
        once, ZAP_BLOCK restarts included (mm/protocols.py PmdRun)."""
        while True:
            addr = yield from self._pmd_runs(c, tlb, pmd, addr, end, details, zap_work)
            if addr == end or zap_work[0] <= 0:
                return addr
            nxt = addr_end(addr, end, PMD_SIZE)
            pt = pmd.entries.get(pmd_index(addr))
            if pt is None:
                zap_work[0] -= 1
                yield self.costs.pmd_none
            else:
                nxt = yield self.zap_pte_range(c, tlb, vma, pt, addr, nxt, zap_work, details)
            addr = nxt
            if addr == end or zap_work[0] <= 0:
                return addr

    def zap_pud_range(self, c, tlb, vma, pud, addr: int, end: int, zap_work: list, details) -> Path:
        """zap_pud_range(), mm/memory.c v2.6.39."""
        return (yield from self._zap_dir_range(c, tlb, vma, pud, addr, end, PUD_SIZE, pud_index,
                                               self.zap_pmd_range, details, zap_work))

    def unmap_page_range(self, c, tlb, vma, addr: int, end: int, zap_work: list, details) -> Path:
        """unmap_page_range(), mm/memory.c v2.6.39 (tlb_start_vma/tlb_end_vma are no-ops on x86)."""
        return (yield from self._zap_dir_range(c, tlb, vma, vma.mm.pgd, addr, end, PGDIR_SIZE, pgd_index,
                                               self.zap_pud_range, details, zap_work))

    def unmap_vmas(self, c, tlbp: TlbRef, vmas: list, start_addr: int, end_addr: int, details) -> Path:
        """unmap_vmas(), mm/memory.c v2.6.39: zap ZAP_BLOCK_SIZE at a time; after each block
        tlb_finish_mmu(), then (if need_resched() or spin_needbreak(i_mmap_lock): contended, and only
        under CONFIG_PREEMPT) cond_resched() or, holding i_mmap_lock, return the restart address with no
        gather left; then tlb_gather_mmu() again. The
        mmu_notifier range calls bracket it, inside the caller's gather (preemption off)."""
        zap_work = [self.zap_block_size()]
        fullmm = tlbp.tlb.fullmm
        mm = tlbp.tlb.mm
        start = start_addr
        i_mmap_lock = details.i_mmap_lock if details is not None else None
        yield self.mmu_notifier_invalidate_range_start(c, mm, start_addr, end_addr)
        for vma, start, end in _vma_ranges(vmas, start_addr, end_addr):
            while start != end:
                start = yield self.unmap_page_range(c, tlbp.tlb, vma, start, end, zap_work, details)
                if zap_work[0] > 0:
                    if start != end:
                        raise AssertionError("unmap_vmas: zap_work left but range not done")
                    break
                yield self.tlb_finish_mmu(c, tlbp.tlb, start, start)
                tlbp.tlb = None
                if c.need_resched or (i_mmap_lock is not None
                                      and spin_needbreak(i_mmap_lock, self.engine.full)):
                    if i_mmap_lock is not None:
                        yield self.mmu_notifier_invalidate_range_end(c, mm, start_addr, end_addr)
                        return start
                    yield COND_RESCHED
                tlbp.tlb = yield self.tlb_gather_mmu(c, mm, fullmm)
                zap_work[0] = self.zap_block_size()
        yield self.mmu_notifier_invalidate_range_end(c, mm, start_addr, end_addr)
        return start
