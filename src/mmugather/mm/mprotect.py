"""mm/mprotect.c: changing protections, which must flush TLB entries that granted more access."""
from __future__ import annotations

from mmugather.kernel.locking import DownWrite, SpinLock, SpinUnlock, UpWrite
from mmugather.mm.kernel_part import KernelPart
from mmugather.mm.mmap_lock import syscall_mmap_lock
from mmugather.mm.mm_types import VM_READ, VM_WRITE
from mmugather.mm.pgtable import PAGE_SIZE, PMD_SHIFT, PMD_SIZE, _PAGE_PRESENT, _PAGE_RW, addr_end, pte_index

PROT = {"none": 0, "r": VM_READ, "rw": VM_READ | VM_WRITE}


class Mprotect(KernelPart):
    """Kernel methods of mm/mprotect.c, v2.6.39/v3.0: change_protection() then one flush_tlb_range()."""

    def sys_mprotect(self, c, task, start: int, length: int, prot: str):
        """sys_mprotect(): under mmap_sem for writing, mprotect_fixup() (split the VMAs at the edges, set
        the flags) and change_protection() of every VMA in range."""
        mm = task.mm
        end = start + length
        yield from syscall_mmap_lock(self.costs.syscall, DownWrite(mm.mmap_sem), self.costs.mprotect_call)
        tlb = yield self.mprotect_begin(c, mm)
        for vma in self.mprotect_vmas(mm, start, end):
            vma.flags = (vma.flags & ~(VM_READ | VM_WRITE)) | PROT[prot]
            yield self.change_protection(c, tlb, vma, vma.start, vma.end, prot)
        yield self.mprotect_end(c, mm, tlb, start, end)
        yield UpWrite(mm.mmap_sem)

    def mprotect_vmas(self, mm, start: int, end: int) -> list:
        """The VMAs of [start, end) after split_vma() at its edges (mprotect_fixup())."""
        vma = mm.find_vma(start)
        if vma is not None and vma.start < start < vma.end:
            self.split_vma(mm, vma, start)
        last = mm.find_vma(end)
        if last is not None and last.start < end < last.end:
            self.split_vma(mm, last, end)
        return [v for v in mm.vmas if v.start >= start and v.end <= end]

    def mprotect_begin(self, c, mm):
        """No gather before v5.19."""
        yield 0
        return None

    def mprotect_end(self, c, mm, tlb, start: int, end: int):
        yield 0

    def change_protection(self, c, tlb, vma, start: int, end: int, prot: str):
        """change_protection() -> change_pte_range() of each PTE table under its lock; v2.6.39/v3.0 then
        flush_tlb_range(vma, start, end) if any PTE changed."""
        changed = yield self.change_pte_tables(c, tlb, vma, start, end, prot)
        if changed:
            yield self.arch.flush_tlb_range(c, vma.mm, start, end)

    def change_pte_tables(self, c, tlb, vma, start: int, end: int, prot: str):
        """change_pte_range() over [start, end): rewrite present PTEs (clear _PAGE_RW, or _PAGE_PRESENT
        for PROT_NONE); returns how many lost access (those need a flush, pte_needs_flush())."""
        mm = vma.mm
        addr = start
        lost = 0
        while addr < end:
            nxt = addr_end(addr, end, PMD_SIZE)
            pt = mm.pte_tables.get(addr >> PMD_SHIFT)
            if pt is None:
                yield self.costs.pmd_none
                addr = nxt
                continue
            yield SpinLock(pt.ptl)
            while addr < nxt:
                i = pte_index(addr)
                pte = pt.ptes[i]
                if pte:
                    if prot == "none":
                        new = pte & ~(_PAGE_PRESENT | _PAGE_RW) | (1 << 8)   # _PAGE_PROTNONE
                    elif prot == "r":
                        new = pte & ~_PAGE_RW
                    else:
                        new = pte
                    if new != pte:
                        pt.ptes[i] = new
                        lost += 1
                        self.note_prot_change(tlb, addr)
                    yield self.costs.pte_set
                addr += PAGE_SIZE
            yield SpinUnlock(pt.ptl)
        return lost

    def note_prot_change(self, tlb, addr: int) -> None:
        """No range tracking before v5.19."""


class Mprotect618(Mprotect):
    """mm/mprotect.c v6.18: do_mprotect_pkey() gathers (4a18419f71cd, v5.19): change_pte_range() records
    each PTE that needs a flush with tlb_flush_pte_range(), one tlb_finish_mmu() flushes them all."""

    def mprotect_begin(self, c, mm):
        tlb = yield self.tlb_gather_mmu(c, mm, False)
        return tlb

    def mprotect_end(self, c, mm, tlb, start: int, end: int):
        yield self.tlb_finish_mmu(c, tlb, start, end)

    def change_protection(self, c, tlb, vma, start: int, end: int, prot: str):
        """change_protection(), v6.18: PTE changes recorded in the gather, no flush here."""
        yield self.change_pte_tables(c, tlb, vma, start, end, prot)

    def note_prot_change(self, tlb, addr: int) -> None:
        self.tlb_flush_pte_range(tlb, addr, PAGE_SIZE)
