"""What the bulk backends of every version share: zap_pte_range()'s runs (fastpath/core.py zap_steps),
free_pmd_range()'s runs of free_pte_range() calls, free_pages_and_swap_cache()'s runs of release_pages()
chunks, and frees of many frames at once. A version's backend (v2_6_39.py, v3_0.py, v6_18.py) says how its
gather takes pages without an event (`quiet`, `add_quiet`) and adds its zap_pmd_range() pass."""
from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from mmugather.fastpath.core import free_tables, may_bulk, may_bulk_locked, may_bulk_plain, release_steps, zap_steps
from mmugather.mm.pfn_runs import PfnRuns
from mmugather.mm.pgtable import PAGE_SHIFT
from mmugather.mm.protocols import STEP_BY_STEP, FreedBatches, FreedTables, PmdRun, PteRun

FREE_ARRAY = 64               # BulkBackend.free_pages(): from this many frames on, one free_array()


class BulkBackend:
    """A bulk implementation of the ZapBackend, TableFreeBackend and ReleaseBackend hooks (mm/protocols.py)
    for the stock policy `reference`. `zap_reproduces`, `tables_reproduces` and `release_reproduces` name
    the kernel methods whose behaviour each hook reproduces: a policy that overrides one of them gets the
    step-by-step backend for that hook (fastpath/__init__.py backends()). `zap_on`, `tables_on` and
    `release_on` say whether the hook applies on the arch the backend was built for."""

    reference: ClassVar[type]
    zap_reproduces: ClassVar[frozenset[str]]
    tables_reproduces: ClassVar[frozenset[str]]
    release_reproduces: ClassVar[frozenset[str]] = frozenset()
    stop_dirty_file: ClassVar[bool] = False          # runs end before a dirty file page (6.18's delayed rmap)

    def __init__(self, arch: Any) -> None:
        self.arch = arch
        self.zap_on = self.tables_on = self.release_on = True

    # ------------------------------------------------------------ the version's gather
    def quiet(self, kernel: Any, tlb: Any) -> int:
        """How many pages the gather would batch with no other effect (before the one that fills a batch)."""
        raise NotImplementedError

    def add_quiet(self, kernel: Any, tlb: Any, pfns: np.ndarray) -> None:
        """Batch each of pfns (at most `quiet(tlb)` of them), as the gather's removal of each would."""
        raise NotImplementedError

    def add_quiet_run(self, kernel: Any, tlb: Any, start: int, n: int) -> None:
        """add_quiet() of the n frames start .. start + n - 1, in order (n >= 0)."""
        if n:
            self.add_quiet(kernel, tlb, np.arange(start, start + n, dtype=np.int64))

    def record_run(self, kernel: Any, tlb: Any, addr: int, npages: int) -> None:
        """Anything the gather records of the PTEs cleared in [addr, addr + npages pages) (6.18: its range)."""

    def pte_free_quiet(self, kernel: Any, tlb: Any) -> int:
        """How many pte_free_tlb() calls would only batch their table page (x86 of 2.6.39/3.0)."""
        return self.quiet(kernel, tlb)

    def pte_free_add_quiet(self, kernel: Any, tlb: Any, pts: list, addrs: list) -> None:
        """pte_free_tlb() of each of the tables `pts` (at `addrs`), at most `pte_free_quiet(tlb)` of them."""
        tlb.need_flush = True
        self.add_quiet(kernel, tlb, np.fromiter([pt.pfn for pt in pts], dtype=np.int64, count=len(pts)))

    # ------------------------------------------------------------ ZapBackend
    def pte_run(self, kernel: Any, c: Any, tlb: Any, pt: Any, addr: int, i: int, iend: int, none: int,
                work: int | None = None) -> PteRun | None:
        """zap_steps() over entries [i, iend) while the gather takes the pages quietly; all but the last
        page batched here, the last left to the caller. (Under the PTE lock: attention that would do
        nothing between its steps does not stop it.)"""
        if not may_bulk_locked(c) or tlb.mm.zero_ptes:   # zero-page PTEs: step by step (vm_normal_page())
            return None
        quiet = self.quiet(kernel, tlb)
        if not quiet:
            return None
        z = zap_steps(kernel, c, pt, i, iend, none, quiet, work, self.stop_dirty_file)
        if z is None:
            return None
        if not z.n:
            return PteRun(0, z.last, z.ns, -1, 0, 0, z.work)
        self.record_run(kernel, tlb, addr + ((z.first - i) << PAGE_SHIFT), z.last - z.first + 1)
        if z.pfns is None:                              # the frames run0 .. run0 + n - 1
            self.add_quiet_run(kernel, tlb, z.run0, z.n - 1)
            return PteRun(z.n, z.last, z.ns, z.run0 + z.n - 1, z.anon, z.n - z.anon, z.work)
        self.add_quiet(kernel, tlb, z.pfns[:-1])
        return PteRun(z.n, z.last, z.ns, int(z.pfns[-1]), z.anon, z.n - z.anon, z.work)

    def pmd_run(self, kernel: Any, c: Any, tlb: Any, pmd: Any, addr: int, end: int, details: Any,
                zap_work: list[int] | None = None) -> PmdRun | None:
        """The version's zap_pmd_range() pass (none by default)."""
        return None

    # ------------------------------------------------------------ TableFreeBackend
    def pte_tables(self, kernel: Any, c: Any, tlb: Any, pmd: Any, addr: int, end: int) -> FreedTables | None:
        """free_tables() while the gather takes the table pages quietly."""
        if not may_bulk(c):
            return None
        return free_tables(c, tlb, pmd, addr, end, kernel.costs.pgtable_free, self.pte_free_quiet(kernel, tlb),
                           lambda pts, addrs: self.pte_free_add_quiet(kernel, tlb, pts, addrs))

    # ------------------------------------------------------------ ReleaseBackend
    def page_list(self) -> Any:
        """Batches keep plain lists (3.0's run-length encode, v3_0.py)."""
        return []

    def pages_run(self, kernel: Any, c: Any, pages: Any, chunk: int) -> PagesRunner:
        return PagesRunner(kernel, c, pages, chunk)

    def batches_run(self, kernel: Any, c: Any, batch: Any) -> FreedBatches | None:
        """The version's loop over batches (none by default)."""
        return None

    def batch_frames(self, batch: Any) -> list[int]:
        """The frames of the batch pages from `batch` on: the kernel's walk (3.0's records, v3_0.py)."""
        return STEP_BY_STEP.batch_frames(batch)

    def free_pages(self, kernel: Any, c: Any, pfns: list[int]) -> None:
        """free_page() of each of pfns, in order: in one pass (PageAlloc.free_array) from FREE_ARRAY frames
        on, below one at a time (numpy's fixed cost is more than theirs)."""
        if len(pfns) >= FREE_ARRAY:
            kernel.alloc.free_array(c, np.array(pfns, dtype=np.int64))
        else:
            for pfn in pfns:
                kernel.alloc.free_page(c, pfn)


class PagesRunner:
    """free_pages_and_swap_cache()'s loop over `pages` (a list, PfnRuns or numpy array), `chunk` pages per
    release_pages(): runs of chunks the engine would run released at once (core.release_steps); the pages
    as one array, made once."""

    __slots__ = ("kernel", "c", "pages", "size", "arr")

    def __init__(self, kernel: Any, c: Any, pages: Any, size: int) -> None:
        self.kernel, self.c, self.pages, self.size = kernel, c, pages, size
        self.arr = None
        if not isinstance(pages, list):
            self.arr = pages.to_array() if isinstance(pages, PfnRuns) else np.asarray(pages, dtype=np.int64)

    def release(self, i: int) -> int:
        """Pages released from page i on (0: the next chunk is a step)."""
        if len(self.pages) - i <= self.size or not may_bulk_plain(self.kernel.engine, self.c):
            return 0
        if self.arr is None:
            self.arr = np.array(self.pages, dtype=np.int64)
        return release_steps(self.kernel, self.c, self.arr, i, self.size)

    def chunk(self, i: int, n: int) -> list[int]:
        """Pages i .. i + n, as a list."""
        return self.pages[i:i + n] if self.arr is None else self.arr[i:i + n].tolist()
