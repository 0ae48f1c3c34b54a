"""The bulk backend of Linux 3.0 (mm/memory.c and include/asm-generic/tlb.h v3.0): the gather's batches
seen from outside, for zap_pte_range()'s runs, zap_pmd_range()'s pass over whole tables (tables.py),
free_pmd_range()'s runs and tlb_flush_mmu()'s loop over batches. Batch pages are run-length encoded
(PfnRuns): a 3.0 gather may hold every page of an address space until its one flush. The full batches a
pass fills are one BatchRecord (about 514 per GiB otherwise: each a Batch object and its pages to make,
walk, empty and free): tlb_flush_mmu()'s loop frees their pages at once, tlb_finish_mmu() their frames."""
from __future__ import annotations

from collections import deque
from itertools import repeat
from operator import mul
from typing import Any

import numpy as np

from mmugather.fastpath.backend import BulkBackend
from mmugather.fastpath.core import first_crossing, may_bulk, release_runs
from mmugather.fastpath.tables import zap_tables
from mmugather.mm.mmu_gather import PAGE_SIZE
from mmugather.mm.mmu_gather.v3_0 import Batch
from mmugather.mm.page_alloc import BATCH, GFP_NOWAIT, FrameSpan
from mmugather.mm.pfn_runs import PfnRuns, RunCursor, expand_runs, runs_of
from mmugather.mm.protocols import FreedBatches, PmdRun
from mmugather.policies.linux_3_0 import Linux30


class Bulk30(BulkBackend):
    """Reproduces Linux30's zap_pte_range() and page batching (__tlb_remove_page(), tlb_remove_page(),
    tlb_next_batch()), free_pte_range() with the x86 pte_free_tlb() (not on an arch with
    HAVE_RCU_TABLE_FREE), and free_pages_and_swap_cache() of its batches."""

    reference = Linux30
    zap_reproduces = frozenset({"zap_pte_range", "_zap_pte_loop", "_tlb_remove_page",
                                "tlb_remove_page", "tlb_next_batch", "batch_count_limited", "new_batch"})
    tables_reproduces = frozenset({"free_pte_range", "pte_free_tlb", "_tlb_remove_page", "tlb_remove_page"})
    tracks_range = False

    def __init__(self, arch: Any) -> None:
        super().__init__(arch)
        self.tables_on = not arch.have_rcu_table_free       # else pte_free_tlb() is tlb_remove_table()

    def quiet(self, kernel: Any, tlb: Any) -> int:
        """__tlb_remove_page() batches quietly up to the page that fills the active batch; not in fast mode."""
        if tlb.fast_mode:
            return 0
        return max(0, tlb.active.max - len(tlb.active.pages) - 1)

    def add_quiet(self, kernel: Any, tlb: Any, pfns: np.ndarray) -> None:
        if len(pfns):
            tlb.need_flush = True
            pages = tlb.active.pages
            if isinstance(pages, PfnRuns):
                pages.extend(pfns)
            else:
                pages.extend(pfns.tolist())

    def add_quiet_run(self, kernel: Any, tlb: Any, start: int, n: int) -> None:
        if n:
            tlb.need_flush = True
            pages = tlb.active.pages
            if isinstance(pages, PfnRuns):
                pages.extend_run(start, n)
            else:
                pages.extend(range(start, start + n))

    def pmd_run(self, kernel: Any, c: Any, tlb: Any, pmd: Any, addr: int, end: int, details: Any,
                zap_work: list[int] | None = None) -> PmdRun | None:
        """tables.zap_tables(): each PMD entry one zap_pte_range() and cond_resched(), or a pmd_none step."""
        if not may_bulk(c) or tlb.mm.zero_ptes:
            return None
        return zap_tables(self, kernel, c, tlb, pmd, addr, end, cond_after_none=False)

    # ------------------------------------------------------------ tables.TablesGather
    def tables_fills(self, kernel: Any, tlb: Any, npages: int) -> tuple | None:
        """Where __tlb_remove_page() of the next `npages` pages fills a batch: (at, ns, limit), numpy arrays
        of the k-th page (from 0) whose removal moves to the next batch and what that costs (a GFP_NOWAIT
        allocation, or 0 to reuse a batch kept from an earlier flush); the pages from the `limit`-th on
        cannot be told in advance (an allocation that may fail). None in fast mode or on a full batch."""
        if tlb.fast_mode:
            return None
        b = tlb.active
        room = b.max - len(b.pages)
        if room <= 0:
            return None
        at: list[int] = []
        ns: list[int] = []
        pos = room - 1
        while pos < npages and b.next is not None:      # batches kept from an earlier flush
            b = b.next
            room = b.max - len(b.pages)
            if room <= 0:
                return np.array(at, dtype=np.int64), np.array(ns, dtype=np.int64), pos
            at.append(pos)
            ns.append(0)
            pos += room
        if pos >= npages:
            return np.array(at, dtype=np.int64), np.array(ns, dtype=np.int64), npages
        if kernel.alloc.fail_nowait:                    # the next allocation may fail
            return np.array(at, dtype=np.int64), np.array(ns, dtype=np.int64), pos
        new = np.arange(pos, npages, kernel.MAX_GATHER_BATCH, dtype=np.int64)
        new_ns = np.full(len(new), kernel.costs.page_alloc)
        if not at:                                      # (no batch kept: the new ones alone)
            return new, new_ns, npages
        return (np.concatenate((np.array(at, dtype=np.int64), new)),
                np.concatenate((np.array(ns, dtype=np.int64), new_ns)), npages)

    def tables_cycle(self, kernel: Any, c: Any, tlb: Any, limit: int) -> None:
        return None                                     # (a full 3.0 gather ends the pass)

    def tables_add(self, kernel: Any, c: Any, tlb: Any, pfns: np.ndarray, fs: FrameSpan | None) -> None:
        """__tlb_remove_page() of each of `pfns` (int32 or int64, `fs` their FrameSpan if known), in order, as
        tables_fills() planned them: batches kept from an earlier flush are filled in turn, new ones
        allocated at once (alloc_many; their cost is the caller's to spend, as the fills said)."""
        a, b = 0, len(pfns)
        if a == b:
            return
        runs = fs.runs(pfns) if fs is not None else None
        cursor = RunCursor(*(runs if runs is not None else runs_of(pfns)))
        tlb.need_flush = True
        while True:
            batch = tlb.active
            pages = batch.pages
            take = min(batch.max - len(pages), b - a)
            if take:
                if isinstance(pages, PfnRuns):
                    pages.extend_runs(*cursor.take(a, a + take))
                else:
                    pages.extend(expand_runs(*cursor.take(a, a + take)).tolist())
                a += take
            if len(pages) < batch.max:
                return
            if batch.next is None:
                break
            tlb.active = batch.next
        self._new_batches(kernel, tlb, cursor, a, b)

    def _new_batches(self, kernel: Any, tlb: Any, cursor: RunCursor, a: int, b: int) -> None:
        """The active batch is full and the last: a new batch for it, and one more for each new one
        filled, holding pages a..b: the full ones as one BatchRecord, the last (active) one a Batch."""
        nmax = kernel.MAX_GATHER_BATCH
        k = 1 + (b - a) // nmax
        frames = kernel.alloc.alloc_many(BATCH, k, GFP_NOWAIT)
        kernel.metrics.gather_memory(PAGE_SIZE * k)
        split = a + (k - 1) * nmax                      # the last batch's pages: split..b
        pages = PfnRuns()
        if split < b:
            pages.extend_runs(*cursor.take(split, b))
        last = Batch(frames[-1], nmax, pages)       # type: ignore[arg-type]  # page_list()'s kind
        if k > 1:
            held = PfnRuns()
            held.extend_runs(*cursor.take(a, split))
            tlb.active.next = BatchRecord(frames[:-1], nmax, held, last)
        else:
            tlb.active.next = last
        tlb.active = last

    def tables_flushes(self, kernel: Any, c: Any, tlb: Any, pfns: np.ndarray, fs: FrameSpan | None, limit: int,
                       nflush: int) -> None:
        raise AssertionError("tables_flushes: a 3.0 pass has no forced flush")

    def tables_range(self, kernel: Any, tlb: Any, start: int, end: int) -> None:
        """A 3.0 gather tracks no range."""

    # ------------------------------------------------------------ ReleaseBackend
    def page_list(self) -> PfnRuns:
        return PfnRuns()

    def batches_run(self, kernel: Any, c: Any, batch: Any) -> FreedBatches | None:
        """tlb_flush_mmu()'s loop over the batches from `batch` on (more than one): free_pages_and_swap_cache()
        of the batches whose steps all start before the horizon, in one pass, stopping before a batch
        holding a frame some TLB, paging-structure cache or walker still reaches. A BatchRecord is read as
        its batches; one the run ends inside is made into them first."""
        chain = _raw_chain(batch)
        if (len(chain) == 1 and _units(batch) == 1) or not may_bulk(c):
            return None
        units, sizes = list(map(_units, chain)), list(map(_unit_len, chain))
        cost = kernel.costs.page_free
        k = sum(units)
        lens = np.repeat(np.array(sizes, dtype=np.int64), units) if k > len(chain) else np.array(sizes)
        if c.clock + cost * sum(map(mul, units, sizes)) >= c.horizon:    # (else every batch: first_crossing())
            last = np.where(lens > 0, cost * ((lens - 1) % kernel.PAGEVEC_SIZE + 1), 0)
            k = first_crossing(c.clock, c.clock + np.cumsum(cost * lens), last, c.horizon)
            chain = _cut(chain, units, k)
        if int(lens[:k].sum()):
            k = release_runs(kernel, c, *_chain_runs(chain, k), k, lambda: np.cumsum(lens[:k]))
            chain = _cut(chain, list(map(_units, chain)), k)
        if not k:
            return None
        total = int(lens[:k].sum())
        j = _whole(chain, k)
        deque(map(_empty, chain[:j]), 0)
        return FreedBatches(total, chain[j] if j < len(chain) else None, cost * total if total else None)

    def batch_frames(self, batch: Any) -> list[int]:
        """The frames of the batch pages from `batch` on, a BatchRecord's all at once."""
        frames: list[int] = []
        for b in _raw_chain(batch):
            if _held(b):
                frames += b.frames
            else:
                frames.append(b.pfn)
        return frames


_RAW_PAGES: Any = vars(Batch)["pages"]     # the slots behind BatchRecord's properties (member descriptors)
_RAW_NEXT: Any = vars(Batch)["next"]


class BatchRecord(Batch):
    """`n` full batches that one pass filled (Bulk30._new_batches), held as one record: this object is
    the first of them (its frame `pfn`, `max`), `frames` the n frames, `held` all their pages (max each,
    in order) until they are freed (then empty); its `next` slot holds the batch after the last of them.

    Reading `pages` or `next` (a step-by-step consumer walking the chain: a plugin's kernel method,
    tlb_next_batch() reusing kept batches) first makes the record into the n Batch objects the kernel's
    chain has (materialize(): this one the first, with the same page encodings _new_batches made for
    each before records); Bulk30's own loops read the record as it is."""

    __slots__ = ("frames", "held", "n")

    def __init__(self, frames: list[int], max_: int, held: PfnRuns, tail: Batch) -> None:
        self.pfn = frames[0]
        self.max = max_
        _RAW_PAGES.__set__(self, None)
        _RAW_NEXT.__set__(self, tail)
        self.frames, self.held, self.n = frames, held, len(frames)

    @property  # type: ignore[override]
    def pages(self) -> PfnRuns:
        if self.n:
            self.materialize()
        return _RAW_PAGES.__get__(self, Batch)

    @pages.setter
    def pages(self, value: Any) -> None:
        if self.n:
            self.materialize()
        _RAW_PAGES.__set__(self, value)

    @property
    def next(self) -> Batch | None:
        if self.n:
            self.materialize()
        return _RAW_NEXT.__get__(self, Batch)

    @next.setter
    def next(self, value: Batch | None) -> None:
        if self.n:
            self.materialize()
        _RAW_NEXT.__set__(self, value)

    def materialize(self) -> None:
        """Make the record into its n batches, linked in order to the batch after it."""
        n, self.n = self.n, 0
        held, nmax = self.held, self.max
        if held.n:
            encs, counts = RunCursor(*held.runs()).encode_chunks(0, n * nmax, nmax)
            pages = list(map(PfnRuns, encs, counts))
        else:
            pages = [PfnRuns() for _ in range(n)]
        batches = [self, *map(Batch, self.frames[1:], repeat(nmax), pages[1:])]  # type: ignore[arg-type]
        _RAW_PAGES.__set__(self, pages[0])
        tail = _RAW_NEXT.__get__(self, Batch)
        _RAW_NEXT.__set__(self, batches[1] if n > 1 else tail)
        if n > 1:
            deque(map(setattr, batches[1:-1], repeat("next"), batches[2:]), 0)
            batches[-1].next = tail
        self.held = PfnRuns()


def _raw_chain(batch: Any) -> list:
    """The chain's objects from `batch` on, a BatchRecord as one."""
    chain = []
    while batch is not None:
        chain.append(batch)
        batch = _RAW_NEXT.__get__(batch, Batch)
    return chain


def _held(b: Any) -> bool:
    """Is chain object `b` a BatchRecord still standing for its batches (not yet made into them)?"""
    return type(b) is BatchRecord and b.n > 0


def _units(b: Any) -> int:
    """How many batches a chain object stands for."""
    return b.n if _held(b) else 1


def _unit_len(b: Any) -> int:
    """The pages of each batch a chain object stands for."""
    if _held(b):
        return b.max if b.held.n else 0
    p = _RAW_PAGES.__get__(b, Batch)
    return p.n if type(p) is PfnRuns else len(p)


def _whole(chain: list, k: int) -> int:
    """How many chain objects the first k batches are (k ends on an object's last batch)."""
    j = 0
    while k > 0:
        k -= _units(chain[j])
        j += 1
    return j


def _cut(chain: list, units: list[int], k: int) -> list:
    """The chain with the record the first k batches end inside (if any) made into its batches."""
    for j, n in enumerate(units):
        if k < n:
            if not k:
                return chain
            chain[j].materialize()
            return chain[:j] + _raw_chain(chain[j])
        k -= n
    return chain


def _chain_runs(chain: list, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The runs of the pages of the first k batches of a chain (k ends on an object's last batch)."""
    enc = []
    for b in chain[:_whole(chain, k)]:
        p = b.held if _held(b) else _RAW_PAGES.__get__(b, Batch)
        if type(p) is not PfnRuns:                      # (a list: the local bundle's)
            runs = PfnRuns()
            runs.extend(np.asarray(p, dtype=np.int64))
            p = runs
        enc.append(p.a)
    joined = PfnRuns()
    joined.a.frombytes(b"".join(enc))
    return joined.runs()


def _empty(b: Any) -> None:
    """batch->nr = 0 of each batch a chain object stands for (its pages freed)."""
    if _held(b):
        b.held.clear()
        return
    p = _RAW_PAGES.__get__(b, Batch)
    if type(p) is PfnRuns:
        p.clear()
    else:
        _RAW_PAGES.__set__(b, [] if type(p) is list else PfnRuns())
