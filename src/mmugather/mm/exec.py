"""fs/exec.c: execve's replacement of the address space and its stack move."""
from __future__ import annotations

from mmugather.mm.kernel_part import KernelPart
from mmugather.mm.mm_types import VM_GROWSDOWN, VM_READ, VM_WRITE, Vma
from mmugather.mm.pgtable import PAGE_SHIFT, PAGE_SIZE

STACK_TOP = 0x7FFF_FFFF_F000


class Exec(KernelPart):
    """Kernel methods of fs/exec.c (shift_arg_pages() moves the stack with mm/mremap.c's move_page_tables())."""

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
        moved = yield self.move_page_tables(c, vma, old_start, vma, new_start, length)
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
