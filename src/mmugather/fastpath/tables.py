"""zap_pmd_range() over a run of whole PMD entries in one numpy pass, for Linux 3.0 and 6.18 (2.6.39's
zap_work restarts and flushes under the PTE lock have their own pass, fastpath/v2_6_39.py).

The loop emulated: every PMD entry is one zap_pte_range() call (spin_lock, the zap steps, the trailing
none step, spin_unlock) followed by cond_resched(), or a pmd_none step (followed by cond_resched() too
when `cond_after_none`: 6.18); the gather takes every page, moving to a new batch where one fills. The
pass covers as many entries as the engine would run before another CPU could interleave, and stops before
an entry where the gather cannot tell in advance what a page costs, or, with `dirty_file_stops`, before a
table holding a dirty file page (6.18 delays its rmap removal and flushes).

With `forced_flush` (6.18), a full gather does not end the run when the gather can say what its forced
flush does: the table where it fills is then two passes of zap_pte_range() (6.14+: its `goto retry`),
the first ending with the flush under the PTE lock, spin_unlock and tlb_flush_mmu(), then cond_resched()
and the second from the next entry on (none when the page was the table's last entry). No pass runs
where need_resched() could break one (the pass starts with nothing to attend to and ends at the horizon),
nor with reclaim_pt (fastpath/v6_18.py declines it).
"""
from __future__ import annotations

from itertools import repeat
from operator import is_not
from typing import Any, Protocol

import numpy as np

from mmugather.fastpath.core import PASS_TABLES, TableRun, first_crossing, pfn_dtype, rmap_remove
from mmugather.kernel.sched import INF, P_COND_RESCHED, P_PLAIN
from mmugather.mm.page_alloc import ANON, FrameSpan
from mmugather.mm.pgtable import _PAGE_DIRTY, PAGE_SHIFT, PMD_SHIFT
from mmugather.mm.protocols import PmdRun


MIN_PASS = 3       # zap_tables(): PMD entries a range must span for a pass (a pass takes two or more; below
                   # MIN_PASS, zap_pte_range()'s runs (core.zap_steps) cost less than the pass's set-up)


class TablesGather(Protocol):
    """What the pass needs of a version's gather (fastpath/v3_0.py, v6_18.py)."""

    tracks_range: bool                  # does the gather record the range of cleared PTEs (6.18)?

    def tables_fills(self, kernel: Any, tlb: Any, npages: int) -> tuple | None:
        """Where batching the next `npages` pages fills a batch: (page ordinals, cost there, the first page
        that cannot be told), or None."""
        ...

    def tables_cycle(self, kernel: Any, c: Any, tlb: Any, limit: int) -> tuple | None:
        """The forced-flush cycle when page `limit` finds the gather full: (period, ns of the first flush,
        ns of the later ones, ns of the frees), or None."""
        ...

    def tables_add(self, kernel: Any, c: Any, tlb: Any, pfns: np.ndarray, fs: FrameSpan | None) -> None:
        """Batch pfns (`fs`: their FrameSpan, if known), in order, as tables_fills() planned."""
        ...

    def tables_flushes(self, kernel: Any, c: Any, tlb: Any, pfns: np.ndarray, fs: FrameSpan | None, limit: int,
                       nflush: int) -> None:
        """Batch pfns through `nflush` forced-flush cycles, the first forced by pfns[limit]."""
        ...

    def tables_range(self, kernel: Any, tlb: Any, start: int, end: int) -> None:
        """tlb_remove_tlb_entry() of every PTE cleared in [start, end) (a no-op for an untracked gather)."""
        ...


def zap_tables(g: TablesGather, kernel, c, tlb, pmd, addr: int, end: int, *, cond_after_none: bool,
               dirty_file_stops: bool = False, forced_flush: bool = False) -> PmdRun | None:
    """The pass from addr (module docstring). Returns the PmdRun, or None (go step by step)."""
    if c.preempt_count or c.irqs_off or addr >= end or ((end - 1) >> PMD_SHIFT) - (addr >> PMD_SHIFT) < MIN_PASS - 1:
        return None
    plan = g.tables_fills(kernel, tlb, 512 * 512)
    if plan is None:
        return None
    cycle = g.tables_cycle(kernel, c, tlb, plan[2]) if forced_flush else None
    p = _Pass(kernel, c, pmd, addr, end, plan, cycle, cond_after_none)
    if not p.read():
        return None
    p.price(dirty_file_stops)
    return p.commit(g, tlb)


class _Pass:
    """One pass of zap_tables(): read the tables, price every unit, then apply the units that run."""

    def __init__(self, kernel, c, pmd, addr: int, end: int, plan: tuple, cycle: tuple | None,
                 cond_after_none: bool) -> None:
        self.kernel, self.c, self.plan, self.cycle, self.cond_after_none = kernel, c, plan, cycle, cond_after_none
        # read no more tables than the gather can take pages of (as if they were full; a run of sparser
        # ones takes more calls)
        self.run = TableRun(pmd, addr, end, PASS_TABLES if cycle else min(PASS_TABLES, plan[2] // 512 + 2))

    def read(self) -> bool:
        """The present entries of the run's tables, per unit; False when the pass cannot start."""
        run, plan, costs, c = self.run, self.plan, self.kernel.costs, self.c
        nu = len(run.tables)
        if nu < 2:
            return False
        head = run.tables[0]
        if self.cycle is None and head is not None and plan[2] < run.hi[0] - run.lo[0] and np.count_nonzero(
                np.frombuffer(head.ptes, dtype=np.int64)[run.lo[0]:run.hi[0]]) > plan[2]:
            return False                                # the gather cannot take the first table's pages
        lock, unlock, cond = costs.lock, costs.unlock, costs.cond_resched
        self.none_cost = costs.pmd_none + (cond if self.cond_after_none else 0)
        if all(run.tables):                             # (a PteTable is never false)
            is_t = np.ones(nu, dtype=bool)
            lens = run.widths()
        else:
            is_t = np.fromiter(map(is_not, run.tables, repeat(None)), dtype=bool, count=nu)
            lens = np.where(is_t, run.widths(), 0)
        if c.horizon != INF:                            # no need to read tables the horizon cuts off
            least = np.where(is_t, lock + unlock + cond + min(costs.pte_zap, costs.pte_none) * lens, self.none_cost)
            nu = min(nu, int(np.searchsorted(c.clock + np.cumsum(least), c.horizon)) + 1)
            is_t, lens = is_t[:nu], lens[:nu]
        ent, pres = run.pages(nu, pfn_dtype(self.kernel.alloc))    # pres: which entries are present (None: all)
        ent_end = np.cumsum(lens)
        if pres is None:
            cnt = lens.copy()
        else:
            cnt = np.zeros(nu, dtype=np.int64)
            if len(pres) == nu * 512:                   # whole tables only
                cnt[:] = np.count_nonzero(pres.reshape(nu, 512), axis=1)
            elif len(pres):
                cnt[is_t] = np.add.reduceat(pres.view(np.uint8), (ent_end - lens)[is_t], dtype=np.int64)
        self.nu, self.is_t, self.lens, self.pres, self.ent_end, self.cnt = nu, is_t, lens, pres, ent_end, cnt
        self.page_end = np.cumsum(cnt)
        self.ent = ent                                  # the pages of the present entries
        self.fs: FrameSpan | None = None                # their FrameSpan, when price() made it
        self.spanned = False
        self.all_anon = False                           # price() found every page anonymous
        return True

    def at(self, x: int) -> int:
        """Where in the run's entries the present entry of page x is."""
        page_end, lens, cnt = self.page_end, self.lens, self.cnt
        u = int(np.searchsorted(page_end, x, "right"))
        s = int(self.ent_end[u] - lens[u])
        k = x - int(page_end[u] - cnt[u])               # the k-th present entry of unit u
        return s + (k if self.pres is None else int(np.flatnonzero(self.pres[s:s + lens[u]])[k]))

    def _offsets(self, us: np.ndarray, ks: np.ndarray) -> np.ndarray:
        """Where in its unit's entries the ks[i]-th present entry of unit us[i] is (at() less the unit's
        first entry, for many pages)."""
        if self.pres is None:
            return ks
        first = (self.ent_end - self.lens)[us].tolist()
        return np.array([int(np.flatnonzero(self.pres[s:s + n])[k]) for s, n, k
                         in zip(first, self.lens[us].tolist(), ks.tolist())], dtype=np.int64)

    def price(self, dirty_file_stops: bool) -> None:
        """Each unit's cost and PTE lock hold, the tables where the gather fills split in two."""
        costs, page_end, nu = self.kernel.costs, self.page_end, self.nu
        lock, unlock, cond = costs.lock, costs.unlock, costs.cond_resched
        # the plan was made for more pages than these units hold: its fills after them fall off the end
        fill_at, fill_ns, limit = self.plan
        ev = np.bincount(np.searchsorted(page_end, fill_at, "right"), weights=fill_ns, minlength=nu)[:nu]
        ev = ev.astype(np.int64)
        fl = None                                       # the pages that force a flush, with `cycle`
        if limit < page_end[-1]:
            if self.cycle is None:                      # not past the table of a page that cannot be told
                nu = int(np.searchsorted(page_end, limit, "right"))
            else:
                fl = np.arange(limit, int(page_end[-1]), self.cycle[0])
        if dirty_file_stops and len(self.ent):
            stop = self._dirty_file()
            if stop is not None:
                nu = min(nu, int(np.searchsorted(page_end, stop, "right")))
        lens, cnt = self.lens, self.cnt
        hold = costs.pte_zap * cnt + costs.pte_none * (lens - cnt) + ev
        cost = np.where(self.is_t, lock + hold + unlock + cond, self.none_cost)
        if fl is not None and self.cycle is not None:   # split the tables where the gather fills (fl: a cycle)
            _, first_ns, flush_ns, free_ns = self.cycle
            uf = np.searchsorted(page_end, fl, "right")     # the table of each, its entry there, its pages
            cnt1 = fl - (page_end - cnt)[uf] + 1            # up to that one (the fills' costs come before)
            off = self._offsets(uf, cnt1 - 1)
            fns = np.full(len(fl), flush_ns)
            fns[0] = first_ns
            self.hold1 = costs.pte_zap * cnt1 + costs.pte_none * (off + 1 - cnt1) + ev[uf] + fns
            self.two = off < lens[uf] - 1                   # a second pass (retry) after cond_resched()
            cost[uf] += fns + free_ns + np.where(self.two, cond + lock + unlock, 0)
            self.uf, self.fns = uf, fns
        self.nu, self.fl, self.hold, self.cost, self.limit = nu, fl, hold, cost, limit

    def _dirty_file(self) -> int | None:
        """The first present entry that maps a dirty file page, or None. Makes the pages' FrameSpan
        (commit() uses it): when every page is anonymous, no PTE bit needs a look."""
        pfns, kind = self.ent, self.kernel.alloc.views()[2]
        self.fs = fs = FrameSpan.of(pfns)
        self.spanned = True
        if fs is not None and fs.spanned and fs.count_kind(kind, ANON) == len(pfns):
            self.all_anon = True
            return None
        flat = self.run.entries(self.nu)                # the PTEs again (not cleared before commit())
        dirty = ((flat if self.pres is None else flat[self.pres]) & _PAGE_DIRTY) != 0
        if dirty.any():
            stop = dirty & (kind[pfns] != ANON)
            if stop.any():
                return int(np.argmax(stop))
        return None

    def commit(self, g: TablesGather, tlb) -> PmdRun | None:
        """Apply the units the engine would run: clear, rmap, batch (and flush), record, account."""
        kernel, c, nu, cost = self.kernel, self.c, self.nu, self.cost
        last = np.where(self.is_t | self.cond_after_none, kernel.costs.cond_resched, kernel.costs.pmd_none)
        k = first_crossing(c.clock, (c.clock + np.cumsum(cost))[:nu], last[:nu], c.horizon)
        if k == 0:
            return None
        npages = int(self.page_end[k - 1])
        pfns = self.ent[:npages]
        if not self.spanned:
            fs = FrameSpan.of(pfns) if npages else None
        else:
            fs = self.fs if npages == len(self.ent) or self.fs is None else self.fs.prefix(self.ent, npages)
            if fs is None and npages:
                fs = FrameSpan.of(pfns)
        anon = rmap_remove(kernel.alloc, pfns, fs, self.all_anon) if npages else 0
        fl = self.fl
        nfl = int(np.count_nonzero(self.uf < k)) if fl is not None else 0
        if nfl:
            g.tables_flushes(kernel, c, tlb, pfns, fs, self.limit, nfl)
        else:
            g.tables_add(kernel, c, tlb, pfns, fs)
        # the pages since the last flush reset the range
        after = int(fl[nfl - 1]) + 1 if nfl and fl is not None else 0
        if npages > after and g.tracks_range:           # tlb_remove_tlb_entry() of each cleared PTE
            self._record_range(g, tlb, k, npages, after, nfl)
        self.run.clear(k)
        self._account(k, nfl)
        kernel._add_mm_rss(tlb.mm, anon, npages - anon)
        point = P_COND_RESCHED if self.is_t[k - 1] or self.cond_after_none else P_PLAIN
        return PmdRun(self.run.addrs[k - 1], int(cost[:k].sum()), point)

    def _record_range(self, g: TablesGather, tlb, k: int, npages: int, after: int, nfl: int) -> None:
        """The gather's range over the PTEs cleared since the last flush of the pass."""
        pres, ent_end, lens, run = self.pres, self.ent_end, self.lens, self.run
        if nfl:
            idx = (self.at(after), self.at(npages - 1))
        elif pres is None:
            idx = (0, int(ent_end[k - 1]) - 1)
        else:
            nent = int(ent_end[k - 1])
            idx = (int(np.argmax(pres)), nent - 1 - int(np.argmax(pres[nent - 1::-1])))
        first, lastp = (int(np.searchsorted(ent_end, x, "right")) for x in idx)
        base = [run.addrs[u] - ((run.hi[u] - run.lo[u]) << PAGE_SHIFT) - (int(ent_end[u] - lens[u]) << PAGE_SHIFT)
                for u in (first, lastp)]
        g.tables_range(self.kernel, tlb, base[0] + (idx[0] << PAGE_SHIFT), base[1] + ((idx[1] + 1) << PAGE_SHIFT))

    def _account(self, k: int, nfl: int) -> None:
        """The PTE lock holds and preemption-off intervals of the first k units (split tables hold their
        PTE lock twice)."""
        costs, hold = self.kernel.costs, self.hold
        tables = np.flatnonzero(self.is_t[:k])
        if nfl:                                         # (a split table: its first hold, then its second)
            uf, hold1, two = self.uf[:nfl], self.hold1[:nfl], self.two[:nfl]
            h1 = hold.copy()
            h1[uf] = hold1
            h = _insert_after(h1[tables], np.searchsorted(tables, uf[two]), (hold[uf] - hold1 + self.fns[:nfl])[two])
        else:
            h = hold[tables]
        m = self.kernel.metrics
        m.pte_lock_hold.frombytes(h.tobytes())
        m.preempt_off.frombytes((costs.lock + h + costs.unlock).tobytes())


def _insert_after(a: np.ndarray, at: np.ndarray, values: np.ndarray) -> np.ndarray:
    """np.insert(a, at + 1, values) for strictly increasing `at` (a new array: each of `values` right after
    the element of `a` it follows), without np.insert's general-case work."""
    pos = at + np.arange(1, len(at) + 1)                # where the values land in the result
    out = np.empty(len(a) + len(at), dtype=a.dtype)
    keep = np.ones(len(out), dtype=bool)
    keep[pos] = False
    out[pos] = values
    out[keep] = a
    return out
