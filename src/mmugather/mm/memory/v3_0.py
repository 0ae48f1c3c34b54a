"""mm/memory.c v3.0: the zap walk of the preemptible mmu_gather."""
from __future__ import annotations

from mmugather.kernel.locking import COND_RESCHED, SpinLock, SpinUnlock
from mmugather.mm.memory import Memory, TlbRef, _vma_range
from mmugather.mm.memory.bulk import may_bulk, zap_steps, zap_tables
from mmugather.sim.engine import Elapse
from mmugather.mm.page_alloc import ANON
from mmugather.mm.pgtable import (
    PAGE_SHIFT, PAGE_SIZE, PGDIR_SIZE, PMD_SIZE, PUD_SIZE, addr_end, pgd_index, pmd_index, pte_index, pud_index,
)


class Memory30(Memory):
    """The zap walk of Linux 3.0 (mm/memory.c v3.0): one gather across the whole unmap_vmas(); when
    __tlb_remove_page() reports no room, zap_pte_range() drops the PTE lock, flushes, and starts again;
    cond_resched() after every PTE table (97a894136f29)."""

    def zap_pte_range(self, c, tlb, vma, pt, addr: int, end: int, details):
        """zap_pte_range(), mm/memory.c v3.0 (force_flush, goto again). On the fast path, runs of present
        PTEs that nothing can interleave with are zapped in one pass (mm/memory/bulk.py)."""
        mm = tlb.mm
        ptes = pt.ptes
        costs = self.costs
        c_zap, c_none = costs.pte_zap, costs.pte_none
        kind, mapcount = self.alloc.kind, self.alloc.mapcount
        remove = self._tlb_remove_page
        fast = self.fast
        while True:                                     # again:
            anon = file = 0
            force_flush = False
            yield SpinLock(pt.ptl)
            i = pte_index(addr)
            iend = i + ((end - addr) >> PAGE_SHIFT)
            none = 0
            while True:
                if fast and may_bulk(self, c):
                    quiet = self._tlb_quiet(tlb)
                    if quiet:
                        n, j, cost, pfns, nanon, _, _ = zap_steps(self, c, pt, i, iend, none, quiet)
                        addr += (j - i) << PAGE_SHIFT
                        i = j
                        if not n:                       # only empty entries left
                            none += cost
                            break
                        anon += nanon
                        file += n - nanon
                        self._tlb_add_quiet(tlb, pfns[:-1])
                        pfn = int(pfns[-1])
                        yield cost
                        none = 0
                        if not remove(c, tlb, pfn):
                            force_flush = True
                            break
                        i += 1
                        addr += PAGE_SIZE
                        if addr == end:
                            break
                        continue
                ptent = ptes[i]
                if ptent:
                    ptes[i] = 0                                 # ptep_get_and_clear_full()
                    pfn = ptent >> PAGE_SHIFT
                    if kind[pfn] == ANON:
                        anon += 1
                    else:
                        file += 1
                    mapcount[pfn] -= 1                          # page_remove_rmap()
                    if mapcount[pfn] < 0:
                        raise AssertionError(f"zap_pte_range: pfn {pfn} mapcount < 0 (print_bad_pte)")
                    yield c_zap + none
                    none = 0
                    if not remove(c, tlb, pfn):
                        force_flush = True      # break before pte++/addr += PAGE_SIZE, as v3.0 does:
                        break                   # `goto again` rescans this (now empty) PTE
                else:
                    none += c_none
                i += 1
                addr += PAGE_SIZE
                if addr == end:
                    break
            if none:
                yield none
            self._add_mm_rss(mm, anon, file)
            yield SpinUnlock(pt.ptl)
            # mmu_gather ran out of room to batch pages: break out of the PTE lock to avoid doing the
            # potentially expensive TLB invalidate and page-free while holding it.
            if force_flush:
                yield self.tlb_flush_mmu(c, tlb)
                if addr != end:
                    continue
            return addr

    def zap_pmd_range(self, c, tlb, vma, pmd, addr: int, end: int, details):
        """zap_pmd_range(), mm/memory.c v3.0: cond_resched() after each PTE table (none entries skip it).
        On the fast path, runs of whole tables are emulated in one pass (`_zap_tables_bulk`)."""
        while True:
            if self.fast and may_bulk(self, c):
                done = self._zap_tables_bulk(c, tlb, pmd, addr, end)
                if done is not None:
                    addr, ns, point = done
                    yield Elapse(ns, point)
                    if addr == end:
                        return addr
                    continue
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

    def _zap_tables_bulk(self, c, tlb, pmd, addr: int, end: int):
        """Fast path of zap_pmd_range() from addr: bulk.zap_tables() (each PMD entry one zap_pte_range()
        and cond_resched(), or a pmd_none step) when zap_pte_range() is this version's."""
        if type(self).zap_pte_range is not Memory30.zap_pte_range:
            return None
        return zap_tables(self, c, tlb, pmd, addr, end, cond_after_none=False)

    def zap_pud_range(self, c, tlb, vma, pud, addr: int, end: int, details):
        """zap_pud_range(), mm/memory.c v3.0."""
        while True:
            nxt = addr_end(addr, end, PUD_SIZE)
            pmd = pud.entries.get(pud_index(addr))
            if pmd is None:
                yield self.costs.pmd_none
            else:
                nxt = yield self.zap_pmd_range(c, tlb, vma, pmd, addr, nxt, details)
            addr = nxt
            if addr == end:
                return addr

    def unmap_page_range(self, c, tlb, vma, addr: int, end: int, details):
        """unmap_page_range(), mm/memory.c v3.0."""
        pgd = vma.mm.pgd
        while True:
            nxt = addr_end(addr, end, PGDIR_SIZE)
            pud = pgd.entries.get(pgd_index(addr))
            if pud is None:
                yield self.costs.pmd_none
            else:
                nxt = yield self.zap_pud_range(c, tlb, vma, pud, addr, nxt, details)
            addr = nxt
            if addr == end:
                return addr

    def unmap_vmas(self, c, tlbp: TlbRef, vmas: list, start_addr: int, end_addr: int, details):
        """unmap_vmas(), mm/memory.c v3.0: unmap_page_range() over every VMA in range with one gather,
        between mmu_notifier_invalidate_range_start() and _end() (which may sleep: the gather is
        preemptible now)."""
        start = start_addr
        mm = tlbp.tlb.mm
        yield self.mmu_notifier_invalidate_range_start(c, mm, start_addr, end_addr)
        for vma in vmas:
            if vma.start >= end_addr:
                break
            r = _vma_range(vma, start_addr, end_addr)
            if r is None:
                continue
            start, end = r
            while start != end:
                start = yield self.unmap_page_range(c, tlbp.tlb, vma, start, end, details)
        yield self.mmu_notifier_invalidate_range_end(c, mm, start_addr, end_addr)
        return start
