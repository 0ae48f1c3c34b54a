"""fs/exec.c: execve's replacement of the address space and its stack move."""
from __future__ import annotations

from mmugather.kernel.locking import SpinLock, SpinUnlock
from mmugather.mm.mm_types import VM_GROWSDOWN, VM_READ, VM_WRITE, Vma
from mmugather.mm.pgtable import PAGE_SHIFT, PAGE_SIZE, pte_index

STACK_TOP = 0x7FFF_FFFF_F000


class Exec:
    """Kernel methods of fs/exec.c (and move_page_tables() of mm/mremap.c, which shift_arg_pages uses)."""

    def exec_mmap(self, c, task, new_mm):
        """exec_mmap(), fs/exec.c: make new_mm current (activate_mm), then mmput() the old one."""
        old = task.mm
        task.mm = new_mm
        new_mm.users += 1
        self.arch.switch_mm(c, new_mm)
        if old is not None:
            yield self.mmput(c, old)

    def setup_stack(self, mm, pages: int) -> Vma:
        """The temporary stack of a new bprm mm (bprm_mm_init): `pages` argument pages at STACK_TOP."""
        vma = Vma(mm, STACK_TOP - pages * PAGE_SIZE, STACK_TOP, VM_READ | VM_WRITE | VM_GROWSDOWN, name="[stack]")
        mm.insert_vma(vma)
        self.populate(mm, vma, vma.start, vma.end)
        return vma

    def move_page_tables(self, c, vma, old_addr: int, new_addr: int, length: int):
        """move_page_tables()/move_ptes(), mm/mremap.c v3.0: move each PTE under the old and new PTE
        locks, then flush_tlb_range() of the old range (a whole-mm flush on x86 of that era)."""
        mm = vma.mm
        moved = 0
        while moved < length:
            old_pt = mm.pte_tables.get((old_addr + moved) >> 21)
            if old_pt is None:
                moved += PAGE_SIZE
                continue
            new_pt = yield self.pte_alloc(c, mm, new_addr + moved)
            yield SpinLock(old_pt.ptl)
            if new_pt is not old_pt:
                yield SpinLock(new_pt.ptl)
            while moved < length and (old_addr + moved) >> 21 == old_pt.base >> 21:
                i, j = pte_index(old_addr + moved), pte_index(new_addr + moved)
                if old_pt.ptes[i]:
                    new_pt.ptes[j] = old_pt.ptes[i]
                    old_pt.ptes[i] = 0
                    yield self.costs.pte_zap
                moved += PAGE_SIZE
                if (new_addr + moved) >> 21 != new_pt.base >> 21:
                    break
            if new_pt is not old_pt:
                yield SpinUnlock(new_pt.ptl)
            yield SpinUnlock(old_pt.ptl)
        yield self.arch.flush_tlb_mm(c, mm)
        return moved

    def shift_arg_pages(self, c, vma, shift: int):
        """shift_arg_pages(), fs/exec.c v3.0: grow the stack VMA down by shift, move its page tables,
        free the page tables of the vacated top with a gather, shrink the VMA."""
        if shift <= 0 or shift % PAGE_SIZE:
            raise ValueError(f"shift_arg_pages: bad shift {shift:#x}")
        mm = vma.mm
        old_start, old_end = vma.start, vma.end
        length = old_end - old_start
        new_start, new_end = old_start - shift, old_end - shift
        vma.start = new_start                                      # vma_adjust(): grow down
        moved = yield self.move_page_tables(c, vma, old_start, new_start, length)
        if moved != length:
            raise AssertionError("shift_arg_pages: move_page_tables moved less than asked")
        nxt = mm.next_vma(vma)
        ceiling = nxt.start if nxt is not None else 0
        tlb = yield self.tlb_gather_mmu(c, mm, False)
        if new_end > old_start:
            yield self.free_pgd_range(c, tlb, new_end, old_end, new_end, ceiling)
        else:
            yield self.free_pgd_range(c, tlb, old_start, old_end, new_end, ceiling)
        yield self.tlb_finish_mmu(c, tlb, new_end, old_end)
        vma.end = new_end                                          # vma_adjust(): shrink
        return new_start >> PAGE_SHIFT
