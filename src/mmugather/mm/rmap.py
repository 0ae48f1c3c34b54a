"""mm/rmap.c and the reverse-map locks: i_mmap (file VMAs of an address_space) and anon_vma.

The lock types are what the 2011 series changed: in 2.6.39 both are spinlocks (mapping->i_mmap_lock,
anon_vma->lock), so everything done under them (truncate's zap, free_pgtables' unlinking) runs with
preemption off; 3.0 made them mutexes (3d48ae45e723 "mm: Convert i_mmap_lock to a mutex", 2b575eb64f7a
"mm: Convert anon_vma->lock to a mutex"); since 3.19 / 3.16 they are rwsems (i_mmap_rwsem, anon_vma->rwsem).

folio_mkclean() is writeback's rmap walk (mm/page_writeback.py): it finds a file page's PTEs through
i_mmap and write-protects and cleans them, each under its PTE lock, with a TLB flush.
"""
from __future__ import annotations

from typing import ClassVar

from mmugather.kernel.locking import (
    DownRead, DownWrite, MutexLock, MutexUnlock, SpinLock, SpinUnlock, UpRead, UpWrite,
)
from mmugather.mm.kernel_part import KernelPart
from mmugather.mm.mm_types import VM_SHARED
from mmugather.mm.pgtable import PAGE_SHIFT, PMD_SHIFT, _PAGE_DIRTY, _PAGE_PRESENT, _PAGE_RW, pte_index
from mmugather.mm.protocols import Path


class Rmap30(KernelPart):
    """Linux 3.0: i_mmap_mutex and anon_vma->mutex. Rmap2639 and Rmap618 swap in their locks through the
    class attributes below: the request types that take and drop a lock for writing, then for reading (a
    mutex or a spinlock has one kind), and the field of the mapping and of the mm that holds each lock."""

    _rmap_lock: ClassVar[type] = MutexLock
    _rmap_unlock: ClassVar[type] = MutexUnlock
    _rmap_lock_read: ClassVar[type] = MutexLock
    _rmap_unlock_read: ClassVar[type] = MutexUnlock
    _i_mmap_field, _anon_vma_field = "i_mmap_mutex", "anon_vma_mutex"

    def i_mmap_lock_write(self, c, mapping):
        """i_mmap_lock_write(): mutex_lock(&mapping->i_mmap_mutex) (2.6.39: spin_lock(&mapping->i_mmap_lock);
        6.18: down_write(&mapping->i_mmap_rwsem))."""
        yield self._rmap_lock(getattr(mapping, self._i_mmap_field))

    def i_mmap_unlock_write(self, c, mapping):
        yield self._rmap_unlock(getattr(mapping, self._i_mmap_field))

    def i_mmap_lock_read(self, c, mapping):
        """i_mmap_lock_read(): as for writing in 2.6.39 and 3.0; 6.18: down_read(&mapping->i_mmap_rwsem)."""
        yield self._rmap_lock_read(getattr(mapping, self._i_mmap_field))

    def i_mmap_unlock_read(self, c, mapping):
        yield self._rmap_unlock_read(getattr(mapping, self._i_mmap_field))

    def anon_vma_lock_write(self, c, mm):
        """anon_vma_lock(): mutex_lock(&anon_vma->root->mutex) (2.6.39: spin_lock(&anon_vma->root->lock);
        6.18 anon_vma_lock_write(): down_write(&anon_vma->root->rwsem))."""
        yield self._rmap_lock(getattr(mm, self._anon_vma_field))

    def anon_vma_unlock_write(self, c, mm):
        yield self._rmap_unlock(getattr(mm, self._anon_vma_field))

    def unlink_anon_vmas(self, c, vma):
        """unlink_anon_vmas(), mm/rmap.c: under the anon_vma lock, take vma off its anon_vma chains."""
        if vma.file is not None:
            return
        yield self.anon_vma_lock_write(c, vma.mm)
        yield self.costs.lock
        yield self.anon_vma_unlock_write(c, vma.mm)

    def unlink_file_vma(self, c, vma):
        """unlink_file_vma(), mm/mmap.c: under the i_mmap lock, remove vma from mapping->i_mmap, so that
        truncate no longer finds it once its page tables may go."""
        mapping = vma.file
        if mapping is None or vma not in mapping.i_mmap:
            return
        yield self.i_mmap_lock_write(c, mapping)
        mapping.i_mmap.remove(vma)
        yield self.i_mmap_unlock_write(c, mapping)

    def folio_mkclean(self, c, mapping, index: int, pfn: int) -> Path:
        """folio_mkclean(), mm/rmap.c v6.18 (page_mkclean() -> page_mkclean_file() in v2.6.39/v3.0, the
        same walk): nothing if the folio is mapped nowhere (`if (!folio_mapped(folio)) return 0;`: its
        mapcount, so a PTE whose rmap is already removed is not looked for); else rmap_walk_file() under the
        i_mmap lock held for reading: page_mkclean_one() in every VM_SHARED VMA (invalid_mkclean_vma())
        that maps `index`. Returns how many PTEs it cleaned."""
        if self.alloc.mapcount[pfn] <= 0:
            return 0
        cleaned = 0
        yield self.i_mmap_lock_read(c, mapping)
        for vma in list(mapping.i_mmap):
            pages = (vma.end - vma.start) >> PAGE_SHIFT
            if not vma.flags & VM_SHARED or not vma.pgoff <= index < vma.pgoff + pages:
                continue
            cleaned += yield self.page_mkclean_one(c, vma, vma.start + ((index - vma.pgoff) << PAGE_SHIFT), pfn)
        yield self.i_mmap_unlock_read(c, mapping)
        return cleaned

    def page_mkclean_one(self, c, vma, addr: int, pfn: int) -> Path:
        """page_mkclean_one() -> page_vma_mkclean_one(), mm/rmap.c v6.18: page_vma_mapped_walk() with
        PVMW_SYNC takes the PTE lock of addr's table (if there is one) and looks for a present PTE mapping
        pfn; one that is dirty or writable is cleared and flushed from every TLB (ptep_clear_flush():
        flush_tlb_page()), then set back write-protected and clean (pte_wrprotect(), pte_mkclean(),
        set_pte_at()). Returns 1 if it cleaned one. (The MMU-notifier range around it is not modelled.)"""
        mm = vma.mm
        pt = mm.pte_tables.get(addr >> PMD_SHIFT)
        if pt is None:                                      # no PTE table: not mapped here
            return 0
        yield SpinLock(pt.ptl)
        cleaned = 0
        i = pte_index(addr)
        pte = pt.ptes[i]
        if (mm.pte_tables.get(addr >> PMD_SHIFT) is pt and pte & _PAGE_PRESENT and pte >> PAGE_SHIFT == pfn
                and pte & (_PAGE_DIRTY | _PAGE_RW)):
            pt.ptes[i] = 0                                  # ptep_clear_flush(): clear, then flush
            yield self.arch.flush_tlb_page(c, mm, addr)
            pt.ptes[i] = pte & ~(_PAGE_RW | _PAGE_DIRTY)
            yield self.costs.pte_set
            cleaned = 1
        yield SpinUnlock(pt.ptl)
        return cleaned


class Rmap2639(Rmap30):
    """Linux 2.6.39: mapping->i_mmap_lock and anon_vma->lock are spinlocks."""

    _rmap_lock = _rmap_lock_read = SpinLock
    _rmap_unlock = _rmap_unlock_read = SpinUnlock
    _i_mmap_field, _anon_vma_field = "i_mmap_lock", "anon_vma_lock"


class Rmap618(Rmap30):
    """Linux 6.18: i_mmap_rwsem and anon_vma->root->rwsem, taken for writing or for reading."""

    _rmap_lock, _rmap_unlock = DownWrite, UpWrite
    _rmap_lock_read, _rmap_unlock_read = DownRead, UpRead
    _i_mmap_field, _anon_vma_field = "i_mmap_rwsem", "anon_vma_rwsem"
