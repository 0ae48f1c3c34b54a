"""What mm/ code relies on, as Protocols: a gather (`MmuGather`), a zap walk (`ZapWalk`), and the three
hooks through which the kernel code may take many steps at once (`ZapBackend`, `TableFreeBackend`,
`ReleaseBackend`).

The hooks. The kernel functions that loop over PTEs, PTE tables and pages to free (zap_pte_range(),
zap_pmd_range(), free_pmd_range(), free_pages_and_swap_cache(), tlb_flush_mmu()'s loop over batches) keep
their loop and their steps exactly as the kernel source has them. Before a step they ask their backend for
"the next run of steps you can take at once": the answer is a small record of what that run did (how far
it got, what it cost, what is left for the loop to do as its step would), or None, meaning "take the
next step yourself". `STEP_BY_STEP` answers None to every question: with it the loops run every step,
which is the reference. The bulk backends (src/mmugather/fastpath/) answer with runs that reproduce those
steps exactly; which backend a kernel uses is chosen from outside, when the Simulation is built
(`Simulation(fast=...)`; the explorer and the tracer use STEP_BY_STEP), never by the kernel code.
"""
from __future__ import annotations

from collections.abc import Generator, MutableSequence
from dataclasses import dataclass
from typing import Any, Protocol

Path = Generator[Any, Any, Any]      # a kernel path: a generator yielding costs and requests to the engine


# ---------------------------------------------------------------- what the kernel code must provide
class MmuGather(Protocol):
    """The mmu_gather API of include/asm-generic/tlb.h, as kernel methods (mm/mmu_gather/ has one class per
    version). Every method takes the CPU `c` it runs on and the gather `tlb`."""

    def tlb_gather_mmu(self, c: Any, mm: Any, fullmm: bool) -> Path:
        """Set up a gather for tearing down (part of) mm; returns it."""
        ...

    def _tlb_remove_page(self, c: Any, tlb: Any, pfn: int) -> Any:
        """__tlb_remove_page(): batch the page; say whether the caller must flush now."""
        ...

    def tlb_remove_page(self, c: Any, tlb: Any, pfn: int) -> Path:
        """tlb_remove_page(): batch the page, flushing when the gather is full."""
        ...

    def tlb_flush_mmu(self, c: Any, tlb: Any) -> Path:
        """Invalidate the TLBs, then free the batched pages."""
        ...

    def tlb_finish_mmu(self, c: Any, tlb: Any, start: int, end: int) -> Path:
        """Final flush; give back the gather's own memory."""
        ...

    def pte_free_tlb(self, c: Any, tlb: Any, pt: Any, addr: int) -> Path:
        """Hand a PTE table page to the gather (freed after the flush)."""
        ...

    def pmd_free_tlb(self, c: Any, tlb: Any, pmd: Any, addr: int) -> Path:
        """Hand a PMD table page to the gather."""
        ...

    def pud_free_tlb(self, c: Any, tlb: Any, pud: Any, addr: int) -> Path:
        """Hand a PUD table page to the gather."""
        ...


class ZapWalk(Protocol):
    """The zap walk of mm/memory.c (mm/memory/ has one class per version): unmap_vmas() down to
    zap_pte_range(), and free_pgtables(). Arguments after the gather differ per version (2.6.39 threads
    its zap_work budget through); each returns the address it stopped at."""

    def zap_pte_range(self, c: Any, tlb: Any, vma: Any, pt: Any, addr: int, end: int, *args: Any) -> Path:
        ...

    def zap_pmd_range(self, c: Any, tlb: Any, vma: Any, pmd: Any, addr: int, end: int, *args: Any) -> Path:
        ...

    def zap_pud_range(self, c: Any, tlb: Any, vma: Any, pud: Any, addr: int, end: int, *args: Any) -> Path:
        ...

    def unmap_page_range(self, c: Any, tlb: Any, vma: Any, addr: int, end: int, *args: Any) -> Path:
        ...

    def unmap_vmas(self, c: Any, tlb: Any, vmas: list, start_addr: int, end_addr: int, *args: Any) -> Path:
        ...

    def free_pgtables(self, c: Any, tlb: Any, vmas: list, floor: int, ceiling: int) -> Path:
        ...


class InvariantChecks(Protocol):
    """The invariant checker's hooks that mm/ code calls itself (sim/invariants.py `Invariants` implements
    them, above mm/; the frees it watches reach it through the page allocator's set-up, not through mm/).
    A new call from mm/ into the checker adds its method here."""

    def walker_enter(self, c: Any, pfn: int) -> None:
        """A lockless walker (gup_fast) on CPU c starts reading PTE table pfn."""
        ...

    def walker_read(self, c: Any, pfn: int, still_table: bool) -> None:
        """The walker on CPU c reads an entry of table pfn, which must still be a page table."""
        ...

    def walker_exit(self, c: Any, pfn: int) -> None:
        """The walker on CPU c is done with table pfn."""
        ...

    def folio_cleaned(self, mapping: Any, index: int) -> None:
        """Writeback cleared PG_dirty of mapping's page `index` (folio_clear_dirty_for_io()): user stores are
        checked for `lost-write` from now on."""
        ...


# ---------------------------------------------------------------- the answers of the hooks
@dataclass(slots=True)
class PteRun:
    """zap_pte_range()'s next steps over a table's entries, taken at once. `n` present PTEs were cleared,
    their rmaps dropped and all but the last page handed to the gather; the caller spends `ns` (one
    yield), then hands `pfn` (the last page) to the gather as its own step would, and goes on after entry
    `last`. With `n` == 0 there was no present entry before the loop ends: the caller adds `ns` to its
    pending none cost and stops at entry `last`. `work`: 2.6.39's zap_work budget after the run."""

    n: int
    last: int
    ns: int
    pfn: int
    anon: int
    file: int
    work: int | None = None


@dataclass(slots=True)
class PmdRun:
    """zap_pmd_range()'s next iterations (whole PMD entries: each a zap_pte_range() call or a pmd_none
    step, and what follows it) taken at once: the caller yields `Elapse(ns, point)` and goes on at `addr`."""

    addr: int
    ns: int
    point: int


@dataclass(slots=True)
class FreedTables:
    """free_pmd_range()'s next free_pte_range() calls taken at once, but for the last one's pte_free_tlb():
    the caller yields `ns`, then `pte_free_tlb(last, last_addr)`, and goes on at `addr`."""

    ns: int
    last: Any
    last_addr: int
    addr: int


@dataclass(slots=True)
class FreedBatches:
    """tlb_flush_mmu()'s next batches freed at once: `pages` released, the caller yields `step` (None:
    nothing to spend) and goes on with batch `next`."""

    pages: int
    next: Any
    step: Any


class PagesRun(Protocol):
    """free_pages_and_swap_cache()'s loop over one array of pages, on a bulk backend."""

    def release(self, i: int) -> int:
        """Release the chunks from page i on that the engine would run now; how many pages (0: step)."""
        ...

    def chunk(self, i: int, n: int) -> list[int]:
        """Pages i .. i + n as a list, for the step that releases them."""
        ...


# ---------------------------------------------------------------- the hooks
class ZapBackend(Protocol):
    """The zap walk's hook (zap_pte_range(), zap_pmd_range())."""

    def pte_run(self, kernel: Any, c: Any, tlb: Any, pt: Any, addr: int, i: int, iend: int, none: int,
                work: int | None = None) -> PteRun | None:
        """The next steps of zap_pte_range()'s loop over entries [i, iend) of table `pt`, entry i mapping
        `addr` (`none`: the none cost pending; `work`: 2.6.39's zap_work), or None: take entry i as a
        step."""
        ...

    def pmd_run(self, kernel: Any, c: Any, tlb: Any, pmd: Any, addr: int, end: int, details: Any,
                zap_work: list[int] | None = None) -> PmdRun | None:
        """The next iterations of zap_pmd_range() from addr, or None: take the entry at addr as a step."""
        ...


class TableFreeBackend(Protocol):
    """The page-table freeing walk's hook (free_pmd_range())."""

    def pte_tables(self, kernel: Any, c: Any, tlb: Any, pmd: Any, addr: int, end: int) -> FreedTables | None:
        """free_pmd_range()'s next free_pte_range() calls from addr (a table there), or None."""
        ...


class ReleaseBackend(Protocol):
    """The hook of the loops that free what a gather batched."""

    def page_list(self) -> MutableSequence[int]:
        """An empty page array for a gather batch (a list; on a bulk backend maybe run-length encoded)."""
        ...

    def pages_run(self, kernel: Any, c: Any, pages: Any, chunk: int) -> PagesRun | None:
        """free_pages_and_swap_cache() of `pages`, `chunk` per release_pages(): a runner, or None."""
        ...

    def batches_run(self, kernel: Any, c: Any, batch: Any) -> FreedBatches | None:
        """tlb_flush_mmu()'s loop over the batches from `batch` on: the next batches freed, or None."""
        ...

    def batch_frames(self, batch: Any) -> list[int]:
        """The frames of the batch pages from `batch` on, in chain order (`batch->next`): what
        tlb_finish_mmu() frees."""
        ...

    def free_pages(self, kernel: Any, c: Any, pfns: list[int]) -> None:
        """free_page() of each of pfns, in order (no step in between)."""
        ...


class StepByStep:
    """The reference backend of every hook: no run is ever taken at once, every step is the kernel code's."""

    def pte_run(self, kernel: Any, c: Any, tlb: Any, pt: Any, addr: int, i: int, iend: int, none: int,
                work: int | None = None) -> None:
        return None

    def pmd_run(self, kernel: Any, c: Any, tlb: Any, pmd: Any, addr: int, end: int, details: Any,
                zap_work: list[int] | None = None) -> None:
        return None

    def pte_tables(self, kernel: Any, c: Any, tlb: Any, pmd: Any, addr: int, end: int) -> None:
        return None

    def page_list(self) -> list[int]:
        return []

    def pages_run(self, kernel: Any, c: Any, pages: Any, chunk: int) -> None:
        return None

    def batches_run(self, kernel: Any, c: Any, batch: Any) -> None:
        return None

    def batch_frames(self, batch: Any) -> list[int]:
        frames = []
        while batch is not None:
            frames.append(batch.pfn)
            batch = batch.next
        return frames

    def free_pages(self, kernel: Any, c: Any, pfns: list[int]) -> None:
        for pfn in pfns:
            kernel.alloc.free_page(c, pfn)


STEP_BY_STEP = StepByStep()
