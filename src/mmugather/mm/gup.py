"""mm/gup.c (and arch/x86/mm/gup.c before v4.13): get_user_pages_fast(), the lockless page-table walker.

gup_fast walks the page tables with interrupts disabled and no lock: it may read a PTE table that a
concurrent munmap() is unhooking. What keeps the table from being freed under it depends on the design:
on x86 without RCU table freeing, the freeing side's TLB-flush IPI cannot complete while this CPU has
interrupts off; with MMU_GATHER_RCU_TABLE_FREE, the tables are freed after a sched-RCU grace period, which
an IRQs-off section holds off. The invariant checker knows which table each walker is reading
(`Invariants.walking`): freeing it, or reading a table that is no longer a page table, is a
`page-table-use-after-free`.
"""
from __future__ import annotations

from mmugather.kernel.locking import LOCAL_IRQ_DISABLE, LOCAL_IRQ_ENABLE
from mmugather.mm.kernel_part import KernelPart
from mmugather.mm.page_alloc import PGTABLE
from mmugather.mm.pgtable import PAGE_SHIFT, PAGE_SIZE, PMD_SHIFT, _PAGE_PRESENT, _PAGE_RW, _PAGE_SPECIAL, pte_index


class Gup(KernelPart):
    """Kernel methods of mm/gup.c."""

    def get_user_pages_fast(self, c, mm, start: int, nr_pages: int, write: bool, hold_ns: int = 0):
        """get_user_pages_fast() -> gup_fast(): local_irq_save(), walk PMD and PTE entries of
        [start, start + nr_pages pages) taking a reference on each present page (try_grab_folio), stop
        at the first that is absent (the slow path would fault it; not modelled), local_irq_restore().
        `hold_ns`: time spent in the walk per PTE table, e.g. under a long IRQs-off section. Returns the
        pfns pinned."""
        inv = self.invariants
        pinned = []
        yield LOCAL_IRQ_DISABLE
        addr = start
        end = start + nr_pages * PAGE_SIZE
        while addr < end:
            pt = mm.pte_tables.get(addr >> PMD_SHIFT)          # READ_ONCE(*pmdp), pmd_present()
            yield self.costs.tlb_miss_walk
            if pt is None:
                break
            inv.walker_enter(c, pt.pfn)
            if hold_ns:
                yield hold_ns
            stop = False
            while addr < end and (addr >> PMD_SHIFT) == (pt.base >> PMD_SHIFT):
                inv.walker_read(c, pt.pfn, self.alloc.kind[pt.pfn] == PGTABLE)
                pte = pt.ptes[pte_index(addr)]                 # ptep_get_lockless()
                yield self.costs.tlb_miss_walk
                if not pte & _PAGE_PRESENT or (write and not pte & _PAGE_RW) or pte & _PAGE_SPECIAL:
                    stop = True                                # (pte_special(): no page to pin, goto pte_unmap)
                    break
                pfn = pte >> PAGE_SHIFT
                if pt.ptes[pte_index(addr)] != pte:            # the PTE changed under us: back off
                    stop = True
                    break
                self.alloc.refcount[pfn] += 1                  # try_grab_folio()
                pinned.append(pfn)
                addr += PAGE_SIZE
            inv.walker_exit(c, pt.pfn)
            if stop:
                break
        yield LOCAL_IRQ_ENABLE
        return pinned
