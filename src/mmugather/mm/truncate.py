"""mm/truncate.c and unmap_mapping_range() (mm/memory.c): truncating a file that processes have mapped.

truncate_pagecache(): unmap the pages beyond the new size from every VMA mapping the file (found through
mapping->i_mmap under the i_mmap lock), drop them from the page cache, and unmap once more (a fault may
have raced in). Each VMA's zap goes through the gather, so its TLB flush precedes the frees. In 2.6.39 the
i_mmap lock is a spinlock held across the zaps: unmap_mapping_range_vma() breaks out of it when
need_resched() or (only under CONFIG_PREEMPT: spin_needbreak()) the lock is contended, records where to
restart in vma->vm_truncate_count and starts the tree walk again (restart_addr, truncate_count,
unmap_mutex). 3.0 (97a894136f29) holds i_mmap_mutex and just zaps; 6.18 takes i_mmap_rwsem for reading.
"""
from __future__ import annotations

from mmugather.kernel.locking import (
    COND_RESCHED, MutexLock, MutexUnlock, SpinLock, SpinUnlock, spin_needbreak,
)
from mmugather.mm.kernel_part import KernelPart
from mmugather.mm.pgtable import PAGE_SHIFT, PAGE_SIZE


def is_restart_addr(truncate_count: int) -> bool:
    """is_restart_addr(), mm/memory.c v2.6.39: vm_truncate_count holds a page-aligned restart address or
    a (never page-aligned) truncate count."""
    return truncate_count != 0 and truncate_count % PAGE_SIZE == 0


class ZapDetails2639:
    """struct zap_details of v2.6.39, as unmap_mapping_range() fills it."""

    __slots__ = ("check_mapping", "first_index", "last_index", "i_mmap_lock", "truncate_count")

    def __init__(self, mapping, first: int, last: int, even_cows: bool) -> None:
        self.check_mapping = None if even_cows else mapping
        self.first_index = first
        self.last_index = last
        self.i_mmap_lock = mapping.i_mmap_lock
        self.truncate_count = 0


class Truncate(KernelPart):
    """Kernel methods of mm/truncate.c and unmap_mapping_range(), Linux 3.0 (the default)."""

    def do_truncate(self, c, task, mapping, new_size: int):
        """do_truncate() -> truncate_setsize() -> truncate_pagecache(), mm/truncate.c."""
        yield self.costs.syscall
        first = (new_size + PAGE_SIZE - 1) >> PAGE_SHIFT
        yield self.unmap_mapping_range(c, mapping, first)
        yield self.truncate_inode_pages(c, mapping, first)
        yield self.unmap_mapping_range(c, mapping, first)

    def truncate_inode_pages(self, c, mapping, first: int):
        """truncate_inode_pages(): remove each page-cache page from index `first` on (its dirty state is
        cancelled: truncate_cleanup_folio() -> folio_cancel_dirty()) and drop the cache's reference (the
        page is freed once no mapping holds one)."""
        for index in sorted(i for i in mapping.page_cache if i >= first):
            pfn = mapping.page_cache.pop(index)
            mapping.dirty.discard(index)                        # folio_cancel_dirty()
            yield self.costs.page_free
            self.alloc.put_page(c, pfn)

    def _vma_file_range(self, vma, first: int) -> tuple[int, int] | None:
        """The part of vma mapping file pages from index `first` on, as addresses."""
        vma_first = vma.pgoff
        vma_last = vma.pgoff + ((vma.end - vma.start) >> PAGE_SHIFT) - 1
        if vma_last < first:
            return None
        start = vma.start + ((max(first, vma_first) - vma_first) << PAGE_SHIFT)
        return start, vma.end

    def unmap_mapping_range(self, c, mapping, first: int):
        """unmap_mapping_range(), mm/memory.c v3.0: under i_mmap_mutex, zap_page_range() of every VMA
        mapping file pages from `first` on (private COW copies too: even_cows)."""
        yield self.i_mmap_lock_write(c, mapping)
        for vma in list(mapping.i_mmap):
            r = self._vma_file_range(vma, first)
            if r is not None:
                yield self.zap_page_range(c, vma, r[0], r[1] - r[0], None)
        yield self.i_mmap_unlock_write(c, mapping)


class Truncate2639(Truncate):
    """unmap_mapping_range() of Linux 2.6.39: i_mmap_lock spinlock with lock-break and restart."""

    def unmap_mapping_range(self, c, mapping, first: int):
        """unmap_mapping_range(), mm/memory.c v2.6.39: unmap_mutex, i_mmap_lock, a new truncate_count,
        then unmap_mapping_range_tree() until no VMA had to break out."""
        details = ZapDetails2639(mapping, first, (1 << 64) - 1, True)
        yield MutexLock(mapping.unmap_mutex)
        yield SpinLock(mapping.i_mmap_lock)
        mapping.truncate_count += 1
        if is_restart_addr(mapping.truncate_count):             # protect against endless unmapping loops
            mapping.truncate_count += 1
        details.truncate_count = mapping.truncate_count
        while True:                                             # restart:
            restarted = False
            for vma in list(mapping.i_mmap):
                if vma.truncate_count == details.truncate_count:
                    continue                                    # already done in this pass
                r = self._vma_file_range(vma, first)
                if r is None:
                    vma.truncate_count = details.truncate_count
                    continue
                vma_start = vma.truncate_count if is_restart_addr(vma.truncate_count) else 0
                if (yield self.unmap_mapping_range_vma(c, vma, max(r[0], vma_start), r[1], details)):
                    restarted = True
                    break
            if not restarted:
                break
        yield SpinUnlock(mapping.i_mmap_lock)
        yield MutexUnlock(mapping.unmap_mutex)

    def unmap_mapping_range_vma(self, c, vma, start_addr: int, end_addr: int, details):
        """unmap_mapping_range_vma(), mm/memory.c v2.6.39: zap_page_range() with the i_mmap_lock held;
        it returns early (restart_addr) when need_resched() or spin_needbreak(i_mmap_lock) (contended,
        only under CONFIG_PREEMPT: include/linux/sched.h v2.6.39); then note the
        restart address in vm_truncate_count, drop the lock, cond_resched(), retake it and return True
        (the caller restarts the tree walk)."""
        while True:
            if start_addr >= end_addr:
                vma.truncate_count = details.truncate_count
                return False
            restart_addr = yield self.zap_page_range(c, vma, start_addr, end_addr - start_addr, details)
            need_break = c.need_resched or spin_needbreak(details.i_mmap_lock, self.engine.full)
            if restart_addr >= end_addr:
                vma.truncate_count = details.truncate_count
                if not need_break:
                    return False
            else:
                vma.truncate_count = restart_addr
                if not need_break:
                    start_addr = restart_addr
                    continue
            self.metrics.lock_breaks += 1
            yield SpinUnlock(details.i_mmap_lock)
            yield COND_RESCHED
            yield SpinLock(details.i_mmap_lock)
            return True


class Truncate618(Truncate):
    """unmap_mapping_range() of Linux 6.18: i_mmap_rwsem for reading, zap_page_range_single() per VMA."""

    def unmap_mapping_range(self, c, mapping, first: int):
        """unmap_mapping_range() -> unmap_mapping_pages() -> unmap_mapping_range_tree(), mm/memory.c v6.18."""
        yield self.i_mmap_lock_read(c, mapping)
        for vma in list(mapping.i_mmap):
            r = self._vma_file_range(vma, first)
            if r is not None:
                yield self.zap_page_range_single(c, vma, r[0], r[1] - r[0], None)
        yield self.i_mmap_unlock_read(c, mapping)

