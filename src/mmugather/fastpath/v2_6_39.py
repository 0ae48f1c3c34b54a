"""The bulk backend of Linux 2.6.39 (include/asm-generic/tlb.h and mm/memory.c v2.6.39): the per-CPU
gather seen from outside, and zap_pmd_range()'s pass over whole tables, which also crosses the ZAP_BLOCK
restarts of unmap_vmas() and the flushes tlb_remove_page() does from under the PTE lock."""
from __future__ import annotations

from collections.abc import Callable
from itertools import accumulate, islice
from operator import sub
from typing import Any

import numpy as np

from mmugather.fastpath.backend import BulkBackend
from mmugather.fastpath.core import PASS_TABLES, TableRun, may_bulk, pfn_dtype, rmap_remove
from mmugather.kernel.sched import P_ENABLE, P_PLAIN, TLBSTATE_OK
from mmugather.mm.page_alloc import FrameSpan
from mmugather.mm.pgtable import PAGE_SIZE, PMD_SHIFT
from mmugather.mm.protocols import PmdRun
from mmugather.policies.linux_2_6_39 import Linux2639


class Bulk2639(BulkBackend):
    """Reproduces Linux2639's zap_pte_range(), unmap_vmas()'s restarts, the per-CPU gather (set-up,
    batching, flush, finish, the arch's tlb_flush()) and free_pte_range() with the x86 pte_free_tlb()."""

    reference = Linux2639
    zap_reproduces = frozenset({"zap_pte_range", "_zap_pte_loop", "unmap_vmas",
                                "_tlb_remove_page", "tlb_remove_page", "tlb_gather_mmu", "tlb_finish_mmu",
                                "tlb_flush_mmu", "tlb_flush"})
    tables_reproduces = frozenset({"free_pte_range", "pte_free_tlb", "_tlb_remove_page", "tlb_remove_page"})

    def __init__(self, arch: Any) -> None:
        super().__init__(arch)
        # the flushes a pass emulates are x86's of that era (flush_tlb_mm() on this CPU alone)
        self.flushes_on = type(arch) is Linux2639.arches.get(arch.name)

    def quiet(self, kernel: Any, tlb: Any) -> int:
        """tlb_remove_page() batches quietly up to the page that fills FREE_PTE_NR; not in fast mode."""
        if tlb.fast_mode:
            return 0
        return max(0, kernel.FREE_PTE_NR - len(tlb.pages) - 1)

    def add_quiet(self, kernel: Any, tlb: Any, pfns: np.ndarray) -> None:
        if len(pfns):
            tlb.need_flush = True
            tlb.pages.extend(pfns.tolist())

    def add_quiet_run(self, kernel: Any, tlb: Any, start: int, n: int) -> None:
        if n:
            tlb.need_flush = True
            tlb.pages.extend(range(start, start + n))

    def pmd_run(self, kernel: Any, c: Any, tlb: Any, pmd: Any, addr: int, end: int, details: Any,
                zap_work: list[int] | None = None) -> PmdRun | None:
        """_Pass2639: zap_pmd_range()'s iterations over whole PMD entries from addr."""
        if not may_bulk(c) or c.preempt_count != 1 or c.irqs_off or tlb.fast_mode or tlb.mm.zero_ptes:
            return None
        if addr >= end or (end - 1) >> PMD_SHIFT == addr >> PMD_SHIFT:
            return None                                 # (a pass takes two PMD entries or more)
        assert zap_work is not None
        return _Pass2639(self, kernel, c, tlb, zap_work, details).go(pmd, addr, end)

    def flush_plan(self, kernel: Any, c: Any, tlb: Any) -> tuple[int, Callable[[], None] | None] | None:
        """tlb_flush_mmu() as a pass may run it: (ns of its flush_tlb_mm step, the effect of that flush on
        this CPU to apply once), or None when only the step path can run it: another CPU in mm_cpumask
        (IPIs), anything cached on this CPU, or a frame some TLB, paging-structure cache or walker still
        reaches (a free would report it)."""
        arch, mm, inv = self.arch, tlb.mm, kernel.invariants
        if (not self.flushes_on or not mm.cpumask <= {c.id} or c.tlb or c.pwc or c.dangling or inv.tlb_refs
                or inv.pwc_refs or inv.walking):
            return None
        costs = kernel.costs
        if c.active_mm is not mm:
            return costs.flush_call, None
        if c.curr.mm is None:
            if c.tlbstate == TLBSTATE_OK:
                return None
            return costs.flush_call + costs.flush_full, lambda: arch.leave_mm(c)
        return costs.flush_call + costs.flush_full, lambda: arch.tlb.flush_all(c)

    @staticmethod
    def commit(kernel: Any, c: Any, tlb: Any, pfns: np.ndarray, flushes: list[int], under: list[bool],
               need_flush: bool, fs: FrameSpan | None = None) -> None:
        """The pages a pass batched (`pfns`, after those already in the gather; `fs` their FrameSpan if
        known) and the flushes it emulated, `flushes[k]` pages each (under the PTE lock when `under[k]`):
        free the flushed pages in order, keep the rest, account the flushes."""
        m = kernel.metrics
        if flushes:
            nfree = sum(flushes)
            m.tlb_flushes += len(flushes)
            m.flushes_under_pte_lock += sum(under)
            m.pages_per_flush.frombytes(np.array(flushes, dtype=np.int64).tobytes())
            held = np.array(tlb.pages[:nfree], dtype=np.int64)      # the pages batched before, then pfns
            n = nfree - len(held)
            if under.count(bool(c.ptl_held)) == len(under):        # all as now: release_array's default
                h = p = None
            else:
                flags = np.repeat(np.array(under, dtype=bool), flushes)
                h, p = flags[:len(held)], flags[len(held):]
            kernel.alloc.release_array(c, held, h)
            kernel.alloc.release_array(c, pfns[:n], p, fs.prefix(pfns, n) if fs is not None and n else None)
            tlb.pages = tlb.pages[nfree:] + pfns[nfree - len(held):].tolist()
        else:
            tlb.pages.extend(pfns.tolist())
        tlb.need_flush = need_flush


class _Unit:
    """The CPU and gather state a pass carries from PMD entry to PMD entry, and what the entries record:
    clock, zap_work, pages batched, need_flush, preemption off since, preemption point; PTE lock holds,
    preemption-off intervals, flushes (pages each) and whether each was under the PTE lock."""

    __slots__ = ("t", "w", "g", "need", "since", "point", "holds", "offs", "flushes", "under")

    def __init__(self, t: int, w: int, g: int, need: bool, since: int, point: int) -> None:
        self.t, self.w, self.g, self.need, self.since, self.point = t, w, g, need, since, point
        self.holds: list[int] = []
        self.offs: list[int] = []
        self.flushes: list[int] = []
        self.under: list[bool] = []

    def save(self) -> tuple:
        """A mark to come back to (restore()) when an entry turns out not to run."""
        return (self.t, self.w, self.g, self.need, self.since, self.point, len(self.holds), len(self.offs),
                len(self.flushes), len(self.under))

    def restore(self, mark: tuple) -> None:
        """Back to the state of `mark`, dropping what was recorded since."""
        self.t, self.w, self.g, self.need, self.since, self.point, nh, no, nf, nu = mark
        del self.holds[nh:], self.offs[no:], self.flushes[nf:], self.under[nu:]


class _Pass2639:
    """zap_pmd_range() v2.6.39 from addr, its iterations over whole PMD entries in one numpy pass, for as
    many entries as the engine would run before another CPU could interleave. Per table, zap_pte_range()'s
    lock sections: spin_lock, the zap steps, the flushes tlb_remove_page() does from under the lock when
    FREE_PTE_NR pages are batched, the trailing none step, spin_unlock; a missing table is a pmd_none step.
    When zap_work runs out before `end`, what the step path does between zap_pmd_range() returning and
    being called again at the same address is emulated too: unmap_vmas()'s tlb_finish_mmu() (flush,
    preempt_enable) and tlb_gather_mmu() (preempt_disable, the same per-CPU gather), zap_work reset."""

    def __init__(self, backend: Bulk2639, kernel: Any, c: Any, tlb: Any, zap_work: list[int], details: Any) -> None:
        self.backend, self.kernel, self.c, self.tlb, self.zap_work = backend, kernel, c, tlb, zap_work
        self.costs = costs = kernel.costs
        self.can_restart = details is None or details.i_mmap_lock is None
        self.plan = plan = backend.flush_plan(kernel, c, tlb)
        self.flush_ns = plan[0] + costs.page_free * kernel.FREE_PTE_NR if plan is not None else 0
        self.block = kernel.zap_block_size()

    def go(self, pmd: Any, addr: int, end: int) -> PmdRun | None:
        """The PmdRun (zap_work[0] updated), or None."""
        self.run = run = TableRun(pmd, addr, end, PASS_TABLES)
        nu = len(run.tables)
        if nu < 2:
            return None
        self._read(nu)
        c, tlb = self.c, self.tlb
        st = _Unit(c.clock, self.zap_work[0], len(tlb.pages), tlb.need_flush, c.preempt_off_since, c.point)
        k = ent = u = 0
        horizon = c.horizon
        while u < nu:
            m, stop = self._whole_run(st, u, horizon)   # the common units: whole tables
            if m:
                u = k = u + m
                ent = self.firsts[u - 1] + self.lens[u - 1]
            if stop or u == nu:
                break
            if m:
                continue
            mark = st.save()                            # any other unit, step by step
            last = self._unit(u, st)
            if last is None or st.t - last >= horizon:
                st.restore(mark)
                break
            ent = self.firsts[u] + self.lens[u]
            u = k = u + 1
            if st.t >= horizon:
                break
        if k == 0:
            return None
        return self._commit(k, ent, st)

    def _read(self, nu: int) -> None:
        """The entries of the run's tables and how many are present, per unit."""
        run = self.run
        if all(run.tables):                                      # (a PteTable is never false)
            self.is_t = is_t = [True] * nu
            self.lens = lens = list(map(sub, run.hi, run.lo))
        else:
            self.is_t = is_t = [t is not None for t in run.tables]
            self.lens = lens = [j - i if t else 0 for t, i, j in zip(run.tables, run.lo, run.hi)]
        self.pfns, self.pres = run.pages(nu, pfn_dtype(self.kernel.alloc))   # pres: which entries are present
        self.firsts = firsts = [0, *accumulate(lens[:-1])]       # where each unit's entries begin
        pres = self.pres
        if pres is None:
            self.cnt = cnt = lens
            self.whole = lens[:]                                 # (every table has every entry present)
            return
        if len(pres):
            self.cnt = cnt = [0] * nu
            tl = [u for u in range(nu) if is_t[u]]
            for u, n in zip(tl, np.add.reduceat(pres, [firsts[u] for u in tl], dtype=np.int64).tolist()):
                cnt[u] = n
        self.whole = [n if n == ln else 0 for n, ln in zip(cnt, lens)]   # tables with every entry present

    def _unit(self, u: int, us: _Unit) -> int | None:
        """Run unit u (a table's lock sections, or a pmd_none step) on state us; the cost of its last
        step, or None when it cannot be run here."""
        n_u = self.lens[u]
        self.wsum: np.ndarray | None = None                      # zap_work spent through each entry
        x = 0
        while True:
            if us.w <= 0 and not self._restart(us):             # the block ended: restart the gather
                return None
            if not self.is_t[u]:
                us.w -= 1
                us.t += self.costs.pmd_none
                us.point = P_PLAIN
                return self.costs.pmd_none
            y, pages, used = self._entries(u, x, us.w)
            if not self._lock_section(us, pages, y - x - pages, used):
                return None
            x = y
            if x == n_u:
                return self.costs.unlock

    def _whole_run(self, us: _Unit, u: int, horizon: int) -> tuple[int, bool]:
        """_unit() of the units from u on that are tables with every entry present, while zap_work lasts
        through each or is spent and a new block would (unmap_vmas()'s restart first: the flush if
        needed, preempt_enable(), preempt_disable(), zap_work reset): one lock section each, in a loop of
        plain locals. Returns (how many ran, whether the pass ends there): before a unit needing a restart
        or flush the pass cannot emulate or whose spin_unlock starts at or after the horizon, or after one
        ending at or after the horizon; else the next unit goes step by step (or there is none)."""
        costs, plan = self.costs, self.plan
        nr, lock, unlock, zap = self.kernel.FREE_PTE_NR, costs.lock, costs.unlock, costs.pte_zap
        flush_ns, block, can_restart, page_free = self.flush_ns, self.block, self.can_restart, costs.page_free
        t, w, g, need, since = us.t, us.w, us.g, us.need, us.since
        holds, offs, flushes, under = us.holds, us.offs, us.flushes, us.under
        u0, stop = u, False
        for n in islice(self.whole, u0, None):
            if not n:
                break
            size = PAGE_SIZE * n
            restart = w < size
            if restart:
                if w > 0 or block < size:                   # (part of the table: step by step)
                    break
                if not can_restart or (need and plan is None):
                    stop = True
                    break                                   # (if needed, the restart's flush first)
                t1, g2 = (t + plan[0] + page_free * g, n) if need else (t, g + n)  # type: ignore[index]
            else:
                t1, g2 = t, g + n
            nfl = g2 // nr
            if nfl and plan is None:
                stop = True
                break
            hold = zap * n + nfl * flush_ns
            if t1 + lock + hold >= horizon:
                stop = True
                break
            if restart:
                if need:
                    flushes.append(g)
                    under.append(False)
                offs.append(t1 - since)
                since, w = t1, block
            t = t1 + lock + hold + unlock
            w -= size
            holds.append(hold)
            if nfl == 1:                                    # (one flush: appended, no list made)
                flushes.append(nr)
                under.append(True)
            elif nfl:
                flushes += [nr] * nfl
                under += [True] * nfl
            g2 -= nr * nfl
            need = g2 > 0 or not nfl
            g = g2
            u += 1
            if t >= horizon:
                stop = True
                break
        if u > u0:
            us.t, us.w, us.g, us.need, us.since, us.point = t, w, g, need, since, P_PLAIN
        return u - u0, stop

    def _restart(self, us: _Unit) -> bool:
        """unmap_vmas() between two blocks: tlb_finish_mmu() (the flush if needed, preempt_enable()), then
        tlb_gather_mmu() (preempt_disable()), zap_work reset. False when the pass cannot emulate it."""
        if not self.can_restart:
            return False
        if us.need:
            if self.plan is None:
                return False
            us.t += self.plan[0] + self.costs.page_free * us.g
            us.flushes.append(us.g)
            us.under.append(False)
            us.need, us.g = False, 0
            us.point = P_PLAIN
        us.offs.append(us.t - us.since)                          # preempt_enable() ...
        us.point = P_ENABLE
        us.since = us.t                                          # ... preempt_disable()
        us.w = self.block
        return True

    def _entries(self, u: int, x: int, w: int) -> tuple[int, int, int]:
        """Entries x.. of unit u's table up to where zap_work `w` runs out (the entry it does): (the entry
        after them, present pages among them, zap_work used)."""
        n_u, cnt_u = self.lens[u], self.cnt[u]
        left = n_u - x
        if cnt_u == n_u:
            y = x + min(left, -(-w // PAGE_SIZE))
            return y, y - x, PAGE_SIZE * (y - x)
        if cnt_u == 0:
            y = x + min(left, w)
            return y, 0, y - x
        if self.wsum is None:
            f, pres = self.firsts[u], self.pres
            assert pres is not None                              # (made when some entry is not present)
            self.wsum = np.cumsum(pres[f:f + n_u] * (PAGE_SIZE - 1) + 1)
        wsum = self.wsum
        base = int(wsum[x - 1]) if x else 0
        y = min(n_u, int(np.searchsorted(wsum, base + w)) + 1)
        used = int(wsum[y - 1]) - base
        return y, (used - (y - x)) // (PAGE_SIZE - 1), used

    def _lock_section(self, us: _Unit, pages: int, empties: int, used: int) -> bool:
        """One zap_pte_range() call: spin_lock, the steps, the flushes of full gathers, spin_unlock. False
        when a flush is needed that the pass cannot emulate."""
        costs, nr = self.costs, self.kernel.FREE_PTE_NR
        us.w -= used
        nfl = (us.g + pages) // nr
        if nfl and self.plan is None:
            return False
        hold = costs.pte_zap * pages + costs.pte_none * empties + nfl * self.flush_ns
        us.t += costs.lock + hold
        us.holds.append(hold)
        us.t += costs.unlock
        if nfl:
            us.flushes += [nr] * nfl
            us.under += [True] * nfl
            us.g = us.g + pages - nr * nfl
            us.need = us.g > 0
        else:
            us.g += pages
            us.need = us.need or pages > 0
        if pages or nfl or (costs.pte_none and empties):
            us.point = P_PLAIN
        return True

    def _commit(self, k: int, ent: int, st: _Unit) -> PmdRun:
        """Apply the first k units: clear, rmap, batch and flush, account."""
        kernel, c, tlb = self.kernel, self.c, self.tlb
        pfns = self.pfns[:ent if self.pres is None else int(np.count_nonzero(self.pres[:ent]))]
        del self.pfns, self.pres
        self.run.clear(k)
        fs = FrameSpan.of(pfns) if len(pfns) else None
        anon = rmap_remove(kernel.alloc, pfns, fs) if len(pfns) else 0
        if st.flushes and self.plan is not None and self.plan[1] is not None:
            self.plan[1]()
        self.backend.commit(kernel, c, tlb, pfns, st.flushes, st.under, st.need, fs)
        m = kernel.metrics
        m.pte_lock_hold.frombytes(np.array(st.holds, dtype=np.int64).tobytes())
        m.preempt_off.frombytes(np.array(st.offs, dtype=np.int64).tobytes())
        kernel._add_mm_rss(tlb.mm, anon, len(pfns) - anon)
        c.preempt_off_since = st.since
        self.zap_work[0] = st.w
        return PmdRun(self.run.addrs[k - 1], st.t - c.clock, st.point)
