"""mm/khugepaged.c v6.2: retracting the PTE table of a file THP that is mapped by PTEs (MADV_COLLAPSE).

Once a file's page cache holds a PMD-sized THP, collapse_pte_mapped_thp() checks that every present PTE of
the 2 MiB block maps the matching subpage, drops their rmap and references, and collapse_and_free_pmd()
removes the PTE table: pmdp_collapse_flush() (clear the PMD, flush_tlb_range() of the block), then
pte_free() at once, not through an mmu_gather and RCU. Nothing waits for a lockless walker: gup_fast on
another CPU, with IRQs off, may still be reading that table. On x86 the flush IPI cannot complete while it
is in there; on arm64 (broadcast TLBI) and on paravirt flushes nothing holds the free back.
2ba99c5e0881 ("mm/khugepaged: fix GUP-fast interaction by sending IPI", Jann Horn) added
tlb_remove_table_sync_one() before the free (the fix switch `collapse_sync`).

This is the v6.2 form (read in a stored mm/khugepaged.c of that release: collapse_and_free_pmd() with
mmu_notifier_invalidate_range_start()/_end(), pmdp_collapse_flush(), tlb_remove_table_sync_one(),
mm_dec_nr_ptes(), pte_free(); collapse_pte_mapped_thp() under i_mmap_lock_write(); madvise_collapse()).
Since v6.5 the kernel frees the table with pte_free_defer() (RCU) instead; the 6.18 policy keeps the v6.2
path because that is the code the fix is about. Not modelled: collapse_file() (building the THP in the
page cache; the model has no compound pages, so the page-cache pages of an aligned 2 MiB block stand for
the THP's subpages), set_huge_pmd() (later touches refault with PTEs), anonymous collapse
(collapse_huge_page(), which deposits the table rather than freeing it), and khugepaged's own scan.
"""
from __future__ import annotations

from mmugather.kernel.locking import COND_RESCHED, DownRead, DownWrite, SpinUnlock, UpRead, UpWrite
from mmugather.mm.kernel_part import KernelPart
from mmugather.mm.mmap_lock import syscall_mmap_lock
from mmugather.mm.mm_types import MM_FILEPAGES
from mmugather.mm.pgtable import PAGE_SHIFT, PMD_MASK, PMD_SHIFT, PMD_SIZE, PTRS_PER_TABLE, _PAGE_SPECIAL, pmd_index
from mmugather.mm.protocols import Path

# enum scan_result (mm/khugepaged.c), the values the model reaches
SCAN_FAIL, SCAN_SUCCEED, SCAN_PMD_NONE, SCAN_PAGE_NULL, SCAN_VMA_CHECK = (
    "fail", "succeed", "pmd_none", "page_null", "vma_check")


class Khugepaged(KernelPart):
    """Kernel methods of mm/khugepaged.c v6.2 (and madvise(MADV_COLLAPSE) of mm/madvise.c).

    Fix switch (`--without-fix collapse_sync`, 2ba99c5e0881): without it collapse_and_free_pmd() frees the
    table with no tlb_remove_table_sync_one() first, as since ba76149f47d8 ("thp: khugepaged", v2.6.38)."""

    def sys_madvise_collapse(self, c, task, start: int, length: int) -> Path:
        """sys_madvise(MADV_COLLAPSE), mm/madvise.c v6.2: mmap_read_lock (MADV_COLLAPSE does not need it
        for writing), madvise_collapse() of each VMA in the range, mmap_read_unlock."""
        mm = task.mm
        end = start + length
        yield from syscall_mmap_lock(self.costs.syscall, DownRead(mm.mmap_sem))
        for vma in [v for v in mm.vmas if v.end > start and v.start < end]:
            yield self.madvise_collapse(c, mm, vma, max(start, vma.start), min(end, vma.end))
        yield UpRead(mm.mmap_sem)

    def madvise_collapse(self, c, mm, vma, start: int, end: int) -> Path:
        """madvise_collapse(), mm/khugepaged.c v6.2, for a file VMA: for each whole 2 MiB block of [start,
        end), mmap_read_unlock(), hpage_collapse_scan_file() (not modelled: the page cache is taken to
        hold the THP, SCAN_PTE_MAPPED_HUGEPAGE), then collapse_pte_mapped_thp() under mmap_write_lock();
        before the next block cond_resched(), mmap_read_lock() and hugepage_vma_revalidate(). Returns with
        mmap_lock held for reading, as the caller expects."""
        hstart = (start + PMD_SIZE - 1) & PMD_MASK
        hend = end & PMD_MASK
        mmap_locked = True
        addr = hstart
        while addr < hend:
            if not mmap_locked:
                yield COND_RESCHED
                yield DownRead(mm.mmap_sem)
                mmap_locked = True
                vma = mm.find_vma(addr)                     # hugepage_vma_revalidate()
                if vma is None or vma.start > addr or vma.file is None or vma.end < addr + PMD_SIZE:
                    return
                hend = min(hend, vma.end & PMD_MASK)
            yield UpRead(mm.mmap_sem)                       # the file path scans without mmap_lock
            mmap_locked = False
            yield DownWrite(mm.mmap_sem)
            yield self.collapse_pte_mapped_thp(c, mm, addr, True)
            yield UpWrite(mm.mmap_sem)
            addr += PMD_SIZE
        if not mmap_locked:
            yield DownRead(mm.mmap_sem)

    def collapse_pte_mapped_thp(self, c, mm, addr: int, install_pmd: bool) -> Path:
        """collapse_pte_mapped_thp(), mm/khugepaged.c v6.2 (mmap_lock held for writing): the VMA must map
        the whole block from a file whose page cache holds the THP; under i_mmap_lock_write() and the PTE
        lock, step 1 checks that every present PTE maps the THP's subpage for its index (else abort), step 2
        drops their rmap; step 3 their references and the file RSS; step 4 collapse_and_free_pmd().
        Step 5 (set_huge_pmd() when `install_pmd`) is not modelled, nor the `vma->anon_vma` test (a
        MAP_PRIVATE mapping written to: SCAN_VMA_CHECK), as the model keeps no anon_vma per VMA: step 1 finds
        its COW copies and aborts instead. Returns the scan result."""
        haddr = addr & PMD_MASK
        vma = mm.find_vma(haddr)                            # vma_lookup()
        pt = mm.pte_tables.get(haddr >> PMD_SHIFT)          # find_pmd_or_thp_or_none()
        if vma is None or vma.start > haddr or vma.file is None or vma.end < haddr + PMD_SIZE:
            return SCAN_VMA_CHECK
        mapping = vma.file
        first = vma.pgoff + ((haddr - vma.start) >> PAGE_SHIFT)
        hpage = [mapping.page_cache.get(first + i) for i in range(PTRS_PER_TABLE)]
        if hpage[0] is None:                                # find_lock_page()
            return SCAN_PAGE_NULL
        if pt is None:
            return SCAN_PMD_NONE                            # goto maybe_install_pmd (nothing to retract)
        pmd = self.pmd_table(mm, haddr)
        yield self.i_mmap_lock_write(c, mapping)
        pt = yield self.pte_offset_map_lock(c, pmd, haddr)
        if pt is None:
            yield self.i_mmap_unlock_write(c, mapping)
            return SCAN_PMD_NONE
        mapped = [(i, pte >> PAGE_SHIFT) for i, pte in enumerate(pt.ptes) if pte]
        yield PTRS_PER_TABLE * self.costs.pte_none          # step 1: every entry looked at
        if any(pt.ptes[i] & _PAGE_SPECIAL or pfn != hpage[i] for i, pfn in mapped):
            yield SpinUnlock(pt.ptl)                        # abort: a PTE maps something else (a COW copy)
            yield self.i_mmap_unlock_write(c, mapping)
            return SCAN_FAIL
        for _, pfn in mapped:                               # step 2: page_remove_rmap()
            self.alloc.mapcount[pfn] -= 1
        yield SpinUnlock(pt.ptl)
        for _, pfn in mapped:                               # step 3: page_ref_sub(hpage, count)
            self.alloc.refcount[pfn] -= 1
        mm.rss[MM_FILEPAGES] -= len(mapped)                 # add_mm_counter(mm_counter_file(), -count)
        yield self.collapse_and_free_pmd(c, mm, vma, haddr, pmd)
        yield self.i_mmap_unlock_write(c, mapping)
        return SCAN_SUCCEED

    def collapse_and_free_pmd(self, c, mm, vma, addr: int, pmd) -> Path:
        """collapse_and_free_pmd(), mm/khugepaged.c v6.2 (mmap_lock and i_mmap_rwsem held for writing):
        between the MMU notifiers, pmdp_collapse_flush(), then tlb_remove_table_sync_one() (the fix of
        2ba99c5e0881: wait until no CPU is inside an IRQs-off lockless walk), mm_dec_nr_ptes(), and pte_free()
        of the table at once."""
        yield self.mmu_notifier_invalidate_range_start(c, mm, addr, addr + PMD_SIZE)
        pt = yield self.pmdp_collapse_flush(c, vma, addr, pmd)
        if "collapse_sync" not in self.without:
            yield self.tlb_remove_table_sync_one(c)
        yield self.mmu_notifier_invalidate_range_end(c, mm, addr, addr + PMD_SIZE)
        mm.nr_ptes -= 1                                     # mm_dec_nr_ptes()
        yield self.pte_free(c, pt)

    def pmdp_collapse_flush(self, c, vma, address: int, pmd) -> Path:
        """pmdp_collapse_flush(), mm/pgtable-generic.c: pmdp_huge_get_and_clear() of the PMD entry, then
        flush_tlb_range() of the 2 MiB block ("collapse entails shooting down ptes not pmd"). Returns the
        table it pointed to."""
        mm = vma.mm
        pt = pmd.entries.pop(pmd_index(address))
        del mm.pte_tables[address >> PMD_SHIFT]
        yield self.arch.flush_tlb_range(c, mm, address, address + PMD_SIZE)
        return pt

    def pte_free(self, c, pt) -> Path:
        """pte_free(), include/asm-generic/pgalloc.h: the table page goes back to the page allocator at once."""
        self.alloc.free_page(c, pt.pfn)
        yield self.costs.pgtable_free
