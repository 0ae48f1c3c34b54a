"""mm/memory.c v6.18: the zap walk of today's kernel (range-tracking gather, forced flush under the PTE
lock, delayed rmap, PT_RECLAIM of emptied PTE tables)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from mmugather.kernel.locking import COND_RESCHED, SpinLock, SpinUnlock
from mmugather.mm.memory import ZapUpperLevels, _vma_range, linear_page_index
from mmugather.mm.mm_types import MM_FILEPAGES
from mmugather.mm.page_alloc import ANON
from mmugather.mm.pgtable import (PAGE_SHIFT, PAGE_SIZE, PMD_SHIFT, PMD_SIZE, _PAGE_DIRTY, _PAGE_SPECIAL, addr_end,
                                  mk_pte, pmd_index, pte_index)
from mmugather.mm.protocols import Path

if TYPE_CHECKING:
    from mmugather.mm.arch_protocol import Arch618


class ZapDetails:
    """struct zap_details (v6.18): `reclaim_pt` asks zap_pte_range() to free PTE tables it empties
    (set by MADV_DONTNEED, CONFIG_PT_RECLAIM)."""

    __slots__ = ("reclaim_pt",)

    def __init__(self, reclaim_pt: bool = False) -> None:
        self.reclaim_pt = reclaim_pt


class Memory618(ZapUpperLevels):
    """The zap walk of Linux v6.18 (mm/memory.c): PTEs cleared under the PTE lock, each recorded in the
    gather's range (tlb_remove_tlb_entry); a full gather or a dirty shared file page forces a flush of the
    TLB (and of delayed rmaps) before the PTE lock is dropped, and a free of the batch after; so does
    need_resched() (without the flush); zap_pte_range() then retries from there; cond_resched() after every
    PMD entry. A special PTE (a PFN map, mm/pfnmap.py: vm_normal_page() is NULL) is only cleared and
    recorded in the range: no rmap, no RSS, nothing gathered.

    Fix switch (`--without-fix force_flush_range`, e6c495a96ce0 + 2b047252d087, v3.11): without it the
    forced flush of a full gather covers [addr, end), the PTEs this call has not zapped yet, instead of
    those it has, as 597e1c3580b7 (v3.6) set tlb->start/end before that flush. `delay_rmap` and
    `dirty_force_flush`: see _zap_dirty_file_pte()."""

    pfn_maps = True                    # the zap walk knows special PTEs (PFN maps, mm/pfnmap.py)
    if TYPE_CHECKING:
        arch: Arch618                  # 6.18's memory runs on a 6.18 arch (ARCHES["6.18"], arch/__init__.py)

    def fault_around_pages(self) -> int:
        """fault_around_pages, mm/memory.c v6.18 (fault_around_bytes >> PAGE_SHIFT, 16 in the kernel): the
        machine's `fault_around_pages` (0, off, unless a scenario sets it)."""
        return self.machine.scenario.machine.fault_around_pages

    def do_fault_around(self, c, vma, pt, addr: int) -> Path:
        """do_read_fault() -> do_fault_around() -> ->map_pages() = filemap_map_pages(), mm/memory.c and
        mm/filemap.c v6.18: the window of fault_around_pages PTEs around addr, aligned down to its size
        (`from_pte = max(ALIGN_DOWN(pte_off, nr_pages), pte_off - min(pte_off, vma_off))`) and clamped to
        the VMA and the PTE table (`to_pte = min3(from_pte + nr_pages, PTRS_PER_PTE, pte_off +
        vma_pages(vma) - vma_off) - 1`); under the PTE lock taken once, each page of the window that is in
        the page cache, not locked (folio_trylock()) and whose PTE is none is mapped read-only
        (set_pte_range() of a read fault; a shared mapping wants write notification) with its rmap, a
        reference and the RSS. Every cached, unlocked folio of the window is taken by next_uptodate_folio()
        (folio_try_get(), folio_trylock()) and put back after filemap_map_order0_folio() looked at its PTE,
        mapped or not: `map_pages_folio` each (under the PTE lock, as the kernel's loop), `map_pages` once per
        call. Returns True if addr's page was among them (VM_FAULT_NOPAGE: no
        __do_fault())."""
        nr = self.fault_around_pages()
        mm = vma.mm
        pte_off = pte_index(addr)
        vma_off = (addr - vma.start) >> PAGE_SHIFT
        from_pte = max(pte_off & ~(nr - 1), pte_off - min(pte_off, vma_off))
        to_pte = min(from_pte + nr, 512, pte_off + ((vma.end - vma.start) >> PAGE_SHIFT) - vma_off) - 1
        index0 = linear_page_index(vma, addr) - pte_off
        cache, locks = vma.file.page_cache, vma.file.folio_locks
        alloc = self.alloc
        mapped = walked = 0
        hit = False
        if self.costs.map_pages:
            yield self.costs.map_pages                           # rcu_read_lock(), the first folio, the PTE lookup
        yield SpinLock(pt.ptl)
        if mm.pte_tables.get(addr >> PMD_SHIFT) is pt:           # pte_offset_map_lock() found the same table
            for off in range(from_pte, to_pte + 1):              # (in one step: the cache is read as of now)
                pfn = cache.get(index0 + off)
                lock = locks.get(index0 + off)
                if pfn is None or (lock is not None and lock.owner is not None):
                    continue                                     # next_uptodate_folio() skips it untouched
                walked += 1                                      # taken, locked, checked, unlocked, put
                if pt.ptes[off] != 0:
                    continue                                     # filemap_map_order0_folio(): !pte_none()
                pt.ptes[off] = mk_pte(pfn, False)
                alloc.refcount[pfn] += 1
                alloc.mapcount[pfn] += 1
                mm.rss[MM_FILEPAGES] += 1
                mapped += 1
                hit = hit or off == pte_off
        if mapped:
            yield self.costs.pte_set * mapped
        if walked and self.costs.map_pages_folio:
            yield self.costs.map_pages_folio * walked
        yield SpinUnlock(pt.ptl)
        return hit

    def zap_pte_range(self, c, tlb, vma, pmd, addr: int, end: int, details) -> Path:
        """zap_pte_range(), mm/memory.c v6.18 (with do_zap_pte_range() and zap_present_ptes() for order-0
        folios; the 6.14+ form, read in the stored mm/memory.c whose zap_pte_range() has the
        `if (need_resched()) { direct_reclaim = false; break; }` of 6.14 and the 6.18 lines around it):
        each pass takes the PTE lock and zaps until the range ends, a full gather forces a break
        (force_break) or need_resched() asks for the CPU; a broken pass drops the lock (after the forced
        flush if any), cond_resched() and `goto retry` from where it stopped, keeping `start` and
        `can_reclaim_pt`. A table emptied whole is then freed (PT_RECLAIM): directly when no pass broke
        and the PMD lock was free (try_get_and_clear_pmd()), else after rechecking it under both locks
        (try_to_free_pte()). Returns the address it stopped at (< end only if the table went meanwhile)."""
        start = addr
        can_reclaim_pt = self.reclaim_pt_is_enabled(start, end, details)
        direct_reclaim = True
        while True:                                              # retry:
            yield self.tlb_change_page_size(c, tlb, PAGE_SIZE)
            pt = yield self.pte_offset_map_lock(c, pmd, addr)
            if pt is None:                                       # no table there any more (reclaimed)
                return addr
            addr, force_flush, force_break, broke, anon, file = yield self._zap_pte_pass(c, tlb, vma, pt, addr, end)
            if broke:
                direct_reclaim = False
            elif can_reclaim_pt and direct_reclaim:             # addr == end: the fast path of PT_RECLAIM
                direct_reclaim = yield self.try_get_and_clear_pmd(c, tlb.mm, pmd, start)
            self._add_mm_rss(tlb.mm, anon, file)
            if force_flush:                                      # do the actual TLB flush before dropping ptl
                if force_break and "force_flush_range" in self.without:
                    tlb.start, tlb.end = addr, end               # v3.6-v3.10: the PTEs not zapped yet (597e1c3580b7)
                yield self.tlb_flush_mmu_tlbonly(c, tlb)
                self.tlb_flush_rmaps(c, tlb, vma)
            yield SpinUnlock(pt.ptl)
            if force_flush:
                yield self.tlb_flush_mmu(c, tlb)
            if addr == end:
                break
            yield COND_RESCHED
        if can_reclaim_pt:
            if direct_reclaim:
                yield self.free_pte(c, tlb, pt, start)
            else:
                yield self.try_to_free_pte(c, tlb, pmd, start)
        return addr

    def pte_offset_map_lock(self, c, pmd, addr: int) -> Path:
        """pte_offset_map_lock() -> __pte_offset_map_lock(), mm/pgtable-generic.c (6.x): the PTE table the
        PMD entry points to, locked; after taking its lock, recheck the entry (`pmd_same()`) and start
        again if the table was unhooked meanwhile (PT_RECLAIM by another thread). None: no table."""
        while True:
            pt = pmd.entries.get(pmd_index(addr))
            if pt is None:
                return None
            yield SpinLock(pt.ptl)
            if pmd.entries.get(pmd_index(addr)) is pt:
                return pt
            yield SpinUnlock(pt.ptl)

    def _zap_pte_pass(self, c, tlb, vma, pt, addr: int, end: int) -> Path:
        """One pass of zap_pte_range()'s loop under the PTE lock (mm/memory.c v6.18): need_resched() is
        tested before each do_zap_pte_range() (a run of none entries and the present one after it; as
        need_resched() changes only between steps, testing it before every entry is the same). The zap
        backend may take the next run of entries at once (mm/protocols.py PteRun; the run records its range
        in the gather). Returns (addr, force_flush, force_break, broke: need_resched() or force_break, anon,
        file)."""
        c_zap, c_none = self.costs.pte_zap, self.costs.pte_none
        ptes = pt.ptes
        force_flush = force_break = broke = False
        anon = file = none = 0
        i = pte_index(addr)
        iend = i + ((end - addr) >> PAGE_SHIFT)
        pte_run, zap_present = self.zap_backend.pte_run, self.zap_present_ptes
        remove = self._tlb_remove_folio_pages_size
        while addr != end:
            if c.need_resched:                                   # direct_reclaim = false; break
                broke = True
                break
            run = pte_run(self, c, tlb, pt, addr, i, iend, none)
            if run is not None:                          # entries i..run.last at once, but for the last page
                addr, i, none, anon, file, pfn = yield from self._take_pte_run(run, addr, i, none, anon, file)
                if pfn < 0:                              # only empty entries left
                    break
                force_break = remove(c, tlb, pfn, 1, False)
            elif ptent := ptes[i]:
                pfn, anon, file, delay_rmap, force_flush = zap_present(tlb, vma, pt, i, addr, ptent, anon, file,
                                                                       force_flush)
                yield c_zap + none
                none = 0
                if pfn >= 0:
                    force_break = remove(c, tlb, pfn, 1, delay_rmap)
            else:
                none += c_none
            if force_break:
                force_flush = broke = True
                addr += PAGE_SIZE
                break
            i += 1
            addr += PAGE_SIZE
        if none:
            yield none
        return addr, force_flush, force_break, broke, anon, file

    def zap_present_ptes(self, tlb, vma, pt, i: int, addr: int, ptent: int, anon: int, file: int,
                         force_flush: bool) -> tuple[int, int, int, bool, bool]:
        """zap_present_ptes() -> zap_present_folio_ptes(), mm/memory.c v6.18, for an order-0 folio (nr = 1:
        the model maps no large folio), but for its last call: clear the PTE and record it in the gather's
        range (tlb_remove_tlb_entry()), take the page off its rss counter (`rss[]`, counted up here:
        `anon`, `file`); a dirty PTE of a file page marks the folio dirty and its rmap removal waits for the
        flush (_zap_dirty_file_pte()), any other page's is done now (folio_remove_rmap_ptes(), with
        print_bad_pte()'s check). The caller spends the step's cost, then makes the last call,
        __tlb_remove_folio_pages() (a full gather forces a flush and a break). Returns (pfn, anon, file,
        delay_rmap, force_flush: the kernel's `*force_flush`); pfn -1 when vm_normal_page() is NULL (a
        special PTE, the zero page)."""
        pt.ptes[i] = 0                                           # ptep_get_and_clear_full()
        self.tlb_flush_pte_range(tlb, addr, PAGE_SIZE)           # tlb_remove_tlb_entry()
        pfn = ptent >> PAGE_SHIFT
        if ptent & _PAGE_SPECIAL or pfn == self.alloc.zero_pfn:  # vm_normal_page() is NULL (a PFN map, the
            return -1, anon, file, False, force_flush           # zero page): nothing to unmap or gather
        delay_rmap = False
        if self.alloc.kind[pfn] == ANON:
            anon += 1
        else:
            file += 1
            if ptent & _PAGE_DIRTY:
                delay_rmap, force_flush = self._zap_dirty_file_pte(tlb, vma, addr, pfn, force_flush)
        if not delay_rmap:
            mapcount = self.alloc.mapcount                       # folio_remove_rmap_ptes()
            mapcount[pfn] -= 1
            if mapcount[pfn] < 0:
                raise AssertionError(f"zap_pte_range: pfn {pfn} mapcount < 0 (print_bad_pte)")
        return pfn, anon, file, delay_rmap, force_flush

    def _zap_dirty_file_pte(self, tlb, vma, addr: int, pfn: int, force_flush: bool) -> tuple[bool, bool]:
        """zap_present_folio_ptes(), mm/memory.c v6.18, for a dirty PTE of a file page: folio_mark_dirty(),
        and with tlb_delay_rmap() the rmap removal waits for the flush (tlb_flush_rmaps()), which is forced
        before the PTE lock drops. Returns (delay_rmap, force_flush).

        Without `delay_rmap` (5df397dec7c4, v6.2) the v3.15-v6.1 code: `force_flush = 1;
        set_page_dirty(page);` and page_remove_rmap() at once, so the folio is unmapped (folio_mkclean()
        skips it) while other CPUs' TLBs may still write to it. Without `dirty_force_flush` as well
        (1cf35d47712d, v3.15) the code before it: only set_page_dirty(page), the flush after the PTE lock
        drops, so folio_mkclean() can walk the emptied PTE before the flush."""
        self.folio_mark_dirty(vma.file, linear_page_index(vma, addr), pfn)
        if "delay_rmap" in self.without:
            return False, force_flush or "dirty_force_flush" not in self.without
        if self.tlb_delay_rmap(tlb):
            return True, True
        return False, force_flush

    def reclaim_pt_is_enabled(self, start: int, end: int, details) -> bool:
        """reclaim_pt_is_enabled(), mm/pt_reclaim.c (6.14+): `details && details->reclaim_pt && (end -
        start >= PMD_SIZE)`; without CONFIG_PT_RECLAIM (the arch's `pt_reclaim`), mm/internal.h's stub: false."""
        return self.arch.pt_reclaim and details is not None and details.reclaim_pt and end - start >= PMD_SIZE

    def try_get_and_clear_pmd(self, c, mm, pmd, addr: int) -> Path:
        """try_get_and_clear_pmd(), mm/pt_reclaim.c (6.14+), called under the PTE lock: spin_trylock() of
        the PMD lock (the model's pmd_lockptr() is mm->page_table_lock, as in pte_alloc() and mremap; x86-64
        has split PMD locks), then pmd_clear(). True if it got the lock."""
        pml = mm.page_table_lock
        if pml.owner is not None:                             # spin_trylock() failed
            return False
        yield SpinLock(pml)                                   # (granted at once: nothing runs in between)
        del pmd.entries[pmd_index(addr)]                      # pmd_clear()
        del mm.pte_tables[addr >> PMD_SHIFT]
        yield SpinUnlock(pml)
        return True

    def try_to_free_pte(self, c, tlb, pmd, addr: int) -> Path:
        """try_to_free_pte(), mm/pt_reclaim.c (6.14+): pmd_lock(), pte_offset_map_rw_nolock() (the table
        may be gone or another one), the PTE lock nested, every one of the PTRS_PER_PTE entries none?
        then pmd_clear(), unlock both, free_pte()."""
        mm = tlb.mm
        pml = mm.page_table_lock
        yield SpinLock(pml)
        pt = pmd.entries.get(pmd_index(addr))
        empty = False
        if pt is not None:
            yield SpinLock(pt.ptl)                            # spin_lock_nested(ptl, SINGLE_DEPTH_NESTING)
            empty = pt.ptes.count(0) == len(pt.ptes)
            if empty:
                del pmd.entries[pmd_index(addr)]              # pmd_clear()
                del mm.pte_tables[addr >> PMD_SHIFT]
            yield SpinUnlock(pt.ptl)
        yield SpinUnlock(pml)
        if empty:
            yield self.free_pte(c, tlb, pt, addr)

    def free_pte(self, c, tlb, pt, addr: int) -> Path:
        """free_pte(), mm/pt_reclaim.c (6.14+): pte_free_tlb() of the table at `addr`, mm_dec_nr_ptes()."""
        yield self.pte_free_tlb(c, tlb, pt, addr)
        tlb.mm.nr_ptes -= 1
        self.metrics.page_tables_reclaimed += 1

    def zap_pmd_range(self, c, tlb, vma, pmd, addr: int, end: int, details) -> Path:
        """zap_pmd_range(), mm/memory.c v6.18: zap each PTE table (`pmd--`: again at an entry whose
        zap_pte_range() stopped early, which since 6.14 only a table unhooked meanwhile does);
        cond_resched() after every entry (the `continue` for a none PMD reaches it too). The zap backend
        may take the next run of whole entries at once, the forced flushes of a full gather included
        (mm/protocols.py PmdRun), except in an mm with huge PMDs. A huge PMD (a PMD-mapped file folio,
        mm/huge_memory.py) is split when the range covers part of it (__split_huge_pmd(): for a file PMD
        that unmaps it whole), zapped with zap_huge_pmd() when it covers all of it."""
        huge = vma.mm.huge_pmds
        while True:
            if not huge:
                addr = yield from self._pmd_runs(c, tlb, pmd, addr, end, details)
                if addr == end:
                    return addr
            nxt = addr_end(addr, end, PMD_SIZE)
            if huge and addr >> PMD_SHIFT in huge:              # pmd_trans_huge(*pmd)
                if nxt - addr != PMD_SIZE:
                    yield self.split_huge_pmd(c, vma, addr)
                elif (yield self.zap_huge_pmd(c, tlb, vma, addr)):
                    addr = nxt
                    yield COND_RESCHED
                    if addr == end:
                        return addr
                    continue
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
        yield from super().unmap_page_range(c, tlb, vma, addr, end, details)
        yield self.tlb_end_vma(c, tlb, vma)

    def unmap_single_vma(self, c, tlb, vma, start_addr: int, end_addr: int, details) -> Path:
        """unmap_single_vma(), mm/memory.c v6.18: the part of vma inside [start_addr, end_addr)."""
        r = _vma_range(vma, start_addr, end_addr)
        if r is not None and r[0] != r[1]:
            yield self.unmap_page_range(c, tlb, vma, r[0], r[1], details)

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
