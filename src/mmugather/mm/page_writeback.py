"""mm/page-writeback.c, and fsync()'s way to it: writing a file's dirty page-cache pages back.

PG_dirty of a page-cache folio is its index in `mapping.dirty` (struct address_space, mm_types.py: the
kernel keeps the folio flag and the xarray's PAGECACHE_TAG_DIRTY in step). A folio is dirtied when a shared
writable mapping maps it writable (do_shared_fault() / wp_page_shared() -> fault_dirty_shared_page() ->
folio_mark_dirty(), mm/memory/__init__.py) and when zap_pte_range() clears a dirty PTE of it (6.18:
folio_mark_dirty(), mm/memory/v6_18.py). Writeback cleans it: folio_clear_dirty_for_io() first moves the
dirty bits of the PTEs that map it into PG_dirty and write-protects them (folio_mkclean(), mm/rmap.py), then
clears PG_dirty, and ->writepage writes the page. A store that lands in the page after that without
dirtying a PTE or the folio is never written back: invariant `lost-write` (sim/invariants.py), which the
first folio cleaned here switches on.

The folio lock (PG_locked, `AddressSpace.folio_lock_of()`) is held by writeback from before
folio_clear_dirty_for_io() until the page is submitted, and by wp_page_shared() around making the PTE
writable and folio_mark_dirty() (the ->page_mkwrite path of ext4 or xfs), so a write fault that re-dirties
a page waits for writeback to clean it first: "We carefully synchronise fault handlers against installing
a dirty pte and marking the folio dirty at this point" (folio_clear_dirty_for_io()). The first fault of a
page (do_shared_fault()) does not take it here: the dirty PTE it installs keeps the page tracked anyway.

Not modelled: PG_writeback and the wait for the device (->writepage costs one pass over the page),
->page_mkwrite's wait for stable pages, the dirty throttling of balance_dirty_pages(), and the flusher
threads (writeback runs only from `fsync`).
"""
from __future__ import annotations

from mmugather.kernel.locking import MIGHT_SLEEP, MutexLock, MutexUnlock
from mmugather.mm.kernel_part import KernelPart
from mmugather.mm.protocols import Path


class Writeback(KernelPart):
    """Kernel methods of mm/page-writeback.c (the same in every modelled version for what the model keeps:
    write_cache_pages() -> folio_clear_dirty_for_io() -> folio_mkclean() has this shape since 2.6.19's
    dirty-page tracking of shared mappings)."""

    def folio_mark_dirty(self, mapping, index: int, pfn: int) -> None:
        """folio_mark_dirty() -> filemap_dirty_folio(), mm/page-writeback.c: set PG_dirty of folio `pfn`,
        the page-cache page at `index`, and tag it dirty in the mapping. A folio truncated meanwhile
        (folio->mapping is NULL: not, or no longer, the page at `index`) has no mapping to tag."""
        if mapping.page_cache.get(index) == pfn:
            mapping.dirty.add(index)

    def do_fsync(self, c, task, mapping) -> Path:
        """fsync(2) -> vfs_fsync_range() -> file_write_and_wait_range() -> filemap_fdatawrite_wbc() ->
        do_writepages() -> write_cache_pages(), mm/filemap.c and mm/page-writeback.c: write back every
        dirty page of the file (WB_SYNC_ALL). Takes no mmap_lock."""
        yield self.costs.syscall
        yield MIGHT_SLEEP
        yield self.write_cache_pages(c, mapping)

    def write_cache_pages(self, c, mapping) -> Path:
        """write_cache_pages() (writeback_iter(), v6.10+), mm/page-writeback.c: for WB_SYNC_ALL the pages
        tagged dirty when it starts (tag_pages_for_writeback()), in index order, each under its folio lock:
        a folio truncated meanwhile is skipped (folio->mapping != mapping), one folio_clear_dirty_for_io()
        cleaned is written (->writepage, one pass over the page, which unlocks the folio). Returns the pages
        written."""
        written = 0
        for index in sorted(mapping.dirty):
            pfn = mapping.page_cache.get(index)
            if pfn is None:
                continue
            lock = mapping.folio_lock_of(index)
            yield MutexLock(lock)                             # folio_lock()
            if mapping.page_cache.get(index) == pfn and (yield self.folio_clear_dirty_for_io(c, mapping, index,
                                                                                          pfn)):
                yield self.costs.page_zero                    # ->writepage: the page goes to the block layer
                written += 1
            yield MutexUnlock(lock)                           # (->writepage unlocks it once submitted)
        return written

    def folio_clear_dirty_for_io(self, c, mapping, index: int, pfn: int) -> Path:
        """folio_clear_dirty_for_io(), mm/page-writeback.c: `if (folio_mkclean(folio))
        folio_mark_dirty(folio);` then folio_test_clear_dirty(): True if the folio was dirty (it is now
        clean, and must be written)."""
        if (yield self.folio_mkclean(c, mapping, index, pfn)):
            self.folio_mark_dirty(mapping, index, pfn)
        if index not in mapping.dirty:
            return False
        mapping.dirty.discard(index)
        self.invariants.folio_cleaned(mapping, index)
        return True
