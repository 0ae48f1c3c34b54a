"""mm/memory.c: page faults, page-table allocation and freeing, and the zap (unmap) walk.

This package holds what the modelled versions share; v2_6_39.py, v3_0.py and v6_18.py hold each version's
zap walk.

`Memory` holds what Linux 2.6.39 and 3.0 share (the fault path, free_pgtables and its helpers,
zap_page_range); `Memory2639` and `Memory30` hold the zap walk of each version, which is where the seed
(d16dfc550f53) and 97a894136f29 changed it. Kernel paths are generators taking the CPU they run on.

No speed-up lives here: the loops ask their backend (mm/protocols.py) for runs of steps to take at once,
and the backend is chosen when the Simulation is built (src/mmugather/fastpath/ or step by step).
"""
from __future__ import annotations

from mmugather.kernel.locking import MIGHT_SLEEP, DownRead, MutexLock, MutexUnlock, SpinLock, SpinUnlock, UpRead
from mmugather.mm.kernel_part import KernelPart
from mmugather.mm.protocols import Path
from mmugather.mm.mm_types import MM_ANONPAGES, MM_FILEPAGES, VM_READ, VM_SHARED, VM_WRITE
from mmugather.mm.page_alloc import ANON, FILE, GFP_KERNEL, PGTABLE
from mmugather.mm.pgtable import (
    PAGE_SHIFT, PGDIR_MASK, PGDIR_SIZE, PMD_MASK, PMD_SHIFT, PMD_SIZE, PUD_MASK,
    PUD_SIZE, ULONG_MASK, _PAGE_DIRTY, _PAGE_RW, DirTable, PteTable, addr_end, mk_pte, pgd_index, pmd_index,
    pte_index, pud_index,
)


def linear_page_index(vma, addr: int) -> int:
    """linear_page_index(), include/linux/pagemap.h: the file page index vma maps at addr."""
    return vma.pgoff + ((addr - vma.start) >> PAGE_SHIFT)


class TlbRef:
    """`struct mmu_gather **tlbp`: 2.6.39's unmap_vmas may finish the gather and start a new one (or leave
    none); 3.0 passes `&tlb` of its on-stack gather. One box serves both callers' code."""

    __slots__ = ("tlb",)

    def __init__(self, tlb) -> None:
        self.tlb = tlb


class Memory(KernelPart):
    """The parts of mm/memory.c that Linux 2.6.39 and 3.0 share."""

    # ------------------------------------------------------------ page tables
    def pmd_table(self, mm, addr: int) -> DirTable:
        """The PMD table covering addr, allocating and hooking missing upper levels (__pud_alloc,
        __pmd_alloc; set-up and the paths that move tables)."""
        alloc = self.alloc
        pud = mm.pgd.entries.get(pgd_index(addr))
        if pud is None:
            pud = mm.pgd.entries[pgd_index(addr)] = DirTable(alloc.alloc_page(PGTABLE))
        pmd = pud.entries.get(pud_index(addr))
        if pmd is None:
            pmd = pud.entries[pud_index(addr)] = DirTable(alloc.alloc_page(PGTABLE))
        return pmd

    def install_pte_table(self, mm, addr: int) -> PteTable:
        """Allocate and hook every missing level down to the PTE table for addr (set-up and faults)."""
        pmd = self.pmd_table(mm, addr)
        pt = pmd.entries.get(pmd_index(addr))
        if pt is None:
            pt = pmd.entries[pmd_index(addr)] = PteTable(self.alloc.alloc_page(PGTABLE), addr & PMD_MASK)
            mm.pte_tables[addr >> PMD_SHIFT] = pt
            mm.nr_ptes += 1
        return pt

    def pte_alloc(self, c, mm, addr: int) -> Path:
        """__pud_alloc/__pmd_alloc/__pte_alloc(): allocate missing levels (GFP_KERNEL, may sleep), hook them
        under mm->page_table_lock. Returns the PTE table."""
        pt = mm.pte_tables.get(addr >> PMD_SHIFT)
        if pt is not None:
            return pt
        yield MIGHT_SLEEP
        yield self.costs.page_alloc
        yield SpinLock(mm.page_table_lock)
        pt = self.install_pte_table(mm, addr)
        yield SpinUnlock(mm.page_table_lock)
        return pt

    # ------------------------------------------------------------ faults
    def do_page_fault(self, c, task, addr: int, write: bool) -> Path:
        """do_page_fault() (arch/x86/mm/fault.c) -> handle_mm_fault() -> handle_pte_fault() ->
        do_anonymous_page()/__do_fault()/do_wp_page() (mm/memory.c, v2.6.39 and v3.0).
        Returns False for a bad access (SIGSEGV), True once the PTE maps addr."""
        mm = task.mm
        self.metrics.faults += 1
        yield self.costs.fault_entry
        yield MIGHT_SLEEP
        yield DownRead(mm.mmap_sem)
        vma = mm.find_vma(addr)
        if vma is None or vma.start > addr or not vma.flags & (VM_WRITE if write else VM_READ):
            yield UpRead(mm.mmap_sem)
            self.metrics.segv += 1
            return False
        pt = yield self.pte_alloc(c, mm, addr)
        idx = pte_index(addr)
        ptent = pt.ptes[idx]
        if ptent == 0:
            pfn, kind, writable = yield self._fault_page(c, vma, addr, write)
            yield SpinLock(pt.ptl)
            yield self.costs.pte_set
            if mm.pte_tables.get(addr >> PMD_SHIFT) is not pt:
                # pte_offset_map_lock() revalidates the PMD under the PTE lock (v6.x: the table may have
                # been reclaimed meanwhile, PT_RECLAIM): drop the page and let the access fault again
                yield SpinUnlock(pt.ptl)
                self.alloc.put_page(c, pfn)
                yield UpRead(mm.mmap_sem)
                return True
            if pt.ptes[idx] == 0:
                pt.ptes[idx] = mk_pte(pfn, writable)
                self.alloc.mapcount[pfn] += 1
                mm.rss[MM_ANONPAGES if kind == ANON else MM_FILEPAGES] += 1
                if kind == FILE and writable:               # do_shared_fault() -> fault_dirty_shared_page()
                    self.folio_mark_dirty(vma.file, linear_page_index(vma, addr), pfn)
            else:
                self.alloc.put_page(c, pfn)
            yield SpinUnlock(pt.ptl)
        elif write and not ptent & _PAGE_RW:
            yield self.do_wp_page(c, vma, pt, addr)
        yield UpRead(mm.mmap_sem)
        return True

    def _fault_page(self, c, vma, addr: int, write: bool) -> Path:
        """The page a not-present fault maps, obtained before the PTE lock is taken: a zeroed anonymous
        page, a page-cache page (with a reference for the mapping), or its private copy on a write fault.
        Returns (pfn, kind, writable)."""
        yield MIGHT_SLEEP
        costs = self.costs
        if vma.file is None:
            yield costs.page_alloc + costs.page_zero
            return self.alloc.alloc_page(ANON, GFP_KERNEL), ANON, bool(vma.flags & VM_WRITE)
        cache = vma.file.page_cache
        index = vma.pgoff + ((addr - vma.start) >> PAGE_SHIFT)
        pfn = cache.get(index)
        if pfn is None:
            pfn = cache[index] = self.alloc.alloc_page(FILE, GFP_KERNEL)
            yield costs.page_alloc + costs.page_zero
        if write and not vma.flags & VM_SHARED:
            yield costs.page_alloc + costs.page_zero
            return self.alloc.alloc_page(ANON, GFP_KERNEL), ANON, True
        self.alloc.refcount[pfn] += 1
        return pfn, FILE, bool(vma.flags & VM_SHARED and vma.flags & VM_WRITE)

    def do_wp_page(self, c, vma, pt, addr: int) -> Path:
        """do_wp_page(), mm/memory.c: a write to a write-protected page. In a shared mapping:
        wp_page_shared(). Else an anonymous page no one else maps is reused (made writable: no flush
        needed to grant more); otherwise copy-on-write: a new anonymous copy, ptep_clear_flush() under the
        PTE lock (a TLB flush, IPIs included), then drop the old page."""
        mm = vma.mm
        idx = pte_index(addr)
        old = pt.ptes[idx]
        old_pfn = old >> PAGE_SHIFT
        if vma.flags & VM_SHARED and old and self.alloc.kind[old_pfn] == FILE:
            yield self.wp_page_shared(c, vma, pt, addr)
            return
        if (old and not old & _PAGE_RW and self.alloc.kind[old_pfn] == ANON and self.alloc.mapcount[old_pfn] == 1
                and self.alloc.refcount[old_pfn] == 1):
            yield SpinLock(pt.ptl)
            if pt.ptes[idx] == old:
                pt.ptes[idx] = old | _PAGE_RW | _PAGE_DIRTY     # reuse: wp_page_reuse()
            yield SpinUnlock(pt.ptl)
            return
        yield MIGHT_SLEEP
        yield self.costs.page_alloc + self.costs.page_zero
        new = self.alloc.alloc_page(ANON, GFP_KERNEL)
        idx = pte_index(addr)
        yield SpinLock(pt.ptl)
        old = pt.ptes[idx]
        if old and not old & _PAGE_RW:
            pt.ptes[idx] = 0
            yield self.arch.flush_tlb_page(c, mm, addr)
            pt.ptes[idx] = mk_pte(new, True)
            old_pfn = old >> PAGE_SHIFT
            self.alloc.mapcount[new] += 1
            self.alloc.mapcount[old_pfn] -= 1
            if self.alloc.kind[old_pfn] != ANON:
                mm.rss[MM_FILEPAGES] -= 1
                mm.rss[MM_ANONPAGES] += 1
            self.alloc.put_page(c, old_pfn)
        else:
            self.alloc.put_page(c, new)
        yield SpinUnlock(pt.ptl)

    def wp_page_shared(self, c, vma, pt, addr: int) -> Path:
        """wp_page_shared(), mm/memory.c (v6.x, the ->page_mkwrite path: ext4, xfs): a write to a page of a
        shared mapping that writeback write-protected (folio_mkclean()). do_page_mkwrite() locks the folio
        (waiting for a writeback that holds it), finish_mkwrite_fault() rechecks the PTE under the PTE lock
        (pte_same(): else the fault is retried) and wp_page_reuse() makes it writable and dirty (granting
        more needs no flush); then fault_dirty_shared_page() -> folio_mark_dirty() and folio_unlock()."""
        idx = pte_index(addr)
        old = pt.ptes[idx]
        index = linear_page_index(vma, addr)
        lock = vma.file.folio_lock_of(index)
        yield MIGHT_SLEEP
        yield MutexLock(lock)
        yield SpinLock(pt.ptl)
        yield self.costs.pte_set
        same = pt.ptes[idx] == old                          # pte_same(): nobody changed it meanwhile
        if same:
            pt.ptes[idx] = old | _PAGE_RW | _PAGE_DIRTY
        yield SpinUnlock(pt.ptl)
        if same:
            self.folio_mark_dirty(vma.file, index, old >> PAGE_SHIFT)
        yield MutexUnlock(lock)

    def put_page_now(self, c, pfn: int) -> None:
        """free_page_and_swap_cache() of a gather in fast mode: the reference goes at once."""
        self.alloc.put_page(c, pfn)
        c.clock += self.costs.page_free

    def _add_mm_rss(self, mm, anon: int, file: int) -> None:
        """add_mm_rss_vec() at the end of zap_pte_range(): the pages zapped come off the RSS counters."""
        mm.rss[MM_ANONPAGES] -= anon
        mm.rss[MM_FILEPAGES] -= file
        self.metrics.pages_unmapped += anon + file

    # ------------------------------------------------------------ freeing page tables
    def free_pgtables(self, c, tlb, vmas: list, floor: int, ceiling: int) -> Path:
        """free_pgtables(), mm/memory.c v2.6.39/v3.0: for each run of VMAs no more than a PMD apart, free
        the page tables under [first start, last end) that lie wholly within [floor, ceiling)."""
        i = 0
        while i < len(vmas):
            addr = vmas[i].start
            yield self.unlink_anon_vmas(c, vmas[i])         # hide vma from rmap and truncate_pagecache
            yield self.unlink_file_vma(c, vmas[i])          # before freeing page tables
            while i + 1 < len(vmas) and vmas[i + 1].start <= vmas[i].end + PMD_SIZE:
                i += 1
                yield self.unlink_anon_vmas(c, vmas[i])
                yield self.unlink_file_vma(c, vmas[i])
            nxt = vmas[i + 1].start if i + 1 < len(vmas) else ceiling
            yield self.free_pgd_range(c, tlb, addr, vmas[i].end, floor, nxt)
            i += 1

    def free_pgd_range(self, c, tlb, addr: int, end: int, floor: int, ceiling: int) -> Path:
        """free_pgd_range(), mm/memory.c v2.6.39/v3.0 (unsigned arithmetic as in C: ceiling 0 is the top)."""
        addr &= PMD_MASK
        if addr < floor:
            addr += PMD_SIZE
            if not addr & ULONG_MASK:
                return
        if ceiling:
            ceiling &= PMD_MASK
            if not ceiling:
                return
        if (end - 1) & ULONG_MASK > (ceiling - 1) & ULONG_MASK:
            end -= PMD_SIZE
        if addr > (end - 1) & ULONG_MASK:
            return
        pgd = tlb.mm.pgd
        while True:
            nxt = addr_end(addr, end, PGDIR_SIZE)
            pud = pgd.entries.get(pgd_index(addr))
            if pud is None:
                yield self.costs.pmd_none
            else:
                yield self.free_pud_range(c, tlb, pgd, pud, addr, nxt, floor, ceiling)
            addr = nxt
            if addr == end:
                return

    def free_pud_range(self, c, tlb, pgd, pud, addr: int, end: int, floor: int, ceiling: int) -> Path:
        """free_pud_range(), mm/memory.c: free the PMD tables below, then this PUD table if [floor, ceiling)
        covers its whole PGDIR_SIZE span."""
        start = addr
        while True:
            nxt = addr_end(addr, end, PUD_SIZE)
            pmd = pud.entries.get(pud_index(addr))
            if pmd is not None:
                yield self.free_pmd_range(c, tlb, pud, pmd, addr, nxt, floor, ceiling)
            addr = nxt
            if addr == end:
                break
        if not self._covers(start, end, floor, ceiling, PGDIR_MASK):
            return
        del pgd.entries[pgd_index(start)]
        yield self.pud_free_tlb(c, tlb, pud, start)

    def free_pmd_range(self, c, tlb, pud, pmd, addr: int, end: int, floor: int, ceiling: int) -> Path:
        """free_pmd_range(), mm/memory.c: free the PTE tables below, then this PMD table if covered. The
        table-free backend may take a run of free_pte_range() calls at once (mm/protocols.py)."""
        start = addr
        while True:
            nxt = addr_end(addr, end, PMD_SIZE)
            if pmd_index(addr) in pmd.entries:
                run = self.table_backend.pte_tables(self, c, tlb, pmd, addr, end)
                if run is not None:                     # free_pte_range() calls up to the last one's
                    yield run.ns                        # pte_free_tlb(), which goes on as its call would
                    yield self.pte_free_tlb(c, tlb, run.last, run.last_addr)
                    addr = run.addr
                    if addr == end:
                        break
                    continue
                yield self.free_pte_range(c, tlb, pmd, addr)
            addr = nxt
            if addr == end:
                break
        if not self._covers(start, end, floor, ceiling, PUD_MASK):
            return
        del pud.entries[pud_index(start)]
        yield self.pmd_free_tlb(c, tlb, pmd, start)

    def free_pte_range(self, c, tlb, pmd, addr: int) -> Path:
        """free_pte_range(), mm/memory.c: pmd_clear(), then pte_free_tlb() and nr_ptes--."""
        mm = tlb.mm
        pt = pmd.entries.pop(pmd_index(addr))
        del mm.pte_tables[addr >> PMD_SHIFT]
        mm.nr_ptes -= 1
        yield self.costs.pgtable_free
        yield self.pte_free_tlb(c, tlb, pt, addr)

    def _free_table_tlb(self, c, tlb, table) -> Path:
        """What the asm-generic pte_free_tlb(), pmd_free_tlb() and pud_free_tlb() of v2.6.39/v3.0 share on
        x86: tlb->need_flush = 1, then the arch's ___p?d_free_tlb(): tlb_remove_page() of the table page
        (freed with the pages, after the flush)."""
        tlb.need_flush = True
        yield self.tlb_remove_page(c, tlb, table.pfn)

    def pte_free_tlb(self, c, tlb, pt, addr: int) -> Path:
        """pte_free_tlb(), asm-generic/tlb.h v2.6.39/v3.0, x86 ___pte_free_tlb()."""
        yield self._free_table_tlb(c, tlb, pt)

    def pmd_free_tlb(self, c, tlb, pmd, addr: int) -> Path:
        """pmd_free_tlb(), asm-generic/tlb.h v2.6.39/v3.0, x86 ___pmd_free_tlb()."""
        yield self._free_table_tlb(c, tlb, pmd)

    def pud_free_tlb(self, c, tlb, pud, addr: int) -> Path:
        """pud_free_tlb(), asm-generic/tlb.h v2.6.39/v3.0, x86 ___pud_free_tlb()."""
        yield self._free_table_tlb(c, tlb, pud)

    @staticmethod
    def _covers(start: int, end: int, floor: int, ceiling: int, mask: int) -> bool:
        """The tail test of free_pmd_range()/free_pud_range(): may the upper table itself go?"""
        start &= mask
        if start < floor:
            return False
        if ceiling:
            ceiling &= mask
            if not ceiling:
                return False
        return not (end - 1) & ULONG_MASK > (ceiling - 1) & ULONG_MASK

    # ------------------------------------------------------------ zap_page_range
    def zap_page_range(self, c, vma, address: int, size: int, details=None) -> Path:
        """zap_page_range(), mm/memory.c v2.6.39/v3.0: gather, update_hiwater_rss, unmap_vmas, finish
        (2.6.39: only if unmap_vmas left a gather)."""
        mm = vma.mm
        end = address + size
        ref = TlbRef((yield self.tlb_gather_mmu(c, mm, False)))
        end = yield self.unmap_vmas(c, ref, [vma], address, end, details)      # callers clip to vma
        if ref.tlb is not None:
            yield self.tlb_finish_mmu(c, ref.tlb, address, end)
        return end


def _vma_range(vma, start_addr: int, end_addr: int):
    """The clipping at the top of unmap_vmas()'s loop: [start, end) of vma inside the request, or None."""
    start = max(vma.start, start_addr)
    if start >= vma.end:
        return None
    end = min(vma.end, end_addr)
    if end <= vma.start:
        return None
    return start, end


class ZapUpperLevels(KernelPart):
    """zap_pud_range() and unmap_page_range()'s loop over the PGD, the same code in mm/memory.c v3.0 and
    v6.18 (p4d folded; 6.18 wraps unmap_page_range() in tlb_start_vma()/tlb_end_vma()). 2.6.39's thread
    its zap_work budget through (v2_6_39.py)."""

    def zap_pud_range(self, c, tlb, vma, pud, addr: int, end: int, details) -> Path:
        """zap_pud_range(), mm/memory.c v3.0/v6.18."""
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

    def unmap_page_range(self, c, tlb, vma, addr: int, end: int, details) -> Path:
        """unmap_page_range(), mm/memory.c v3.0 (tlb_start_vma/tlb_end_vma are no-ops on x86)."""
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
