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

from collections.abc import Callable, Generator, Iterator
from typing import Any

from mmugather.kernel.locking import MIGHT_SLEEP, DownRead, MutexLock, MutexUnlock, SpinLock, SpinUnlock, UpRead
from mmugather.kernel.sched import Elapse
from mmugather.mm.kernel_part import KernelPart
from mmugather.mm.protocols import Path, PteRun
from mmugather.mm.mm_types import MM_ANONPAGES, MM_FILEPAGES, VM_PFNMAP, VM_READ, VM_SHARED, VM_WRITE
from mmugather.mm.page_alloc import ANON, FILE, GFP_KERNEL, PGTABLE
from mmugather.mm.pgtable import (
    PAGE_SHIFT, PAGE_SIZE, PGDIR_MASK, PGDIR_SIZE, PMD_MASK, PMD_SHIFT, PMD_SIZE, PUD_MASK,
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

    pmd_file_folios = False            # PMD-mapped file folios: 6.18 only (mm/huge_memory.py)

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
        if (vma is None or vma.start > addr or not vma.flags & (VM_WRITE if write else VM_READ)
                or vma.flags & VM_PFNMAP):           # remap_pfn_range() mapped it all, no ->fault: SIGBUS
            yield UpRead(mm.mmap_sem)
            self.metrics.segv += 1
            return False
        if self.pmd_file_folios and self.huge_pmd_fault(vma, addr, write) and (
                yield self.do_huge_pmd_fault(c, vma, addr, write)):
            yield UpRead(mm.mmap_sem)                       # a PMD maps a 2 MiB folio (mm/huge_memory.py)
            return True
        pt = yield self.pte_alloc(c, mm, addr)
        idx = pte_index(addr)
        ptent = pt.ptes[idx]
        if ptent == 0 and vma.file is None and not write:
            yield self.map_zero_page(c, mm, pt, addr)
        elif ptent == 0 and not write and self.fault_around_pages() > 1 and (
                yield self.do_fault_around(c, vma, pt, addr)):
            pass                                            # do_read_fault(): fault-around mapped it
        elif ptent == 0:
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

    def fault_around_pages(self) -> int:
        """fault_around_pages (mm/memory.c): no fault-around before 3.15 (the 6.18 memory reads the machine's)."""
        return 0

    def do_fault_around(self, c, vma, pt, addr: int) -> Path:
        """Only with fault_around_pages() > 1 (mm/memory/v6_18.py)."""
        raise NotImplementedError("do_fault_around: this kernel has no fault-around")
        yield

    def map_zero_page(self, c, mm, pt, addr: int) -> Path:
        """do_anonymous_page(), mm/memory.c (v2.6.32 on, v6.18 alike): "Use the zero-page for reads": under
        the PTE lock, a special read-only PTE of my_zero_pfn() if the entry is still none; no page is
        allocated or zeroed, no rmap or RSS kept (vm_normal_page() is NULL for it: the zap only clears it, a
        write copies it in do_wp_page())."""
        yield SpinLock(pt.ptl)
        yield self.costs.pte_set
        idx = pte_index(addr)
        if mm.pte_tables.get(addr >> PMD_SHIFT) is pt and pt.ptes[idx] == 0:
            pt.ptes[idx] = mk_pte(self.alloc.get_zero_pfn(), False)
            mm.zero_ptes = True
        yield SpinUnlock(pt.ptl)

    def _fault_page(self, c, vma, addr: int, write: bool) -> Path:
        """The page a not-present fault maps, obtained before the PTE lock is taken: a zeroed anonymous
        page, a page-cache page (with a reference for the mapping), or its private copy on a write fault.
        Returns (pfn, kind, writable)."""
        yield MIGHT_SLEEP
        costs = self.costs
        if vma.file is None:
            yield costs.page_alloc + costs.page_zero
            return self.alloc.alloc_page(ANON, GFP_KERNEL), ANON, bool(vma.flags & VM_WRITE)
        if costs.file_fault:
            yield costs.file_fault                      # __do_fault() -> filemap_fault()
        cache = vma.file.page_cache
        index = vma.pgoff + ((addr - vma.start) >> PAGE_SHIFT)
        pfn = cache.get(index)
        if pfn is None:
            pfn = cache[index] = self.alloc.alloc_page(FILE, GFP_KERNEL)
            yield costs.page_alloc + costs.page_zero
        if write and vma.flags & VM_SHARED and (mkwrite := self.page_mkwrite_ns(vma.file, index)):
            yield mkwrite                               # do_shared_fault() -> do_page_mkwrite()
        if write and not vma.flags & VM_SHARED:
            yield costs.page_alloc + costs.page_zero
            return self.alloc.alloc_page(ANON, GFP_KERNEL), ANON, True
        self.alloc.refcount[pfn] += 1
        # A shared writable mapping of a file that writes back wants write notification
        # (vma_wants_writenotify(), mm/mmap.c; mm/vma.c in 6.18): its vm_page_prot is read-only, and only a
        # write fault makes the PTE writable (maybe_mkwrite() under FAULT_FLAG_WRITE in __do_fault() of
        # 2.6.39/3.0, set_pte_range() of 6.18); a read fault maps the page read-only, so the first write
        # comes back through do_wp_page() -> wp_page_shared() (->page_mkwrite(), the page dirtied).
        return pfn, FILE, write

    def do_wp_page(self, c, vma, pt, addr: int) -> Path:
        """do_wp_page(), mm/memory.c: a write to a write-protected page. In a shared mapping:
        wp_page_shared(). Else an anonymous page no one else maps is reused (made writable: no flush
        needed to grant more); otherwise copy-on-write: a new anonymous copy, ptep_clear_flush() under the
        PTE lock (a TLB flush, IPIs included), then drop the old page (none for the zero page: the copy is
        a fresh zeroed page)."""
        mm = vma.mm
        idx = pte_index(addr)
        old = pt.ptes[idx]
        old_pfn = old >> PAGE_SHIFT
        if vma.file is not None and vma.flags & VM_SHARED and old:     # (not a shared anonymous zero page)
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
        if self.costs.wp_copy and old and old_pfn != self.alloc.zero_pfn:
            yield self.costs.wp_copy                        # wp_page_copy(): __wp_page_copy_user(), old rmap
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
            if old_pfn == self.alloc.zero_pfn:                  # no old folio: only the new page counts
                mm.rss[MM_ANONPAGES] += 1
            else:
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
        if mkwrite := self.page_mkwrite_ns(vma.file, index):
            yield mkwrite                                   # do_page_mkwrite()
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

    def page_mkwrite_ns(self, mapping, index: int) -> int:
        """The cost of ->page_mkwrite() for the folio holding page `index` of `mapping`: ext4_page_mkwrite()
        -> block_page_mkwrite() (fs/buffer.c) prepares and commits every block of the folio (`end =
        folio_size(folio)`), so a PMD-sized folio (mm/huge_memory.py) costs page_mkwrite_pmd more than one
        page."""
        if mapping.pmd_folios and mapping.pmd_folio_of(index) is not None:
            return self.costs.page_mkwrite + self.costs.page_mkwrite_pmd
        return self.costs.page_mkwrite

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
        yield from self._free_dir_table(c, tlb, pgd, pgd_index, pud, start, end, floor, ceiling, PGDIR_MASK,
                                        self.pud_free_tlb)

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
        yield from self._free_dir_table(c, tlb, pud, pud_index, pmd, start, end, floor, ceiling, PUD_MASK,
                                        self.pmd_free_tlb)

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

    def _free_dir_table(self, c, tlb, parent, index: Callable[[int], int], table, start: int, end: int,
                        floor: int, ceiling: int, mask: int, free_tlb: Callable[..., Path]) -> Path:
        """The tail of free_pmd_range() and free_pud_range(), mm/memory.c (the same in every modelled
        version): if [floor, ceiling) covers the whole span of `table` (`_covers()`), unhook it from
        `parent` (p?d_clear()) and hand it to the gather (`free_tlb`: pmd_free_tlb(), pud_free_tlb()).
        The model hands the gather the unmasked `start` where the kernel passes `start & mask`."""
        if not self._covers(start, end, floor, ceiling, mask):
            return
        del parent.entries[index(start)]
        yield free_tlb(c, tlb, table, start)

    @staticmethod
    def _covers(start: int, end: int, floor: int, ceiling: int, mask: int) -> bool:
        """The tail test of free_pmd_range()/free_pud_range(): may the upper table itself go? (`start &=
        mask; if (start < floor) return; if (ceiling) { ceiling &= mask; if (!ceiling) return; } if (end
        - 1 > ceiling - 1) return;`, unsigned.)"""
        start &= mask
        if start < floor:
            return False
        if ceiling:
            ceiling &= mask
            if not ceiling:
                return False
        return not (end - 1) & ULONG_MASK > (ceiling - 1) & ULONG_MASK

    # ------------------------------------------------------------ what every version's zap walk shares
    def _zap_dir_range(self, c, tlb, vma, table, addr: int, end: int, size: int, index: Callable[[int], int],
                       zap_lower: Callable[..., Path], details, zap_work: list[int] | None = None) -> Path:
        """The loop that unmap_page_range() runs over the PGD and zap_pud_range() over a PUD table, the
        same in mm/memory.c v2.6.39, v3.0 and v6.18 (p4d folded): `do { next = p?d_addr_end(addr, end);
        if (p?d_none_or_clear_bad(p?d)) continue; next = zap_lower(tlb, vma, p?d, addr, next, ...); }
        while (p?d++, addr = next, addr != end);`. 2.6.39 threads its zap_work budget through
        (`zap_work`: an empty entry costs 1, and the loop stops once the budget is spent). Not modelled:
        the cond_resched() after every PUD entry that zap_pud_range() has in the stored 6.x mm/memory.c
        (open: adding it moves the 6.18 goldens)."""
        while True:
            nxt = addr_end(addr, end, size)
            lower = table.entries.get(index(addr))
            if lower is None:
                if zap_work is not None:
                    zap_work[0] -= 1
                yield self.costs.pmd_none
            elif zap_work is None:
                nxt = yield zap_lower(c, tlb, vma, lower, addr, nxt, details)
            else:
                nxt = yield zap_lower(c, tlb, vma, lower, addr, nxt, zap_work, details)
            addr = nxt
            if addr == end or (zap_work is not None and zap_work[0] <= 0):
                return addr

    def _pmd_runs(self, c, tlb, pmd, addr: int, end: int, details,
                  zap_work: list[int] | None = None) -> Generator[Any, Any, int]:
        """zap_pmd_range()'s next iterations that the zap backend takes at once (mm/protocols.py PmdRun),
        run after run until it offers none, the range ends or 2.6.39's zap_work budget is spent. Returns
        the address from which the kernel code goes on step by step."""
        pmd_run = self.zap_backend.pmd_run
        while (run := pmd_run(self, c, tlb, pmd, addr, end, details, zap_work)) is not None:
            addr = run.addr
            yield Elapse(run.ns, run.point)
            if addr == end or (zap_work is not None and zap_work[0] <= 0):
                break
        return addr

    @staticmethod
    def _take_pte_run(run: PteRun, addr: int, i: int, none: int, anon: int,
                      file: int) -> Generator[Any, Any, tuple[int, int, int, int, int, int]]:
        """zap_pte_range()'s next entries that the zap backend took at once (mm/protocols.py PteRun), as
        every version's loop takes them: addr and the entry index move to the entry the run stopped at,
        the pages it zapped join the rss counts; if it zapped any, its cost is spent and its last page is
        returned for the caller to hand to the gather as its own step would (-1: only empty entries were
        left, whose cost joins the pending `none`). Returns (addr, i, none, anon, file, pfn)."""
        addr += (run.last - i) << PAGE_SHIFT
        anon += run.anon
        file += run.file
        if not run.n:
            return addr, run.last, none + run.ns, anon, file, -1
        yield run.ns
        return addr, run.last, 0, anon, file, run.pfn

    def _zap_pte_loop(self, c, tlb, pt, addr: int, end: int,
                      work: int | None) -> Generator[Any, Any, tuple[int, int, int, int, int | None, bool]]:
        """zap_pte_range()'s loop over the entries of PTE table pt, under its lock, mm/memory.c v2.6.39 and
        v3.0: the same code (ptep_get_and_clear_full(), the rss counters, page_remove_rmap() and
        print_bad_pte()'s check, the page to the gather) but for two points. `work` is 2.6.39's zap_work
        budget (a present PTE costs PAGE_SIZE, an empty one 1, and the loop stops once it is spent; None
        in 3.0); when the gather has no room, 2.6.39's tlb_remove_page() flushes at once, under the PTE
        lock, while 3.0 sets force_flush and breaks out before pte++ (its `goto again` rescans that, now
        empty, PTE). The zap backend may take the next run of entries at once (mm/protocols.py PteRun).
        Returns (addr, anon, file, none: the none cost still to spend, work, force_flush)."""
        ptes, c_zap, c_none = pt.ptes, self.costs.pte_zap, self.costs.pte_none
        kind, mapcount, zero_pfn = self.alloc.kind, self.alloc.mapcount, self.alloc.zero_pfn
        remove, pte_run = self._tlb_remove_page, self.zap_backend.pte_run
        anon = file = none = 0
        force_flush = False
        i = pte_index(addr)
        iend = i + ((end - addr) >> PAGE_SHIFT)
        while True:
            run = pte_run(self, c, tlb, pt, addr, i, iend, none, work)
            if run is not None:                         # entries i..run.last at once, but for the last page
                if work is not None:
                    work = run.work
                addr, i, none, anon, file, pfn = yield from self._take_pte_run(run, addr, i, none, anon, file)
                if pfn < 0:                             # only empty entries before the loop ends
                    break
                if not remove(c, tlb, pfn):
                    if work is None:                    # 3.0: force_flush, break
                        force_flush = True
                        break
                    yield self.tlb_flush_mmu(c, tlb)    # 2.6.39: tlb_remove_page() flushes at once
            elif ptent := ptes[i]:
                if work is not None:
                    work -= PAGE_SIZE
                ptes[i] = 0                             # ptep_get_and_clear_full()
                pfn = ptent >> PAGE_SHIFT
                normal = pfn != zero_pfn                # vm_normal_page() NULL (the zero page): `continue`
                if normal:
                    if kind[pfn] == ANON:
                        anon += 1
                    else:
                        file += 1
                    mapcount[pfn] -= 1                  # page_remove_rmap()
                    if mapcount[pfn] < 0:
                        raise AssertionError(f"zap_pte_range: pfn {pfn} mapcount < 0 (print_bad_pte)")
                yield c_zap + none
                none = 0
                if normal and not remove(c, tlb, pfn):
                    if work is None:                    # 3.0: force_flush, break before pte++
                        force_flush = True
                        break
                    yield self.tlb_flush_mmu(c, tlb)    # 2.6.39: nr >= FREE_PTE_NR
            else:
                if work is not None:
                    work -= 1
                none += c_none
            i += 1
            addr += PAGE_SIZE
            if addr == end or (work is not None and work <= 0):
                break
        return addr, anon, file, none, work, force_flush

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


def _vma_range(vma, start_addr: int, end_addr: int) -> tuple[int, int] | None:
    """The part [start, end) of vma inside [start_addr, end_addr), or None, as unmap_vmas()'s loop (v2.6.39,
    v3.0) and unmap_single_vma() (v6.18) clip it: `start = max(vma->vm_start, start_addr); if (start >=
    vma->vm_end) return; end = min(vma->vm_end, end_addr); if (end <= vma->vm_start) return;`."""
    start = max(vma.start, start_addr)
    if start >= vma.end:
        return None
    end = min(vma.end, end_addr)
    if end <= vma.start:
        return None
    return start, end


def _vma_ranges(vmas: list, start_addr: int, end_addr: int) -> Iterator[tuple[Any, int, int]]:
    """The head of unmap_vmas()'s loop, the same in mm/memory.c v2.6.39 and v3.0:
    `for ( ; vma && vma->vm_start < end_addr; vma = vma->vm_next)`, each VMA with its part inside the
    request (VMAs with none are skipped)."""
    for vma in vmas:
        if vma.start >= end_addr:
            break
        r = _vma_range(vma, start_addr, end_addr)
        if r is not None:
            yield vma, r[0], r[1]


class ZapUpperLevels(Memory):
    """zap_pud_range() and unmap_page_range()'s loop over the PGD, the same code in mm/memory.c v3.0 and
    v6.18 (p4d folded; 6.18 wraps unmap_page_range() in tlb_start_vma()/tlb_end_vma()). 2.6.39's thread
    its zap_work budget through (v2_6_39.py)."""

    def zap_pud_range(self, c, tlb, vma, pud, addr: int, end: int, details) -> Path:
        """zap_pud_range(), mm/memory.c v3.0/v6.18."""
        return (yield from self._zap_dir_range(c, tlb, vma, pud, addr, end, PUD_SIZE, pud_index,
                                               self.zap_pmd_range, details))

    def unmap_page_range(self, c, tlb, vma, addr: int, end: int, details) -> Path:
        """unmap_page_range(), mm/memory.c v3.0 (tlb_start_vma/tlb_end_vma are no-ops on x86)."""
        return (yield from self._zap_dir_range(c, tlb, vma, vma.mm.pgd, addr, end, PGDIR_SIZE, pgd_index,
                                               self.zap_pud_range, details))
