"""mm/madvise.c: MADV_DONTNEED (MADV_COLLAPSE: mm/khugepaged.py)."""
from __future__ import annotations

from mmugather.kernel.locking import DownRead, UpRead
from mmugather.mm.kernel_part import KernelPart
from mmugather.mm.mmap_lock import syscall_mmap_lock


class Madvise(KernelPart):
    """Kernel methods of mm/madvise.c."""

    def sys_madvise_dontneed(self, c, task, start: int, length: int):
        """sys_madvise(MADV_DONTNEED), mm/madvise.c v2.6.39/v3.0: under mmap_sem held for reading, for
        each VMA in range madvise_dontneed() -> zap_page_range() of the clipped range. Unmapped gaps are
        skipped (the kernel returns -ENOMEM after doing the rest)."""
        mm = task.mm
        end = start + length
        yield from syscall_mmap_lock(self.costs.syscall, DownRead(mm.mmap_sem), self.costs.madvise_call)
        for vma in [v for v in mm.vmas if v.end > start and v.start < end]:
            lo, hi = max(start, vma.start), min(end, vma.end)
            yield self.zap_page_range(c, vma, lo, hi - lo, None)
        yield UpRead(mm.mmap_sem)


    def sys_madvise_collapse(self, c, task, start: int, length: int):
        """sys_madvise(MADV_COLLAPSE) before v6.1: madvise_behavior_valid() does not know the advice, so the
        call returns -EINVAL having done nothing (mm/khugepaged.py has the v6.2 path)."""
        yield self.costs.syscall


class Madvise618(Madvise):
    """mm/madvise.c of Linux v6.18."""

    def sys_madvise_dontneed(self, c, task, start: int, length: int):
        """sys_madvise(MADV_DONTNEED), mm/madvise.c v6.18: madvise_lock() (the model takes mmap_lock for
        reading; 6.18 takes the per-VMA lock when the range is inside one VMA, which excludes the same
        writers), one gather for the whole call (madvise_init_tlb()/madvise_finish_tlb()), and
        madvise_dontneed_single_vma() -> zap_page_range_single_batched() with reclaim_pt (PT_RECLAIM)
        for each VMA in range."""
        from mmugather.mm.memory.v6_18 import ZapDetails
        mm = task.mm
        end = start + length
        yield from syscall_mmap_lock(self.costs.syscall, DownRead(mm.mmap_sem), self.costs.madvise_call)
        tlb = yield self.tlb_gather_mmu(c, mm, False)
        details = ZapDetails(reclaim_pt=True)
        for vma in [v for v in mm.vmas if v.end > start and v.start < end]:
            lo, hi = max(start, vma.start), min(end, vma.end)
            yield self.zap_page_range_single_batched(c, tlb, vma, lo, hi - lo, details)
        yield self.tlb_finish_mmu(c, tlb, start, end)
        yield UpRead(mm.mmap_sem)
