"""mm/mremap.c: moving page-table entries (mremap(), and execve's stack shift through it).

Three generations of move_ptes():
- v2.6.39/v3.0: ptep_clear_flush() of every present PTE, under both PTE locks: one flush per page.
- v3.7 to v4.19 (7b6efc2bc4f1 "mremap: avoid sending one IPI per page"): ptep_get_and_clear(), and one
  flush_tlb_range() in move_page_tables() after the PTE locks are dropped. A page moved to the new place
  can then be unmapped and freed (truncate) while another CPU still holds a TLB entry for the old
  address: CVE-2018-18281, fixed by eb66ae030829 "mremap: properly flush TLB before releasing the page".
- v4.20+ (v6.18): flush_tlb_range() of the old range inside move_ptes(), before the locks are dropped.
"""
from __future__ import annotations

from mmugather.kernel.locking import COND_RESCHED, DownWrite, SpinLock, SpinUnlock, UpWrite
from mmugather.mm.kernel_part import KernelPart
from mmugather.mm.mmap_lock import syscall_mmap_lock
from mmugather.mm.mm_types import Vma
from mmugather.mm.pgtable import PAGE_SIZE, PMD_SHIFT, PMD_SIZE, addr_end, pmd_index, pte_index


class Mremap(KernelPart):
    """Kernel methods of mm/mremap.c. `mremap_flush` says where move_ptes() flushes: "per-pte" (v3.0),
    "after-unlock" (v3.7-v4.19) or "before-unlock" (v4.20+)."""

    mremap_flush = "per-pte"
    move_pmd = False          # CONFIG_HAVE_MOVE_PMD: move whole PTE tables (2c91bd4a4e2e, v4.20)

    def sys_mremap_fixed(self, c, task, old_addr: int, length: int, new_addr: int):
        """mremap(old, len, len, MREMAP_MAYMOVE | MREMAP_FIXED, new) -> mremap_to(): unmap whatever is at
        the destination, move_vma(): a new VMA at new_addr, move_page_tables(), then do_munmap() of the
        old range (its page tables go with free_pgtables())."""
        mm = task.mm
        yield from syscall_mmap_lock(self.costs.syscall, DownWrite(mm.mmap_sem))
        vma = mm.find_vma(old_addr)
        if vma is not None and vma.start <= old_addr and old_addr + length <= vma.end:
            yield self.do_munmap(c, mm, new_addr, length)                       # mremap_to()
            new_vma = Vma(mm, new_addr, new_addr + length, vma.flags, vma.file,
                          vma.pgoff + ((old_addr - vma.start) >> 12), vma.name)   # copy_vma()
            mm.insert_vma(new_vma)
            yield self.move_page_tables(c, vma, old_addr, new_vma, new_addr, length)
            yield self.do_munmap(c, mm, old_addr, length)
        yield UpWrite(mm.mmap_sem)

    def move_page_tables(self, c, vma, old_addr: int, new_vma, new_addr: int, length: int):
        """move_page_tables(), mm/mremap.c: move_ptes() one PTE table's worth at a time (cond_resched()
        between), allocating destination tables; the v3.7-v4.19 flush comes after the loop."""
        mm = vma.mm
        old_end = old_addr + length
        start = old_addr
        need_flush = False
        while old_addr < old_end:
            yield COND_RESCHED
            nxt = addr_end(old_addr, old_end, PMD_SIZE)
            extent = min(nxt - old_addr, PMD_SIZE - (new_addr & (PMD_SIZE - 1)))
            old_pt = mm.pte_tables.get(old_addr >> PMD_SHIFT)
            if (old_pt is not None and self.move_pmd and extent == PMD_SIZE
                    and (new_addr >> PMD_SHIFT) not in mm.pte_tables):
                yield self.move_normal_pmd(c, vma, old_pt, old_addr, new_addr)
            elif old_pt is not None:
                new_pt = yield self.pte_alloc(c, mm, new_addr)
                need_flush |= yield self.move_ptes(c, vma, old_pt, old_addr, old_addr + extent, new_vma, new_pt,
                                                   new_addr)
            old_addr += extent
            new_addr += extent
        if self.mremap_flush == "after-unlock" and need_flush:
            yield self.arch.flush_tlb_range(c, mm, start, old_end)
        return length

    def move_normal_pmd(self, c, vma, pt, old_addr: int, new_addr: int):
        """move_normal_pmd(), mm/mremap.c v6.18: under the PMD lock, clear the old PMD entry, point the new
        one at the same PTE table, flush_tlb_range() of the old PMD range, unlock."""
        mm = vma.mm
        yield SpinLock(mm.page_table_lock)                   # pmd_lock(): old and new (same lock here)
        old_pmd = self.pmd_table(mm, old_addr)
        del old_pmd.entries[pmd_index(old_addr)]             # pmd_clear()
        del mm.pte_tables[old_addr >> PMD_SHIFT]
        new_pmd = self.pmd_table(mm, new_addr)
        new_pmd.entries[pmd_index(new_addr)] = pt            # pmd_populate()
        mm.pte_tables[new_addr >> PMD_SHIFT] = pt
        pt.base = new_addr & ~(PMD_SIZE - 1)
        yield self.costs.pte_set
        yield self.arch.flush_tlb_range(c, mm, old_addr, old_addr + PMD_SIZE)
        yield SpinUnlock(mm.page_table_lock)

    def move_ptes(self, c, vma, old_pt, old_addr: int, old_end: int, new_vma, new_pt, new_addr: int):
        """move_ptes(), mm/mremap.c: under i_mmap lock (file VMAs) and both PTE locks, move each present
        PTE; flush as this kernel generation does (see the module doc). Returns whether a present PTE
        moved."""
        mm = vma.mm
        start = old_addr
        yield self.mmu_notifier_invalidate_range_start(c, mm, old_addr, old_end)
        mapping = vma.file
        if mapping is not None:
            yield self.i_mmap_lock_write(c, mapping)
        yield SpinLock(old_pt.ptl)
        if new_pt is not old_pt:
            yield SpinLock(new_pt.ptl)
        moved = False
        while old_addr < old_end:
            i, j = pte_index(old_addr), pte_index(new_addr)
            pte = old_pt.ptes[i]
            if pte:
                old_pt.ptes[i] = 0
                yield self.costs.pte_zap
                if self.mremap_flush == "per-pte":
                    yield self.arch.flush_tlb_page(c, mm, old_addr)     # ptep_clear_flush()
                new_pt.ptes[j] = pte
                moved = True
            old_addr += PAGE_SIZE
            new_addr += PAGE_SIZE
        if self.mremap_flush == "before-unlock" and moved:
            yield self.arch.flush_tlb_range(c, mm, start, old_end)
        if new_pt is not old_pt:
            yield SpinUnlock(new_pt.ptl)
        yield SpinUnlock(old_pt.ptl)
        if mapping is not None:
            yield self.i_mmap_unlock_write(c, mapping)
        yield self.mmu_notifier_invalidate_range_end(c, mm, start, old_end)
        return moved
