"""mm/rmap.c and the reverse-map locks: i_mmap (file VMAs of an address_space) and anon_vma.

The lock types are what the 2011 series changed: in 2.6.39 both are spinlocks (mapping->i_mmap_lock,
anon_vma->lock), so everything done under them (truncate's zap, free_pgtables' unlinking) runs with
preemption off; 3.0 made them mutexes (3d48ae45e723 "mm: Convert i_mmap_lock to a mutex", 2b575eb64f7a
"mm: Convert anon_vma->lock to a mutex"); since 3.19 / 3.16 they are rwsems (i_mmap_rwsem, anon_vma->rwsem).
"""
from __future__ import annotations

from typing import ClassVar

from mmugather.kernel.locking import (
    DownRead, DownWrite, MutexLock, MutexUnlock, SpinLock, SpinUnlock, UpRead, UpWrite,
)
from mmugather.mm.kernel_part import KernelPart


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
