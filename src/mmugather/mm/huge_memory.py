"""mm/huge_memory.c v6.18, and the PMD paths of mm/memory.c and mm/filemap.c that lead to it: a file folio
of PMD size (2 MiB) mapped by one PMD, then split or zapped.

Followed (read through the search tools): mm/memory.c and mm/huge_memory.c of linux-mm/linux-mm (009857a2
and 00cb34b0, a tree a little past 6.18: pmd_is_huge() where 6.18 tests is_swap_pmd() || pmd_trans_huge(),
softleaf entries where 6.18 has swap entries; the branches modelled here, for a present file PMD, are the
6.18 ones), mm/filemap.c (009cff43). Where the host kernel (6.18.44, ext4 in /tmp) takes these paths,
shown by benchmarks/wis_flush3_probe.c: in will-it-scale's tlb_flush3 loop over a 2 MiB folio every
iteration counts thp_split_pmd 2, thp_file_mapped 2 and pgfault 2 in /proc/vmstat (docs/host.md):

- the write `addr[i] = 1` finds the PMD mapped read-only: __handle_mm_fault() -> wp_huge_pmd() (ext4 has no
  ->huge_fault) -> __split_huge_pmd(), which for a file VMA just clears the PMD and flushes it
  (pmdp_huge_clear_flush()); then handle_pte_fault() with the PMD none -> do_shared_fault(): __do_fault()
  preallocates a PTE table and calls filemap_fault(), do_page_mkwrite() runs ext4_page_mkwrite() over the
  whole folio, finish_fault() finds the PMD none and the folio PMD-sized: do_set_pmd() maps it writable
  and dirty; do_fault() frees the unused PTE table;
- madvise(MADV_DONTNEED) of the 4 KiB page: zap_pmd_range() finds a huge PMD and a range smaller than it:
  __split_huge_pmd() again (clear + flush); the PMD is then none and nothing else is zapped;
- the read `addr[i]`: do_read_fault() -> do_fault_around() preallocates a PTE table, filemap_map_pages() ->
  filemap_map_pmd() -> do_set_pmd() maps the folio read-only (a shared mapping wants write notification),
  and the table is freed again.

munmap() of a whole 2 MiB zaps the PMD with zap_huge_pmd(): cleared, recorded in the gather at PMD stride
(tlb_remove_pmd_tlb_entry()), the folio reference handed to the gather (tlb_remove_page_size()) to drop
after the flush. On x86 no page table is deposited for a file PMD (arch_needs_pgtable_deposit() is false),
and flush_pmd_tlb_range() is the generic flush_tlb_range() (x86 does not define
__HAVE_ARCH_FLUSH_PMD_TLB_RANGE): 4 KiB stride over 2 MiB, so a full flush, with freed_tables set (every
CPU of the mm, lazy ones too). arm64's own flush_pmd_tlb_range() (PMD stride) is not modelled: its
flush_tlb_range() invalidates at least as much.

Not modelled: anonymous THP (do_huge_pmd_anonymous_page(), the deposited table, a split into PTEs),
mprotect/mremap/fork/GUP/truncate/writeback over a huge PMD (a scenario with PMD-sized folios may not use
them: Simulation._check_pmd_folio_ops()), PTE-mapping a large folio whole (finish_fault()'s nr_pages > 1;
where the VMA does not suit a PMD the model maps one page per fault as before), the split PMD lock (pmd_lock()
is the mm's page_table_lock here: one lock for all PMD tables of the mm, where x86-64 has one per PMD
table), and readahead's folio sizes (the page cache starts with its folios: a file's `pmd_folios_from`).
"""
from __future__ import annotations

from mmugather.kernel.locking import MIGHT_SLEEP, MutexLock, MutexUnlock, SpinLock, SpinUnlock
from mmugather.mm.kernel_part import KernelPart
from mmugather.mm.memory import linear_page_index
from mmugather.mm.mm_types import MM_FILEPAGES, VM_SHARED
from mmugather.mm.pgtable import (HPAGE_PMD_NR, PAGE_SHIFT, PMD_MASK, PMD_SHIFT, PMD_SIZE, _PAGE_DIRTY, _PAGE_RW,
                                  mk_pmd)
from mmugather.mm.protocols import Path


def thp_vma_suitable_order(vma, haddr: int) -> bool:
    """thp_vma_suitable_order(vma, haddr, PMD_ORDER), include/linux/huge_mm.h: a file VMA whose pages are
    2 MiB-aligned in the file as in memory (`IS_ALIGNED((vm_start >> PAGE_SHIFT) - vm_pgoff,
    HPAGE_PMD_NR)`), covering the whole 2 MiB at haddr."""
    if not vma.anonymous and ((vma.start >> PAGE_SHIFT) - vma.pgoff) % HPAGE_PMD_NR:
        return False
    return vma.start <= haddr and haddr + PMD_SIZE <= vma.end


class HugeMemory618(KernelPart):
    """PMD-mapped file folios in Linux v6.18 (see the module docstring)."""

    pmd_file_folios = True             # the page cache may hold PMD-sized folios (a file's pmd_folios_from)

    def huge_pmd_fault(self, vma, addr: int, write: bool) -> bool:
        """Whether __handle_mm_fault() handles this fault at the PMD: a huge PMD maps addr, or the PMD is
        none and the fault will map the page-cache folio itself (a read, or a write through a shared
        mapping: do_read_fault()/do_shared_fault() -> finish_fault()) and that folio is PMD-sized and the
        VMA suits a PMD there (do_set_pmd()'s tests). A private write maps an anonymous copy: a PTE."""
        mm = vma.mm
        key = addr >> PMD_SHIFT
        if key in mm.huge_pmds:
            return True
        if vma.file is None or not vma.file.pmd_folios or key in mm.pte_tables:
            return False
        if write and not vma.flags & VM_SHARED:
            return False
        haddr = addr & PMD_MASK
        return thp_vma_suitable_order(vma, haddr) and \
            vma.file.pmd_folio_of(linear_page_index(vma, haddr)) is not None

    def do_huge_pmd_fault(self, c, vma, addr: int, write: bool) -> Path:
        """__handle_mm_fault(), mm/memory.c v6.18, from the PMD on, for huge_pmd_fault()'s cases: a write
        to a read-only huge PMD -> wp_huge_pmd() (a split), then, the PMD none, handle_pte_fault() ->
        do_fault(): do_shared_fault() for a write, do_read_fault() for a read, each ending in do_set_pmd();
        an access the PMD already allows (another thread mapped it meanwhile) only takes the PMD lock
        (huge_pmd_set_accessed()). Returns True when the PMD maps addr now; False when the fault goes on
        at the PTE level (do_page_fault()'s own path): a private write after the split (do_cow_fault()), or
        a PTE table another thread installed meanwhile."""
        mm = vma.mm
        key = addr >> PMD_SHIFT
        self.pmd_table(mm, addr)                            # p4d/pud/pmd_alloc(): the levels above the PMD
        pmd = mm.huge_pmds.get(key)
        if pmd is not None:
            if not write or pmd & _PAGE_RW:
                yield SpinLock(mm.page_table_lock)
                yield SpinUnlock(mm.page_table_lock)
                return True
            yield self.wp_huge_pmd(c, vma, addr)
            if not vma.flags & VM_SHARED:
                return False
        if write:
            yield self.do_shared_fault_pmd(c, vma, addr)
        else:
            yield self.do_read_fault_pmd(c, vma, addr)
        return key in mm.huge_pmds

    def do_read_fault_pmd(self, c, vma, addr: int) -> Path:
        """do_read_fault(), mm/memory.c v6.18, with the PMD none and a PMD-sized folio: with fault-around,
        do_fault_around() preallocates a PTE table (pte_alloc_one(), zeroed) and filemap_map_pages() ->
        filemap_map_pmd() -> do_set_pmd() maps the folio read-only, unless the folio is locked
        (next_uptodate_folio()'s folio_trylock() fails: then, as without fault-around, __do_fault() ->
        filemap_fault() waits for the lock and finish_fault() -> do_set_pmd()); do_fault() frees the
        unused table (its allocation, zeroing and free are charged in pmd_map: the calibrated page_alloc
        stands for an anonymous fault's whole allocation path, memcg charge and LRU included)."""
        costs = self.costs
        head = linear_page_index(vma, addr & PMD_MASK)
        lock = vma.file.folio_lock_of(head)
        yield MIGHT_SLEEP                                   # vmf->prealloc_pte = pte_alloc_one() (GFP_KERNEL)
        if self.fault_around_pages() > 1 and lock.owner is None:
            yield self.do_set_pmd(c, vma, addr, False)
        else:
            if costs.file_fault:
                yield costs.file_fault                      # __do_fault() -> filemap_fault()
            yield MutexLock(lock)
            yield self.do_set_pmd(c, vma, addr, False)      # finish_fault()
            yield MutexUnlock(lock)

    def do_shared_fault_pmd(self, c, vma, addr: int) -> Path:
        """do_shared_fault(), mm/memory.c v6.18, with the PMD none and a PMD-sized folio: __do_fault()
        preallocates a PTE table and calls filemap_fault(); do_page_mkwrite() runs ->page_mkwrite() over
        the folio, which it returns locked; finish_fault() -> do_set_pmd() maps the folio writable and
        dirty; fault_dirty_shared_page() -> folio_mark_dirty(), folio_unlock(); do_fault() frees the
        unused table (charged in pmd_map, as in do_read_fault_pmd())."""
        costs = self.costs
        mapping = vma.file
        head = linear_page_index(vma, addr & PMD_MASK)
        lock = mapping.folio_lock_of(head)
        yield MIGHT_SLEEP                                   # __do_fault(): vmf->prealloc_pte = pte_alloc_one()
        if costs.file_fault:
            yield costs.file_fault                          # ->fault = filemap_fault()
        mkwrite = self.page_mkwrite_ns(mapping, head)
        if mkwrite:
            yield mkwrite                                   # do_page_mkwrite()
        yield MutexLock(lock)
        if (yield self.do_set_pmd(c, vma, addr, True)):     # finish_fault()
            self.folio_mark_dirty(mapping, head, mapping.page_cache[head])
        yield MutexUnlock(lock)

    def do_set_pmd(self, c, vma, addr: int, write: bool) -> Path:
        """do_set_pmd(), mm/memory.c v6.18 (the caller checked thp_vma_suitable_order() and the folio's
        order): under the PMD lock, if the PMD is still none, map the whole folio by one PMD
        (folio_mk_pmd(); a write fault makes it dirty and, in a writable VMA, writable), add the folio's
        PMD rmap (folio_add_file_rmap_pmd()), HPAGE_PMD_NR file pages to the RSS, and keep the fault's
        folio reference for the mapping. No table is deposited (arch_needs_pgtable_deposit() is false on
        x86). Returns whether it mapped (else VM_FAULT_FALLBACK's retry finds what another thread mapped)."""
        mm = vma.mm
        key = addr >> PMD_SHIFT
        pfn = vma.file.page_cache[linear_page_index(vma, addr & PMD_MASK)]
        yield SpinLock(mm.page_table_lock)                  # pmd_lock()
        done = key not in mm.huge_pmds and key not in mm.pte_tables      # pmd_none()
        if done:
            if self.costs.pmd_map:
                yield self.costs.pmd_map
            mm.huge_pmds[key] = mk_pmd(pfn, write)          # (a write fault's VMA is writable: do_page_fault())
            self.alloc.mapcount[pfn] += 1
            self.alloc.refcount[pfn] += 1
            mm.rss[MM_FILEPAGES] += HPAGE_PMD_NR
        yield SpinUnlock(mm.page_table_lock)
        return done

    def wp_huge_pmd(self, c, vma, addr: int) -> Path:
        """wp_huge_pmd(), mm/memory.c v6.18, for a file VMA whose file has no ->huge_fault (ext4 without
        DAX): "COW or write-notify handled on pte level: split pmd" (__split_huge_pmd()), then
        VM_FAULT_FALLBACK to handle_pte_fault()."""
        yield self.split_huge_pmd(c, vma, addr)

    def split_huge_pmd(self, c, vma, address: int) -> Path:
        """__split_huge_pmd(vma, pmd, address, freeze=false), mm/huge_memory.c v6.18: notifiers around
        __split_huge_pmd_locked() of the 2 MiB holding address, under the PMD lock, if the PMD is still
        huge."""
        mm = vma.mm
        haddr = address & PMD_MASK
        yield self.mmu_notifier_invalidate_range_start(c, mm, haddr, haddr + PMD_SIZE)
        yield SpinLock(mm.page_table_lock)                  # pmd_lock()
        if haddr >> PMD_SHIFT in mm.huge_pmds:
            yield self.split_huge_pmd_locked(c, vma, haddr)
        yield SpinUnlock(mm.page_table_lock)
        yield self.mmu_notifier_invalidate_range_end(c, mm, haddr, haddr + PMD_SIZE)

    def split_huge_pmd_locked(self, c, vma, haddr: int) -> Path:
        """__split_huge_pmd_locked(), mm/huge_memory.c v6.18, for a file VMA ("We are going to unmap this
        huge page. So just go ahead and zap it"): pmdp_huge_clear_flush() clears the PMD and flushes the
        2 MiB (flush_pmd_tlb_range(): flush_tlb_range() on x86) before anything is let go; then the
        folio's dirty bit from the PMD, folio_remove_rmap_pmd(), folio_put() of the mapping's reference
        and the RSS. No PTE table is made: the pages are simply no longer mapped."""
        if vma.file is None:
            raise NotImplementedError("__split_huge_pmd_locked: anonymous THP is not modelled")
        mm = vma.mm
        pmd = mm.huge_pmds.pop(haddr >> PMD_SHIFT)          # pmdp_huge_clear_flush(): clear ...
        yield self.arch.flush_tlb_range(c, mm, haddr, haddr + PMD_SIZE)     # ... and flush
        pfn = pmd >> PAGE_SHIFT
        if pmd & _PAGE_DIRTY:
            self.folio_mark_dirty(vma.file, linear_page_index(vma, haddr), pfn)
        if self.costs.split_huge_pmd:
            yield self.costs.split_huge_pmd
        self.alloc.mapcount[pfn] -= 1                       # folio_remove_rmap_pmd()
        self.alloc.put_page(c, pfn)                         # folio_put()
        mm.rss[MM_FILEPAGES] -= HPAGE_PMD_NR
        self.metrics.pages_unmapped += HPAGE_PMD_NR

    def zap_huge_pmd(self, c, tlb, vma, addr: int) -> Path:
        """zap_huge_pmd(), mm/huge_memory.c v6.18, for a present file PMD: tlb_change_page_size(), then
        under the PMD lock (False if it is no longer huge: __pmd_trans_huge_lock()) clear it
        (pmdp_huge_get_and_clear_full()), record the 2 MiB in the gather at PMD stride
        (tlb_remove_pmd_tlb_entry()), remove the folio's PMD rmap, the RSS and move a dirty PMD's bit to
        the folio; after the lock, hand the folio to the gather (tlb_remove_page_size(tlb, page,
        HPAGE_PMD_SIZE)), whose reference goes after the flush. Returns whether it zapped."""
        mm = vma.mm
        yield self.tlb_change_page_size(c, tlb, PMD_SIZE)
        yield SpinLock(mm.page_table_lock)                  # __pmd_trans_huge_lock()
        pmd = mm.huge_pmds.pop(addr >> PMD_SHIFT, None)
        if pmd is None:
            yield SpinUnlock(mm.page_table_lock)
            return False
        self.tlb_flush_pmd_range(tlb, addr, PMD_SIZE)       # tlb_remove_pmd_tlb_entry()
        pfn = pmd >> PAGE_SHIFT
        self.alloc.mapcount[pfn] -= 1                       # zap_huge_pmd_folio(): folio_remove_rmap_pmd()
        mm.rss[MM_FILEPAGES] -= HPAGE_PMD_NR
        self.metrics.pages_unmapped += HPAGE_PMD_NR
        if pmd & _PAGE_DIRTY:
            self.folio_mark_dirty(vma.file, linear_page_index(vma, addr), pfn)
        yield self.costs.pte_zap
        yield SpinUnlock(mm.page_table_lock)
        yield self.tlb_remove_page(c, tlb, pfn)
        return True
