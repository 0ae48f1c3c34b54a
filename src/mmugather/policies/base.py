"""The modelled kernel as one object: the mm/ mixins of a version plus its gather, bound to a machine.

A policy is a subclass of `Kernel` that picks a gather (mm/mmu_gather/, one module per version) and a zap
walk (mm/memory/, one module per version).
Every kernel function is a method named after the kernel function it models, so a plugin overrides one
step by subclassing a built-in policy and redefining that method.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from mmugather.arch.base import Arch, Board
from mmugather.policies.exit import Exit
from mmugather.policies.fork import Fork
from mmugather.mm.exec import Exec
from mmugather.mm.gup import Gup
from mmugather.mm.madvise import Madvise
from mmugather.mm.mm_types import MM_ANONPAGES, MM_FILEPAGES, VM_SHARED, VM_WRITE
from mmugather.mm.mmap import Mmap
from mmugather.mm.mmu_notifier import MmuNotifier
from mmugather.mm.mprotect import Mprotect
from mmugather.mm.protocols import STEP_BY_STEP, ReleaseBackend, TableFreeBackend, ZapBackend
from mmugather.mm.mremap import Mremap
from mmugather.mm.pfnmap import Pfnmap
from mmugather.mm.page_alloc import ANON, FILE
from mmugather.mm.page_writeback import Writeback
from mmugather.mm.pgtable import PAGE_SHIFT, PMD_SHIFT, PMD_SIZE, PUD_SHIFT, _PAGE_ACCESSED, _PAGE_DIRTY, \
    _PAGE_PRESENT, _PAGE_RW, _PAGE_USER, addr_end, pte_index


_FEW_PTES = 32          # populate(): up to this many PTEs of a table, pages are mapped one by one


class Kernel(Exit, Fork, Exec, Gup, Madvise, Mmap, Mprotect, Mremap, MmuNotifier, Pfnmap, Writeback):
    """What every modelled kernel version shares; subclasses add a gather and a zap walk."""

    name = "base"
    version = ""
    source = ""
    # arch name -> the arch class this kernel version had for it: ARCHES[version] of arch/__init__.py
    arches: Mapping[str, Callable[[Board], Arch[Any]]] = {}
    # fix switches: name -> (commits, what the fix does). `--without-fix NAME` models the kernel before it.
    fixes: dict[str, tuple[str, str]] = {}
    _plugin_spec: str     # a plugin class's MODULE:CLASS or FILE.py:CLASS, set by plugins.load_policy

    def __init__(self, machine) -> None:
        unknown = sorted(set(machine.without_fixes) - set(self.fixes))
        if unknown:
            from mmugather.errors import InputError
            raise InputError(f"--without-fix: policy {self.name} has no fix {', '.join(unknown)} "
                             f"(it has: {', '.join(self.fixes) or 'none'})")
        self.without = frozenset(machine.without_fixes)
        self.machine = machine
        self.engine = machine.engine
        self.alloc = machine.alloc
        self.costs = machine.costs
        self.metrics = machine.metrics
        self.invariants = machine.invariants
        self.arch = machine.arch
        self.num_online_cpus = len(machine.engine.cpus)
        self.num_possible_cpus = self.num_online_cpus      # no CPU hotplug: every possible CPU is online
        self.use_backends(STEP_BY_STEP, STEP_BY_STEP, STEP_BY_STEP)

    def use_backends(self, zap: ZapBackend, tables: TableFreeBackend, release: ReleaseBackend) -> None:
        """The hooks through which the walks may take runs of steps at once (mm/protocols.py), chosen by
        whoever builds the machine: step by step (the reference) unless told otherwise."""
        self.zap_backend, self.table_backend, self.release_backend = zap, tables, release

    def known_bug(self, violations: list[dict]) -> str | None:
        """The real bug of this kernel version that a run's violations are, named with its fix; None when
        they match none (or there are none)."""
        return None

    def tlb_flush(self, c, tlb):
        """tlb_flush(): the arch's invalidation for a gather (x86 v2.6.39/v3.0: flush_tlb_mm). The arch's
        path itself, not a frame of its own on the task's stack (the kernel's tlb_flush() is the arch's)."""
        return self.arch.tlb_flush(c, tlb)

    def populate(self, mm, vma, start: int, end: int) -> int:
        """Set-up only (not a kernel path): map every page of [start, end) in vma as if faulted in by
        writes (reads for read-only mappings; a shared writable file page is left dirty, PG_dirty included,
        as a write fault leaves it), table by table with numpy. Fresh frames for more than a few pages are
        reserved first (PageAlloc.reserve(): the same frames, the arrays grown once). Returns pages newly
        mapped."""
        alloc = self.alloc
        writable_flags = _PAGE_PRESENT | _PAGE_USER | _PAGE_ACCESSED
        if vma.flags & VM_WRITE:
            writable_flags |= _PAGE_RW | _PAGE_DIRTY
        shared_file = vma.file is not None and vma.flags & VM_SHARED
        ro_file = vma.file is not None and not vma.flags & VM_WRITE
        mapped = 0
        fresh = vma.file is None or not (shared_file or ro_file)
        if fresh and end - start > _FEW_PTES << PAGE_SHIFT:    # frames for the pages, tables and directories
            tables = sum(a not in mm.pte_tables for a in range(start >> PMD_SHIFT, ((end - 1) >> PMD_SHIFT) + 1))
            dirs = 2 * (((end - 1) >> PUD_SHIFT) - (start >> PUD_SHIFT) + 1)
            alloc.reserve(((end - start) >> PAGE_SHIFT) + tables + dirs - len(alloc.free_list))
        addr = start
        while addr < end:
            nxt = addr_end(addr, end, PMD_SIZE)
            pt = self.install_pte_table(mm, addr)
            i0, i1 = pte_index(addr), pte_index(addr) + ((nxt - addr) >> PAGE_SHIFT)
            if i1 - i0 <= _FEW_PTES:
                mapped += self._populate_few(mm, vma, addr, pt.ptes, i0, i1, writable_flags, fresh)
                addr = nxt
                continue
            view = np.frombuffer(pt.ptes, dtype=np.int64)
            empty = np.flatnonzero(view[i0:i1] == 0) + i0
            n = len(empty)
            if n:
                if fresh:
                    pfns = np.asarray(alloc.alloc_bulk(ANON, n), dtype=np.int64)
                    mm.rss[MM_ANONPAGES] += n
                else:
                    pfns = self._page_cache_pfns(vma, addr, empty - pte_index(addr))
                    mm.rss[MM_FILEPAGES] += n
                    if shared_file and vma.flags & VM_WRITE:   # mapped as by write faults: PG_dirty
                        first = vma.pgoff + ((addr - vma.start) >> PAGE_SHIFT) - pte_index(addr)
                        vma.file.dirty.update((empty + first).tolist())
                view[empty] = (pfns << PAGE_SHIFT) | writable_flags
                del view
                mc = np.frombuffer(alloc.mapcount, dtype=np.int16)
                mc[pfns] += 1                                   # (distinct frames: one per PTE)
                del mc
                mapped += n
            else:
                del view
            addr = nxt
        alloc.unreserve()
        return mapped

    def _populate_few(self, mm, vma, addr: int, ptes, i0: int, i1: int, flags: int, fresh: bool) -> int:
        """populate()'s pages for the empty PTEs among ptes[i0:i1] (addr: the address of PTE i0), a few, one
        by one (numpy's calls cost more than this loop up to some tens of PTEs): the same frames, PTEs,
        counts, page cache and dirty indices as its table-wide path (fresh anonymous frames, or the file's
        page-cache frames, each with a reference for the mapping). Returns pages newly mapped."""
        empty = [i for i in range(i0, i1) if not ptes[i]]
        if not empty:
            return 0
        alloc = self.alloc
        mapcount = alloc.mapcount
        if fresh:
            for i, pfn in zip(empty, alloc.alloc_bulk(ANON, len(empty))):
                ptes[i] = (pfn << PAGE_SHIFT) | flags
                mapcount[pfn] += 1
            mm.rss[MM_ANONPAGES] += len(empty)
            return len(empty)
        mapping = vma.file
        cache, refcount = mapping.page_cache, alloc.refcount
        first = vma.pgoff + ((addr - vma.start) >> PAGE_SHIFT) - i0      # the file index of PTE i: first + i
        for i in empty:
            pfn = cache.get(first + i)
            if pfn is None:
                pfn = cache[first + i] = alloc.alloc_page(FILE)
            refcount[pfn] += 1
            ptes[i] = (pfn << PAGE_SHIFT) | flags
            mapcount[pfn] += 1
        mm.rss[MM_FILEPAGES] += len(empty)
        if vma.flags & VM_SHARED and vma.flags & VM_WRITE:        # mapped as by write faults: PG_dirty
            mapping.dirty.update([first + i for i in empty])
        return len(empty)

    def _page_cache_pfns(self, vma, base: int, offsets) -> np.ndarray:
        """Page-cache frames for the given page offsets from base, allocating missing ones; each gets a
        reference for the mapping."""
        cache = vma.file.page_cache
        first = vma.pgoff + ((base - vma.start) >> PAGE_SHIFT)
        out = np.empty(len(offsets), dtype=np.int64)
        for k, off in enumerate(offsets.tolist()):
            idx = first + off
            pfn = cache.get(idx)
            if pfn is None:
                pfn = cache[idx] = self.alloc.alloc_page(FILE)
            self.alloc.refcount[pfn] += 1
            out[k] = pfn
        return out
