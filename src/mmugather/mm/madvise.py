"""mm/madvise.c: MADV_DONTNEED."""
from __future__ import annotations

from mmugather.kernel.locking import MIGHT_SLEEP, DownRead, UpRead


class Madvise:
    """Kernel methods of mm/madvise.c."""

    def sys_madvise_dontneed(self, c, task, start: int, length: int):
        """sys_madvise(MADV_DONTNEED), mm/madvise.c v2.6.39/v3.0: under mmap_sem held for reading, for
        each VMA in range madvise_dontneed() -> zap_page_range() of the clipped range. Unmapped gaps are
        skipped (the kernel returns -ENOMEM after doing the rest)."""
        mm = task.mm
        end = start + length
        yield self.costs.syscall
        yield MIGHT_SLEEP
        yield DownRead(mm.mmap_sem)
        for vma in [v for v in mm.vmas if v.end > start and v.start < end]:
            lo, hi = max(start, vma.start), min(end, vma.end)
            yield self.zap_page_range(c, vma, lo, hi - lo, None)
        yield UpRead(mm.mmap_sem)
