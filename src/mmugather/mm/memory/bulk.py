"""The fast path: runs of teardown steps executed in one numpy pass, with exactly the effects, the metrics
and the simulated clock of running them one step at a time.

Why this is exact. The engine (sim/engine.py) runs one CPU's steps back to back until its clock reaches
`horizon`, the time of the next event on its queue; no other CPU acts in between. A step that starts
before the horizon runs whole, the engine stops after the first step that ends at or after it. So a
stretch of steps of one CPU that (a) all start before the horizon, (b) begin with no interrupt pending and
no reschedule asked (`attention` off: nothing to take between steps) and (c) take no lock another CPU
holds, interleaves with nothing: running it as one numpy pass and spending its summed cost in one yield
leaves the machine in the state the steps would have left it in, at the same simulated time. The last
step is yielded so that the engine stops after it exactly when it would have (an int when the last step
was a cost, `Elapse` when it was a handler that also moved the preemption point).

What is not reproduced: a PTE lock's `acquired_at` keeps its earlier value (the engine sets it when it
grants the lock and reads it only at the unlock that follows), and the clock is not advanced step by step
inside the pass (nothing reads it there).

The pieces:
- `zap_steps()`: the shared primitive of zap_pte_range() (2.6.39, 3.0 and 6.18 call it): the next zap
  steps of one table, up to the horizon and up to the pages the gather can take without an event (a
  flush, a new batch page).
- `zap_tables()`: zap_pmd_range() over runs of whole PTE tables (lock, zap steps, unlock, cond_resched),
  the gather's batch changes included (3.0 and 6.18), and 6.18's forced flushes of a full gather when they
  involve no other CPU (2.6.39's, which also crosses ZAP_BLOCK restarts and flushes from under the PTE
  lock, is Memory2639._zap_tables_bulk).
- `free_tables_bulk()`: free_pmd_range()'s free_pte_range() calls; `release_steps()` and
  `release_units()`: free_pages_and_swap_cache() and the gathers' loops over their batches.
The allocator (PageAlloc.release_array, free_array) and the invariant checker (on_free_array,
on_free_each_array) have array forms of their per-frame work for these.

The step path stays the reference: `Simulation(fast=False)` (explore/) never enters this module, and
tests/test_fastpath.py checks that both paths agree on random workloads.
"""
from __future__ import annotations

from itertools import chain, islice

import numpy as np

from mmugather.mm.page_alloc import ANON, FrameSpan
from mmugather.mm.pfn_runs import PfnRuns, RunCursor, run_pieces, runs_of
from mmugather.mm.pgtable import _PAGE_DIRTY, PAGE_SHIFT, PAGE_SIZE
from mmugather.sim.engine import INF, P_COND_RESCHED, P_PLAIN


def may_bulk(kernel, c) -> bool:
    """May CPU c run several steps at once now? Fast path on, nothing to attend to between steps, and the
    horizon (set by the free-running engine only) still ahead."""
    return kernel.fast and not c.attention and c.horizon > c.clock


def zap_steps(kernel, c, pt, i: int, iend: int, none: int, quiet: int, work: int | None = None,
              stop_dirty_file: bool = False):
    """The next zap steps of zap_pte_range()'s loop over entries [i, iend) of table `pt`, in one pass.

    The loop being replaced: for each entry, empty ones add `pte_none` to a pending cost `none` (and, in
    2.6.39, take 1 from the zap_work budget `work`); a present one is cleared, its rmap dropped
    (mapcount - 1) and counted anon or file, then the step `yield pte_zap + none` (none = 0), after which
    the page goes to the gather; the loop ends after entry iend - 1 or once `work` <= 0.

    Covers present entries while their steps end before the horizon (the first one ending at or after it
    is the last), at most `quiet` + 1 of them: the gather takes the first `quiet` pages without an event,
    the caller adds them (`pfns[:-1]`) and then handles the last page itself, as the loop does after its
    yield. With `stop_dirty_file` (6.18, whose gather delays the rmap removal of dirty file pages) the run
    ends before the first such page. Returns (n, i, cost, pfns, anon, work, first):
    - n = 0: no present entry before the loop ends: the loop adds `cost` to `none` and ends at entry i;
    - n > 0: entries first..i hold the n zapped PTEs, i the last; the caller yields `cost` (the n steps)
      and goes on after it;
    or None when the next present entry must go step by step. `work` comes back reduced by the entries
    covered (None when not given)."""
    v = np.frombuffer(pt.ptes, dtype=np.int64)
    w = v[i:iend]
    pres = w != 0
    if work is not None and work <= PAGE_SIZE * (iend - i):
        cum = np.cumsum(np.where(pres, PAGE_SIZE, 1))
        j = int(np.searchsorted(cum, work))             # the entry after which the budget is spent
        if j < len(cum):
            w, pres = w[:j + 1], pres[:j + 1]
    nz = np.flatnonzero(pres)
    costs = kernel.costs
    c_zap, c_none = costs.pte_zap, costs.pte_none
    if not len(nz):
        cnt = len(w)
        return 0, i + cnt, c_none * cnt, None, 0, None if work is None else work - cnt, i + cnt
    m = min(len(nz), quiet + 1)
    if stop_dirty_file:
        ent = w[nz[:m]]
        dirty = (ent & _PAGE_DIRTY) != 0
        if dirty.any():
            stop = dirty & (kernel.alloc.views()[2][ent >> PAGE_SHIFT] != ANON)
            if stop.any():
                m = int(np.argmax(stop))
                if m == 0:
                    return None
    base = c.clock + none
    last_end = base + c_zap * m + c_none * (int(nz[m - 1]) - (m - 1))
    if last_end >= c.horizon:
        j = np.arange(1, m + 1, dtype=np.int64)
        ends = base + c_zap * j + c_none * (nz[:m] - (j - 1))
        k = int(np.searchsorted(ends, c.horizon))       # the first step ending at or after the horizon
        m = k + 1
        last_end = int(ends[k])
    sel = nz[:m]
    first, last = int(sel[0]), int(sel[-1])
    pfns = w[sel] >> PAGE_SHIFT
    if last - first == m - 1:
        w[first:last + 1] = 0                           # ptep_get_and_clear_full()
    else:
        w[sel] = 0
    del v, w
    anon = rmap_remove(kernel.alloc, pfns)
    if work is not None:
        work -= PAGE_SIZE * m + (last + 1 - m)
    return m, i + last, last_end - c.clock, pfns, anon, work, i + first


def rmap_remove(alloc, pfns: np.ndarray, fs: FrameSpan | None = None) -> int:
    """page_remove_rmap() of each page, in order: mapcount - 1 (print_bad_pte when it goes below 0).
    Returns how many of the pages are anonymous. `fs`: FrameSpan.of(pfns), when the caller has it."""
    if fs is None:
        fs = FrameSpan.of(pfns)
    _, mapcount, kind = alloc.views()
    if fs is None:                                      # a page mapped twice here
        np.subtract.at(mapcount, pfns, 1)
        bad = mapcount[pfns] < 0
        anon = int(np.count_nonzero(kind[pfns] == ANON))
    elif fs.mask is not None:
        lo, hi, m = fs.lo, fs.hi, fs.mask
        mc = mapcount[lo:hi]
        mc -= m
        bad = (mc < 0)[pfns - lo] if mc.min() < 0 else np.zeros(1, dtype=bool)
        anon = int(np.count_nonzero(kind[lo:hi][m] == ANON))
    else:
        mapcount[pfns] -= 1
        bad = mapcount[pfns] < 0
        anon = int(np.count_nonzero(kind[pfns] == ANON))
    if bad.any():
        raise AssertionError(f"zap_pte_range: pfn {int(pfns[np.argmax(bad)])} mapcount < 0 (print_bad_pte)")
    return anon


def release_steps(kernel, c, pfns: np.ndarray, i: int, chunk: int) -> int:
    """free_pages_and_swap_cache()'s loop from page i of `pfns` on, in one pass: each step releases the
    next `chunk` pages (release_pages()) and then yields page_free per page. Releases the pages of the steps
    that start before the horizon, stopping before a chunk holding a frame some TLB, paging-structure cache
    or walker still reaches (its report must carry that step's clock: the caller runs it as a step).
    Returns the number of pages released (0: run the next chunk as a step)."""
    n = len(pfns) - i
    cost = kernel.costs.page_free
    if cost and c.horizon != INF:
        need = -(-(c.horizon - c.clock) // cost)         # pages whose cost reaches the horizon
        if need <= n:
            n = min(n, ((need - 1) // chunk + 1) * chunk)
    part = pfns[i:i + n]
    hit = kernel.invariants.reached(part)
    if hit is not None:
        n = int(np.argmax(hit)) // chunk * chunk
        part = part[:n]
    if n:
        kernel.alloc.release_array(c, part)
    return n


def free_tables_bulk(kernel, c, tlb, pmd, addr: int, end: int):
    """Fast path of free_pmd_range()'s loop from addr (a PTE table there): the free_pte_range() calls of the
    tables in [addr, end) in one pass. Each is one step (unhook the table, pgtable_free), and the next one
    begins by handing the table's frame to the gather (pte_free_tlb()); covers the tables whose steps the
    engine would run, as long as the gather takes their frames without an event (`_pte_free_quiet`, and
    `_pte_free_add_quiet` to take them). Returns (ns, the last table, its address, the address after it):
    the caller yields ns, then that table's pte_free_tlb(), as its free_pte_range() would; or None (go step
    by step)."""
    cls = type(kernel)
    if cls.free_pte_range is not _memory().free_pte_range:
        return None
    quiet = kernel._pte_free_quiet(tlb)
    if quiet < 1:
        return None
    from mmugather.mm.pgtable import PMD_SHIFT
    cost = kernel.costs.pgtable_free
    room = quiet + 1
    if cost and c.horizon != INF:                       # the step that reaches the horizon is the last
        room = min(room, -(-(c.horizon - c.clock) // cost))
    if room < 2:
        return None
    entries = pmd.entries
    get, j0 = entries.get, addr >> PMD_SHIFT
    got = list(islice(((j, pt) for j in range(j0, ((end - 1) >> PMD_SHIFT) + 1)
                       if (pt := get(j & 511)) is not None), room))
    if len(got) < 2:
        return None
    tables = [pt for _, pt in got]
    addrs = [j << PMD_SHIFT for j, _ in got]
    if got[0][0] == j0:
        addrs[0] = addr
    if len(got) == room:                                # up to the last table; else on to end
        end = min((got[-1][0] + 1) << PMD_SHIFT, end)
    addr = end
    mm = tlb.mm
    for at in addrs:                                    # pmd_clear()
        del entries[(at >> PMD_SHIFT) & 511]
        del mm.pte_tables[at >> PMD_SHIFT]
    mm.nr_ptes -= len(tables)
    kernel._pte_free_add_quiet(tlb, tables[:-1], addrs[:-1])   # pte_free_tlb() of all but the last
    return cost * len(tables), tables[-1], addrs[-1], addr


def release_units(kernel, c, units: list) -> int:
    """Release the pages of `units` (each a list, PfnRuns or numpy array of pfns), in order, as their
    free_pages_and_swap_cache() calls would, in one pass; stop before the first unit holding a frame some
    TLB, paging-structure cache or walker still reaches (its report must carry its own step's clock).
    Returns how many units were released."""
    if all(type(u) is list for u in units):
        starts, rlens, descs = runs_of(np.fromiter(chain.from_iterable(units), dtype=np.int64,
                                                   count=sum(len(u) for u in units)))
    else:
        enc = []
        for pages in units:
            if not isinstance(pages, PfnRuns):
                runs = PfnRuns()
                runs.extend(np.asarray(pages, dtype=np.int64))
                pages = runs
            enc.append(pages.a)
        joined = PfnRuns()
        joined.a.frombytes(b"".join(enc))
        starts, rlens, descs = joined.runs()
    k = len(units)
    inv = kernel.invariants
    if inv.tlb_refs or inv.pwc_refs or inv.walking:
        seen = 0
        for piece in run_pieces(starts, rlens, descs):
            hit = inv.reached(piece)
            if hit is not None:
                sizes = np.cumsum([len(u) for u in units])
                k = int(np.searchsorted(sizes, seen + int(np.argmax(hit)), "right"))
                total = int(sizes[k - 1]) if k else 0
                if not total:
                    return k
                starts, rlens, descs = RunCursor(starts, rlens, descs).take(0, total)
                break
            seen += len(piece)
    for piece in run_pieces(starts, rlens, descs):
        kernel.alloc.release_array(c, piece)
    return k


def release_flat(kernel, c, pfns: np.ndarray, sizes: np.ndarray) -> int:
    """release_units() of units given as one pfn array cut into consecutive `sizes` (at most the length
    of `pfns`): release the pfns of the first len(sizes) units, in order, stopping before the first unit
    holding a frame something still reaches. Returns how many units were released."""
    k = len(sizes)
    ends = np.cumsum(sizes)
    pfns = pfns[:int(ends[-1]) if k else 0]
    inv = kernel.invariants
    if inv.tlb_refs or inv.pwc_refs or inv.walking:
        hit = inv.reached(pfns)
        if hit is not None:
            k = int(np.searchsorted(ends, int(np.argmax(hit)), "right"))
            pfns = pfns[:int(ends[k - 1]) if k else 0]
    if len(pfns):
        kernel.alloc.release_array(c, pfns)
    return k


def _memory():
    from mmugather.mm.memory import Memory
    return Memory


_PTE_FREE_TLB: dict[type, int] = {}       # kernel class -> 1: stock pte_free_tlb(), 2: RcuTableFree30's, 0: other


def stock_pte_free_tlb(kernel) -> bool:
    """Is pte_free_tlb() the asm-generic one (the gather's tlb_remove_page() of the table page)? Also true
    of the HAVE_RCU_TABLE_FREE wrapper (mm/mmu_gather/rcu_table_v3_0.py) on an arch without it. The
    method lookup is done once per kernel class."""
    cls = type(kernel)
    which = _PTE_FREE_TLB.get(cls)
    if which is None:
        fn = cls.pte_free_tlb
        which = _PTE_FREE_TLB[cls] = (1 if fn is _memory().pte_free_tlb else
                                      2 if fn.__qualname__ == "RcuTableFree30.pte_free_tlb" else 0)
    return which == 1 or which == 2 and not getattr(kernel.arch, "have_rcu_table_free", True)


# ---------------------------------------------------------------- runs of PTE tables (the emulators)
class TableRun:
    """The PMD entries of [addr, end) under one PMD table, from addr up to the first whose PTE lock is
    taken or awaited, as units for an emulator: `tables[k]` is the PteTable (None: no table, a pmd_none
    step), `lo[k]`, `hi[k]` its entry range, `addrs[k]` the address after it. `entries()` reads the
    PTEs of the first tables in one array."""

    __slots__ = ("tables", "lo", "hi", "addrs")

    def __init__(self, pmd, addr: int, end: int, limit: int) -> None:
        n = min(((end - 1) >> 21) - (addr >> 21) + 1, limit) if addr < end else 0   # end <= the PUD's end
        i0 = (addr >> 21) & 511
        get = pmd.entries.get
        tables = [get(i) for i in range(i0, i0 + n)]
        for k, pt in enumerate(tables):
            if pt is not None and (pt.ptl.owner is not None or pt.ptl.waiters):
                n = k
                del tables[k:]
                break
        addrs = list(range(((addr >> 21) + 1) << 21, ((addr >> 21) + n + 1) << 21, 1 << 21))  # pmd_addr_end()
        lo, hi = [0] * n, [512] * n
        if n:
            if addrs[-1] > end:
                addrs[-1] = end
                hi[-1] = ((end - 1) >> PAGE_SHIFT & 511) + 1
            lo[0] = (addr >> PAGE_SHIFT) & 511
        self.tables, self.lo, self.hi, self.addrs = tables, lo, hi, addrs

    def entries(self, k: int) -> np.ndarray:
        """The PTEs of the first k units' tables, concatenated (a copy)."""
        parts = []
        for pt, i, j in zip(self.tables[:k], self.lo[:k], self.hi[:k]):
            if pt is not None:
                parts.append(pt.ptes if i == 0 and j == 512 else memoryview(pt.ptes)[i:j])
        return np.frombuffer(b"".join(parts), dtype=np.int64) if parts else np.zeros(0, dtype=np.int64)

    def clear(self, k: int) -> None:
        """ptep_get_and_clear_full() of every entry of the first k units' tables."""
        from mmugather.mm.pgtable import _EMPTY_TABLE
        for pt, i, j in zip(self.tables[:k], self.lo[:k], self.hi[:k]):
            if pt is not None:
                pt.ptes[i:j] = _EMPTY_TABLE if j - i == 512 else _EMPTY_TABLE[i:j]


def first_crossing(start: int, ends: np.ndarray, lasts: np.ndarray, horizon) -> int:
    """How many consecutive units (cumulative end clocks `ends`, cost of each unit's last step `lasts`)
    the engine would run from clock `start` before stopping: every unit whose steps all start before the
    horizon, up to and including the first one ending at or after it."""
    if not len(ends) or ends[-1] < horizon:
        return len(ends)
    k = int(np.searchsorted(ends, horizon))          # the first unit ending at or after the horizon
    return k + 1 if ends[k] - lasts[k] < horizon else k


def zap_tables(kernel, c, tlb, pmd, addr: int, end: int, *, cond_after_none: bool, dirty_file_stops: bool = False,
               forced_flush: bool = False):
    """The emulator of a zap_pmd_range() loop whose every PMD entry is one zap_pte_range() call (spin_lock,
    the zap steps, the trailing none step, spin_unlock) followed by cond_resched(), or a pmd_none step
    (followed by cond_resched() too when `cond_after_none`: 6.18), the gather taking every page, moving
    to a new batch where one fills (Linux 3.0 and 6.18; 2.6.39 has its own, v2_6_39.py). Covers as many
    entries as the engine would run before another CPU could interleave, and stops before an entry where
    the gather cannot tell in advance what a page costs (`_tlb_bulk_fills`), or, with `dirty_file_stops`,
    before a table holding a dirty file page (6.18 delays its rmap removal and flushes). Needs the gather's
    `_tlb_bulk_fills(tlb, npages)` and `_tlb_bulk_add(c, tlb, pfns, increasing)`, and `_tlb_bulk_range(tlb,
    start, end)` if it tracks ranges.

    With `forced_flush` (6.18), a full gather does not end the run when the gather can say what its
    forced flush does (`_tlb_bulk_cycle`, `_tlb_bulk_flushes`): the table where it fills is then two
    zap_pte_range() calls, the first ending with the flush under the PTE lock, spin_unlock and
    tlb_flush_mmu(), then cond_resched() and the second from the next entry on (none when the page was
    the table's last entry). Returns (address reached, ns, preemption point after the last step) or None
    (go step by step)."""
    if c.preempt_count or c.irqs_off:
        return None
    plan = kernel._tlb_bulk_fills(tlb, 512 * 512)
    if plan is None:
        return None
    cycle = kernel._tlb_bulk_cycle(c, tlb, plan[2]) if forced_flush else None
    # read no more tables than the gather can take pages of (as if they were full; a run of sparser ones
    # takes more calls)
    run = TableRun(pmd, addr, end, 512 if cycle else min(512, plan[2] // 512 + 2))
    nu = len(run.tables)
    if nu < 2:
        return None
    head = run.tables[0]
    if cycle is None and head is not None and plan[2] < run.hi[0] - run.lo[0] and np.count_nonzero(
            np.frombuffer(head.ptes, dtype=np.int64)[run.lo[0]:run.hi[0]]) > plan[2]:
        return None                                     # the gather cannot take the first table's pages
    costs = kernel.costs
    lock, unlock, cond, c_zap, c_none = costs.lock, costs.unlock, costs.cond_resched, costs.pte_zap, costs.pte_none
    none_cost = costs.pmd_none + (cond if cond_after_none else 0)
    is_t = np.fromiter((t is not None for t in run.tables), dtype=bool, count=nu)
    lens = np.where(is_t, np.array(run.hi) - np.array(run.lo), 0)
    clock, horizon = c.clock, c.horizon
    if horizon != INF:                                  # no need to read tables the horizon cuts off
        least = np.where(is_t, lock + unlock + cond + min(c_zap, c_none) * lens, none_cost)
        nu = min(nu, int(np.searchsorted(clock + np.cumsum(least), horizon)) + 1)
        is_t, lens = is_t[:nu], lens[:nu]
    flat = run.entries(nu)
    pres = flat != 0
    ent_end = np.cumsum(lens)
    cnt = np.zeros(nu, dtype=np.int64)
    if len(flat) == nu * 512:                           # whole tables only
        cnt[:] = np.count_nonzero(pres.reshape(nu, 512), axis=1)
    elif len(flat):
        cnt[is_t] = np.add.reduceat(pres.view(np.uint8), (ent_end - lens)[is_t], dtype=np.int64)
    page_end = np.cumsum(cnt)
    ent = flat[pres]                                    # the present entries
    del flat
    # the plan was made for more pages than these units hold: its fills after them fall off the end
    fill_at, fill_ns, limit = plan
    ev = np.bincount(np.searchsorted(page_end, fill_at, "right"), weights=fill_ns, minlength=nu)[:nu]
    ev = ev.astype(np.int64)
    fl = None                                           # the pages that force a flush, with `cycle`
    if limit < page_end[-1]:
        if cycle is None:                               # not past the table of a page that cannot be told
            nu = int(np.searchsorted(page_end, limit, "right"))
        else:
            period, first_ns, flush_ns, free_ns = cycle
            fl = np.arange(limit, int(page_end[-1]), period)
    if dirty_file_stops and len(ent):
        dirty = (ent & _PAGE_DIRTY) != 0
        if dirty.any():
            stop = dirty & (kernel.alloc.views()[2][ent >> PAGE_SHIFT] != ANON)
            if stop.any():
                nu = min(nu, int(np.searchsorted(page_end, int(np.argmax(stop)), "right")))
    hold = c_zap * cnt + c_none * (lens - cnt) + ev
    cost = np.where(is_t, lock + hold + unlock + cond, none_cost)
    if fl is not None:                                  # split the tables where the gather fills
        def at(x: int) -> int:
            """Where in flat the present entry of page x is."""
            u = int(np.searchsorted(page_end, x, "right"))
            s = int(ent_end[u] - lens[u])
            return s + int(np.flatnonzero(pres[s:s + lens[u]])[x - int(page_end[u] - cnt[u])])
        uf = np.searchsorted(page_end, fl, "right")     # the table of each, its entry there, its pages
        off = np.array([at(x) for x in fl.tolist()], dtype=np.int64) - (ent_end - lens)[uf]
        cnt1 = fl - (page_end - cnt)[uf] + 1            # up to that one (the fills' costs come before)
        fns = np.full(len(fl), flush_ns)
        fns[0] = first_ns
        hold1 = c_zap * cnt1 + c_none * (off + 1 - cnt1) + ev[uf] + fns
        two = off < lens[uf] - 1                        # a second zap_pte_range() after cond_resched()
        cost[uf] += fns + free_ns + np.where(two, cond + lock + unlock, 0)
    last = np.where(is_t | cond_after_none, cond, costs.pmd_none)
    k = first_crossing(clock, (clock + np.cumsum(cost))[:nu], last[:nu], horizon)
    if k == 0:
        return None
    npages = int(page_end[k - 1])
    pfns = ent[:npages]
    pfns >>= PAGE_SHIFT
    fs = FrameSpan.of(pfns) if npages else None
    anon = rmap_remove(kernel.alloc, pfns, fs) if npages else 0
    nfl = int(np.count_nonzero(uf < k)) if fl is not None else 0
    if nfl:
        kernel._tlb_bulk_flushes(c, tlb, pfns, fs, limit, nfl)
    else:
        kernel._tlb_bulk_add(c, tlb, pfns, fs is not None and fs.increasing)
    after = int(fl[nfl - 1]) + 1 if nfl else 0         # the pages since the last flush reset the range
    if npages > after and hasattr(kernel, "_tlb_bulk_range"):    # tlb_remove_tlb_entry() of each cleared PTE
        if nfl:
            idx = (at(after), at(npages - 1))
        else:
            nent = int(ent_end[k - 1])
            idx = (int(np.argmax(pres)), nent - 1 - int(np.argmax(pres[nent - 1::-1])))
        first, lastp = (int(np.searchsorted(ent_end, x, "right")) for x in idx)
        base = [run.addrs[u] - ((run.hi[u] - run.lo[u]) << PAGE_SHIFT) - (int(ent_end[u] - lens[u]) << PAGE_SHIFT)
                for u in (first, lastp)]
        kernel._tlb_bulk_range(tlb, base[0] + (idx[0] << PAGE_SHIFT), base[1] + ((idx[1] + 1) << PAGE_SHIFT))
    run.clear(k)
    tables = np.flatnonzero(is_t[:k])
    h = hold[tables]
    if nfl:                                             # the split tables hold their PTE lock twice
        h1, h2, has2 = hold.copy(), np.zeros_like(hold), np.zeros(len(hold), dtype=bool)
        h1[uf[:nfl]], h2[uf[:nfl]], has2[uf[:nfl]] = hold1[:nfl], hold[uf[:nfl]] - hold1[:nfl] + fns[:nfl], two[:nfl]
        h = np.column_stack((h1[tables], h2[tables])).ravel()[
            np.column_stack((np.ones(len(tables), dtype=bool), has2[tables])).ravel()]
    m = kernel.metrics
    m.pte_lock_hold.frombytes(h.tobytes())
    m.preempt_off.frombytes((lock + h + unlock).tobytes())
    kernel._add_mm_rss(tlb.mm, anon, npages - anon)
    point = P_COND_RESCHED if is_t[k - 1] or cond_after_none else P_PLAIN
    return run.addrs[k - 1], clock + int(cost[:k].sum()) - c.clock, point
