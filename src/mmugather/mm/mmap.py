"""mm/mmap.c: mmap placement, munmap, unmap_region and exit_mmap (Linux v2.6.39 and v3.0)."""
from __future__ import annotations

from mmugather.kernel.locking import COND_RESCHED, DownRead, DownWrite, UpRead, UpWrite
from mmugather.mm.kernel_part import KernelPart
from mmugather.mm.mmap_lock import syscall_mmap_lock
from mmugather.mm.memory import TlbRef
from mmugather.mm.mm_types import VM_ACCOUNT, Vma
from mmugather.mm.pgtable import PAGE_SIZE, PMD_SIZE, ULONG_MASK

FIRST_USER_ADDRESS = 0
MMAP_BASE = 0x7F00_0000_0000          # mm->mmap_base below the stack gap (no randomisation)


class Mmap(KernelPart):
    """Kernel methods of mm/mmap.c."""

    thp_align_anon = False     # v6.7+ aligns PMD-multiple anonymous mappings (thp_get_unmapped_area)

    def get_unmapped_area(self, mm, length: int, anon: bool = False) -> int:
        """get_unmapped_area() -> arch_get_unmapped_area_topdown(): the highest hole below mmap_base that
        fits length; anonymous mappings whose length is a multiple of PMD_SIZE are PMD-aligned where the
        kernel does so (CONFIG_TRANSPARENT_HUGEPAGE, v6.7+: __thp_get_unmapped_area())."""
        if length <= 0 or length % PAGE_SIZE:
            raise ValueError(f"get_unmapped_area: bad length {length:#x}")
        align = PMD_SIZE if self.thp_align_anon and anon and length % PMD_SIZE == 0 else PAGE_SIZE
        top = MMAP_BASE
        for vma in reversed(mm.vmas):
            if vma.start >= top:
                continue
            if top - vma.end >= length and ((top - length) & ~(align - 1)) >= vma.end:
                break
            top = min(top, vma.start)
        addr = (top - length) & ~(align - 1)
        if addr < PMD_SIZE:
            raise ValueError("get_unmapped_area: address space exhausted")
        return addr

    def sys_mmap(self, c, task, addr: int | None, length: int, flags: int, file=None, pgoff: int = 0, name=""):
        """mmap_region() under mmap_sem for writing; returns the address (MAP_FIXED when addr is given)."""
        mm = task.mm
        yield from syscall_mmap_lock(self.costs.syscall, DownWrite(mm.mmap_sem), self.costs.mmap_call)
        if addr is None:
            addr = self.get_unmapped_area(mm, length, anon=file is None)
        else:
            yield self.do_munmap(c, mm, addr, length)
        vma = Vma(mm, addr, addr + length, flags | VM_ACCOUNT, file, pgoff, name)
        if file is not None and file.device:            # the driver's ->mmap(), before the VMA is linked
            yield self.remap_pfn_range(mm, vma) * self.costs.pte_set
        mm.insert_vma(vma)
        yield UpWrite(mm.mmap_sem)
        return addr

    def sys_munmap(self, c, task, start: int, length: int):
        """sys_munmap(): do_munmap() under mmap_sem held for writing."""
        mm = task.mm
        yield from syscall_mmap_lock(self.costs.syscall, DownWrite(mm.mmap_sem), self.costs.munmap_call)
        yield self.do_munmap(c, mm, start, length)
        yield UpWrite(mm.mmap_sem)

    def split_vma(self, mm, vma: Vma, addr: int) -> None:
        """split_vma(): cut vma at addr into two VMAs (page tables are untouched)."""
        tail = Vma(mm, addr, vma.end, vma.flags, vma.file,
                   vma.pgoff + ((addr - vma.start) // PAGE_SIZE), vma.name)
        vma.end = addr
        mm.insert_vma(tail)

    def detach_vmas(self, mm, start: int, end: int) -> tuple[list, object, object]:
        """split_vma() at the edges of [start, end), then detach_vmas_to_be_unmapped(): (the detached
        VMAs, the VMA before them, the VMA after them)."""
        vma = mm.find_vma(start)
        if vma is None or vma.start >= end:
            return [], None, None
        if start > vma.start:
            self.split_vma(mm, vma, start)
        last = mm.find_vma(end)
        if last is not None and end > last.start:
            self.split_vma(mm, last, end)
        i = next(k for k, v in enumerate(mm.vmas) if v.start >= start)
        j = i
        while j < len(mm.vmas) and mm.vmas[j].start < end:
            j += 1
        detached = mm.vmas[i:j]
        del mm.vmas[i:j]
        prev = mm.vmas[i - 1] if i > 0 else None
        nxt = mm.vmas[i] if i < len(mm.vmas) else None
        return detached, prev, nxt

    def do_munmap(self, c, mm, start: int, length: int):
        """do_munmap(), mm/mmap.c v2.6.39/v3.0: split the VMAs at the edges, detach those inside,
        unmap_region(), remove_vma_list()."""
        end = start + length
        detached, prev, nxt = self.detach_vmas(mm, start, end)
        if not detached:
            return
        yield self.unmap_region(c, mm, detached, prev, nxt, start, end)

    def unmap_region(self, c, mm, vmas: list, prev, nxt, start: int, end: int):
        """unmap_region(), mm/mmap.c v2.6.39/v3.0: gather, unmap_vmas, free_pgtables between the
        neighbours, finish."""
        ref = TlbRef((yield self.tlb_gather_mmu(c, mm, False)))
        yield self.unmap_vmas(c, ref, vmas, start, end, None)
        floor = prev.end if prev is not None else FIRST_USER_ADDRESS
        ceiling = nxt.start if nxt is not None else 0
        yield self.free_pgtables(c, ref.tlb, vmas, floor, ceiling)
        yield self.tlb_finish_mmu(c, ref.tlb, start, end)

    def exit_mmap(self, c, mm):
        """exit_mmap(), mm/mmap.c v2.6.39/v3.0: a fullmm gather over every VMA, free_pgtables() of the
        whole space (which unlinks the VMAs from the rmap), finish. Runs when the last user drops the mm."""
        vmas = list(mm.vmas)
        if vmas:
            ref = TlbRef((yield self.tlb_gather_mmu(c, mm, True)))
            end = yield self.unmap_vmas(c, ref, vmas, 0, ULONG_MASK, None)
            yield self.free_pgtables(c, ref.tlb, vmas, FIRST_USER_ADDRESS, 0)
            yield self.tlb_finish_mmu(c, ref.tlb, 0, end)
        mm.vmas.clear()
        mm.exited = True


class Mmap618(Mmap):
    """mm/mmap.c of Linux v6.18: munmap drops to a read lock before clearing page tables; exit_mmap
    unmaps under the read lock and frees page tables under the write lock."""

    thp_align_anon = True

    def sys_munmap(self, c, task, start: int, length: int):
        """sys_munmap() -> __vm_munmap(start, len, unlock=true), mm/vma.c v6.18."""
        mm = task.mm
        yield from syscall_mmap_lock(self.costs.syscall, DownWrite(mm.mmap_sem), self.costs.munmap_call)
        released = yield self.do_vmi_align_munmap(c, mm, start, start + length, True)
        if not released:
            yield UpWrite(mm.mmap_sem)

    def do_munmap(self, c, mm, start: int, length: int):
        """do_munmap() (mmap_lock held for writing, kept): do_vmi_munmap(..., unlock=false)."""
        yield self.do_vmi_align_munmap(c, mm, start, start + length, False)

    def exit_mmap(self, c, mm):
        """exit_mmap(), mm/mmap.c v6.18: under mmap_read_lock a fullmm gather unmaps every VMA; then
        under mmap_write_lock free_pgtables() of the whole space and tlb_finish_mmu(); then each VMA is
        removed with a cond_resched() after it."""
        vmas = list(mm.vmas)
        yield DownRead(mm.mmap_sem)
        if not vmas:
            yield UpRead(mm.mmap_sem)
        else:
            tlb = yield self.tlb_gather_mmu(c, mm, True)
            yield self.unmap_vmas(c, tlb, vmas, 0, ULONG_MASK, None)
            yield UpRead(mm.mmap_sem)
            yield DownWrite(mm.mmap_sem)
            yield self.free_pgtables(c, tlb, vmas, FIRST_USER_ADDRESS, 0)
            yield self.tlb_finish_mmu(c, tlb, 0, ULONG_MASK)
            yield UpWrite(mm.mmap_sem)
        for _ in vmas:                     # remove_vma() of each (free_pgtables() unlinked them)
            yield COND_RESCHED
        mm.vmas.clear()
        mm.exited = True
