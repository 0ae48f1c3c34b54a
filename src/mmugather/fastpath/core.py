"""The primitives of the bulk backends (src/mmugather/fastpath/): a run of zap steps over one PTE table, rmap
removal, a run of free_pte_range() calls, release of pages chunk by chunk or batch by batch, the PMD entries
of a run of tables, and the engine's cut rule. Each says which steps it reproduces; the package docstring
says why running them at once is exact."""
from __future__ import annotations

from array import array
from bisect import bisect_left
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from itertools import islice
from typing import Any

import numpy as np

from mmugather.kernel.sched import INF
from mmugather.mm.page_alloc import ANON, FrameSpan
from mmugather.mm.pfn_runs import RunCursor, expand_runs, rising_breaks, run_cuts, run_gaps, run_pieces
from mmugather.mm.pgtable import _EMPTY_TABLE, _PAGE_DIRTY, PAGE_SHIFT, PAGE_SIZE, PMD_SHIFT, PTRS_PER_TABLE
from mmugather.mm.protocols import FreedTables


def may_bulk(c) -> bool:
    """May CPU c run several steps at once now? Nothing to attend to between steps, and the horizon (set
    by the free-running engine only) still ahead."""
    return not c.attention and c.horizon > c.clock


def attention_idle(c, clock: int | None = None) -> bool:
    """Would the engine's attention to CPU c (Engine._attend) do nothing at the boundaries of steps that
    all begin before its horizon and leave preempt_count raised and the preemption point plain (the steps
    of a run under a PTE lock)? True when there is nothing to attend to, or when no IPI is due (one that
    arrives later has its event at its arrival, where the horizon stops the run) and need_resched cannot
    preempt (preempt_count raised: no preemption model switches there). `clock`: at that time (default
    c.clock)."""
    if not c.attention:
        return True
    pending = c.pending
    at = c.clock if clock is None else clock
    return c.preempt_count > 0 and not (pending and not c.irqs_off and pending[0][0] <= at)


def attention_idle_plain(engine, c, clock: int) -> bool:
    """attention_idle() for steps that end at a plain preemption point outside a PTE lock (the int yields
    of free_pages_and_swap_cache()), at `clock`: no IPI due, and c's task cannot be preempted there (in the
    kernel, unless CONFIG_PREEMPT finds preempt_count 0 and interrupts on: Engine.preemptible() at P_PLAIN).
    So a task woken on c (need_resched) while its kernel code does not reschedule does not stop them."""
    if not c.attention:
        return True
    pending = c.pending
    if pending and not c.irqs_off and pending[0][0] <= clock:
        return False
    task = c.curr
    return task is not None and task.in_kernel and (c.preempt_count > 0 or c.irqs_off or not engine.full)


def may_bulk_plain(engine, c) -> bool:
    """may_bulk() for steps that end at plain preemption points (attention_idle_plain())."""
    return c.horizon > c.clock and attention_idle_plain(engine, c, c.clock)


def may_bulk_locked(c) -> bool:
    """may_bulk() for the steps of a run under a PTE lock: attention that would do nothing (attention_idle)
    does not stop it."""
    return c.horizon > c.clock and attention_idle(c)


@dataclass(slots=True)
class ZapSteps:
    """What zap_steps() did: `n` present PTEs zapped (0: only empty entries before the loop ends, at entry
    `last`); entries `first`..`last` hold them, `last` the last one; `ns` their steps' cost; `pfns` their
    pages in order; `anon` how many are anonymous; `work` the zap_work budget left (None when not given)."""

    n: int
    last: int
    ns: int
    pfns: Any                 # np.ndarray of int64 (None when n == 0)
    anon: int
    work: int | None
    first: int
    run0: int = -1


def _before_dirty_file(kernel, ents: np.ndarray) -> int:
    """How many of the present PTEs `ents` come before the first that maps a dirty file page (all, if none)."""
    dirty = (ents & _PAGE_DIRTY) != 0
    if dirty.any():
        stop = dirty & (kernel.alloc.views()[2][ents >> PAGE_SHIFT] != ANON)
        if stop.any():
            return int(np.argmax(stop))
    return len(ents)


def _within_horizon(c, base: int, c_zap: int, c_none: int, nz: np.ndarray, m: int) -> tuple[int, int]:
    """(how many, the clock at the end of the last) of the zap steps of present entries nz[:m], starting at
    `base`, that end before CPU c's horizon, plus the first one ending at or after it."""
    last_end = base + c_zap * m + c_none * (int(nz[m - 1]) - (m - 1))
    if last_end >= c.horizon:
        steps = np.arange(1, m + 1, dtype=np.int64)
        ends = base + c_zap * steps + c_none * (nz[:m] - (steps - 1))
        k = int(np.searchsorted(ends, c.horizon))       # the first step ending at or after the horizon
        m = k + 1
        last_end = int(ends[k])
    return m, last_end


def zap_steps(kernel, c, pt, i: int, iend: int, none: int, quiet: int, work: int | None = None,
              stop_dirty_file: bool = False) -> ZapSteps | None:
    """The next zap steps of zap_pte_range()'s loop over entries [i, iend) of table `pt`, in one pass.

    The loop being replaced: for each entry, empty ones add `pte_none` to a pending cost `none` (and, in
    2.6.39, take 1 from the zap_work budget `work`); a present one is cleared, its rmap dropped
    (mapcount - 1) and counted anon or file, then the step `yield pte_zap + none` (none = 0), after which
    the page goes to the gather; the loop ends after entry iend - 1 or once `work` <= 0.

    Covers present entries while their steps end before the horizon (the first one ending at or after it
    is the last), at most `quiet` + 1 of them: the gather takes the first `quiet` pages without an event,
    the caller adds them (`pfns[:-1]`) and then handles the last page itself, as the loop does after its
    yield. With `stop_dirty_file` (6.18, whose gather delays the rmap removal of dirty file pages) the run
    ends before the first such page. Returns a ZapSteps:
    - n = 0: no present entry before the loop ends: the loop adds `ns` to `none` and ends at entry `last`;
    - n > 0: entries first..last hold the n zapped PTEs; the caller yields `ns` (the n steps) and goes on
      after it;
    or None when the next present entry must go step by step. `work` comes back reduced by the entries
    covered (None when not given)."""
    engine = kernel.engine
    la = engine.lookahead
    if (la is not None and c.horizon != INF and engine.observer is None and engine.reserved is None
            and not la.reads_table(engine, pt)):
        return _zap_ahead(kernel, c, pt, i, iend, none, quiet, work, stop_dirty_file)
    small = _zap_scan(kernel, c, pt, i, iend, none, quiet, work, stop_dirty_file)
    if small is not _TOO_LONG:
        return small
    dense = _dense(kernel, pt, i, iend, quiet, work, stop_dirty_file)
    if dense is not None:
        p0, m, all_anon = dense
        c_zap, base = kernel.costs.pte_zap, c.clock + none
        if base + c_zap * m >= c.horizon:               # (_within_horizon() of steps that all cost pte_zap)
            m = _first_end_at(base, c_zap, c.horizon, 0, m) + 1
        return _dense_steps(kernel, c, pt, i, base, work, p0, m, all_anon)
    got = _window(kernel, pt, i, iend, quiet, work, stop_dirty_file)
    if not isinstance(got, tuple):
        return got
    w, nz, m = got
    c_zap, c_none = kernel.costs.pte_zap, kernel.costs.pte_none
    m, last_end = _within_horizon(c, c.clock + none, c_zap, c_none, nz, m)
    sel = nz[:m]
    first, last = int(sel[0]), int(sel[-1])
    pfns, anon = _clear_array(kernel, w, sel, first, last)
    del w
    if work is not None:
        work -= PAGE_SIZE * m + (last + 1 - m)
    return ZapSteps(m, i + last, last_end - c.clock, pfns, anon, work, i + first)


def _window(kernel, pt, i: int, iend: int, quiet: int, work: int | None,
            stop_dirty_file: bool) -> tuple[np.ndarray, np.ndarray, int] | ZapSteps | None:
    """The array path's view of entries [i, iend) of `pt`: the entries w (cut after the one where the
    zap_work budget `work` is spent), the indices nz of the present ones (at least one), and m >= 1, how
    many of those a run may take: at most `quiet` + 1, and with `stop_dirty_file` none from the first dirty
    file page on. Else zap_steps()'s answer: ZapSteps of the empty entries when none is present, None when
    the first present one is a dirty file page. w is a view of pt.ptes: del it before the table may be
    resized."""
    w = np.frombuffer(pt.ptes, dtype=np.int64)[i:iend]
    pres = w != 0
    if work is not None and work <= PAGE_SIZE * (iend - i):
        cum = np.cumsum(np.where(pres, PAGE_SIZE, 1))
        j = int(np.searchsorted(cum, work))             # the entry after which the budget is spent
        if j < len(cum):
            w, pres = w[:j + 1], pres[:j + 1]
    nz = np.flatnonzero(pres)
    if not len(nz):
        cnt = len(w)
        return ZapSteps(0, i + cnt, kernel.costs.pte_none * cnt, None, 0, None if work is None else work - cnt,
                        i + cnt)
    m = min(len(nz), quiet + 1)
    if stop_dirty_file:
        m = _before_dirty_file(kernel, w[nz[:m]])
        if m == 0:
            return None
    return w, nz, m


def _clear_array(kernel, w: np.ndarray, sel: np.ndarray, first: int, last: int) -> tuple[np.ndarray, int]:
    """Clear the PTEs w[sel] (ascending; sel[0] == first, sel[-1] == last), as ptep_get_and_clear_full()
    does one by one, and drop their rmaps: (their frames, how many were anon)."""
    pfns = w[sel] >> PAGE_SHIFT
    if last - first == len(sel) - 1:
        w[first:last + 1] = 0                           # ptep_get_and_clear_full()
    else:
        w[sel] = 0
    return pfns, rmap_remove(kernel.alloc, pfns)


def _zap_ahead(kernel, c, pt, i: int, iend: int, none: int, quiet: int, work: int | None,
               stop_dirty_file: bool) -> ZapSteps | None:
    """zap_steps() when the engine's lookahead takes the events due where a step reaches the horizon
    (Engine.run_ahead) and none of them reads this table (Lookahead.reads_table): the steps' end clocks in
    one array, the crossings found on it (the first step ending at or after each horizon), the events run at
    each, as the engine would after the steps before; then the PTEs of all the steps run are cleared and
    their rmaps dropped in one pass (they commute with those events). The last step's crossing ends the run
    (its events are the engine's)."""
    dense = _dense(kernel, pt, i, iend, quiet, work, stop_dirty_file)
    if dense is not None:
        return _zap_ahead_dense(kernel, c, pt, i, none, work, *dense)
    got = _window(kernel, pt, i, iend, quiet, work, stop_dirty_file)
    if not isinstance(got, tuple):
        return got
    w, nz, m = got
    c_zap, c_none = kernel.costs.pte_zap, kernel.costs.pte_none
    del w
    steps = np.arange(1, m + 1, dtype=np.int64)
    ends = (c.clock + none + c_zap * steps + c_none * (nz[:m] - (steps - 1))).tolist()
    engine = kernel.engine
    k = m
    x = bisect_left(ends, c.horizon)                    # the first step ending at or after the horizon
    while x < m - 1:
        t = ends[x]
        if not engine.run_ahead(c, t) or not attention_idle(c, t):
            k = x + 1
            break
        x = bisect_left(ends, c.horizon, x + 1)
    sel = nz[:k] + i
    first, last = int(sel[0]), int(sel[-1])
    pfns, anon = _clear_array(kernel, np.frombuffer(pt.ptes, dtype=np.int64), sel, first, last)
    if work is not None:
        work -= PAGE_SIZE * k + (last + 1 - i - k)
    return ZapSteps(k, last, ends[k - 1] - c.clock, pfns, anon, work, first)


_RAMP = np.arange(PTRS_PER_TABLE, dtype=np.int64) << PAGE_SHIFT     # _dense(): entry k of a run of frames
_MAPPED_ONCE = array("h", [1] * PTRS_PER_TABLE)      # _clear_dense(): the mapcounts of pages mapped once
_UNMAPPED = array("h", bytes(2 * PTRS_PER_TABLE))


def _dense(kernel, pt, i: int, iend: int, quiet: int, work: int | None,
           stop_dirty_file: bool) -> tuple[int, int, bool] | None:
    """When the entries a run may take from i on (as _window() counts them) are all present and map
    consecutive frames going up (pages populated together): (their first frame p0, how many m, whether
    all are known anonymous). None: take _window() (nothing changed). With `stop_dirty_file`, only when
    all m pages are anonymous (no dirty file page to stop before)."""
    ptes = pt.ptes
    e0 = ptes[i]
    if not e0:
        return None
    n = iend - i
    if work is not None and work <= PAGE_SIZE * n:      # the entry where the budget is spent, all present
        n = max(1, -(-work // PAGE_SIZE))
    m = min(n, quiet + 1)
    p0 = e0 >> PAGE_SHIFT
    if (ptes[i + m - 1] >> PAGE_SHIFT) - p0 != m - 1:
        return None
    if m > 2 and (_RAMP[:m] + e0).tobytes() != ptes[i:i + m].tobytes():   # (not e0's flags on every entry:
        p = np.frombuffer(ptes, dtype=np.int64)[i:i + m] >> PAGE_SHIFT       # m frames from p0 to p0 + m - 1,
        if not (p[1:] > p[:-1]).all():                                     # all going up)
            return None
    if stop_dirty_file:
        if memoryview(kernel.alloc.kind)[p0:p0 + m].tobytes().count(ANON) != m:
            return None
        return p0, m, True
    return p0, m, False


def _first_end_at(base: int, step: int, horizon: float, lo: int, m: int) -> int:
    """bisect_left(ends, horizon, lo) over the m step end clocks ends[s] = base + step * (s + 1)."""
    if horizon == INF:
        return m
    if step <= 0:
        return lo if base >= horizon else m
    return min(m, max(lo, -(-(int(horizon) - base) // step) - 1))


def _clear_dense(kernel, pt, i: int, p0: int, k: int, all_anon: bool) -> int:
    """_clear_array() of the k entries from i, which map the frames p0 .. p0 + k - 1: clear them, drop
    their rmaps (print_bad_pte at the first below 0). Returns how many of the pages are anonymous."""
    pt.ptes[i:i + k] = _EMPTY_TABLE[:k]                 # ptep_get_and_clear_full()
    alloc = kernel.alloc
    mapcount = alloc.mapcount
    if mapcount[p0:p0 + k] == _MAPPED_ONCE[:k]:         # (each page mapped once: all to 0, no numpy call)
        mapcount[p0:p0 + k] = _UNMAPPED[:k]
    else:
        mc = np.frombuffer(mapcount, dtype=np.int16)[p0:p0 + k]
        mc -= 1
        if mc.min() < 0:
            raise AssertionError(f"zap_pte_range: pfn {p0 + int(np.argmax(mc < 0))} mapcount < 0 (print_bad_pte)")
        del mc
    return k if all_anon else memoryview(alloc.kind)[p0:p0 + k].tobytes().count(ANON)


def _zap_ahead_dense(kernel, c, pt, i: int, none: int, work: int | None, p0: int, m: int,
                     all_anon: bool) -> ZapSteps:
    """_zap_ahead() of the m entries from i that map the frames p0 .. p0 + m - 1 (_dense()): every step
    costs pte_zap, so its end clocks base + pte_zap * (s + 1) need no array."""
    c_zap = kernel.costs.pte_zap
    base = c.clock + none
    engine = kernel.engine
    k = m
    x = _first_end_at(base, c_zap, c.horizon, 0, m)     # the first step ending at or after the horizon
    while x < m - 1:
        t = base + c_zap * (x + 1)
        if not engine.run_ahead(c, t) or not attention_idle(c, t):
            k = x + 1
            break
        x = _first_end_at(base, c_zap, c.horizon, x + 1, m)
    return _dense_steps(kernel, c, pt, i, base, work, p0, k, all_anon)


def _dense_steps(kernel, c, pt, i: int, base: int, work: int | None, p0: int, k: int, all_anon: bool) -> ZapSteps:
    """The first k of a dense run's steps taken (they end at base + pte_zap * k): their entries cleared and
    rmaps dropped (_clear_dense), as a ZapSteps whose frames are p0 .. p0 + k - 1 (`run0`, no pfn array)."""
    anon = _clear_dense(kernel, pt, i, p0, k, all_anon)
    return ZapSteps(k, i + k - 1, base + kernel.costs.pte_zap * k - c.clock, None, anon,
                    None if work is None else work - PAGE_SIZE * k, i, p0)


_TOO_LONG: Any = object()     # _zap_scan(): the run is longer than SCAN entries, use the array path
SCAN = 48


def _zap_scan(kernel, c, pt, i: int, iend: int, none: int, quiet: int, work: int | None,
              stop_dirty_file: bool) -> ZapSteps | None:
    """zap_steps() entry by entry in plain Python, for runs that reach the engine's horizon within SCAN
    entries: the same result, without numpy's cost on tiny arrays. Returns _TOO_LONG when the run
    reaches entry i + SCAN first (nothing changed: the caller takes the array path).

    Where the engine would stop CPU c (a step ending at or after the horizon) while the gather still takes
    pages quietly, Engine.run_ahead() may run the events due before c's next step (other CPUs' user work,
    which reaches nothing this run reads or writes) and let the run go on, as the engine's next steps of c
    would: the PTEs of each stretch are cleared when it begins, never before the events it follows."""
    ptes = pt.ptes
    costs = kernel.costs
    c_zap, c_none = costs.pte_zap, costs.pte_none
    horizon = c.horizon
    base = c.clock + none
    alloc = kernel.alloc
    kind, mapcount = alloc.kind, alloc.mapcount
    limit = min(iend, i + SCAN)
    sel: list[int] = []          # the present entries of the stretch not cleared yet
    pfns: list[int] = []         # the pages of the stretches cleared
    anon = k = used = 0
    last_end = base
    first = last = -1
    j = i
    while j < iend:
        if j == limit and first < 0:
            return _TOO_LONG
        e = ptes[j]
        if e:
            if stop_dirty_file and e & _PAGE_DIRTY and kind[e >> PAGE_SHIFT] != ANON:
                if not k:
                    return None
                break
            last_end = base + c_zap * (k + 1) + c_none * (j - i - k)
            sel.append(j)
            last = j
            k += 1
            if k == quiet + 1:
                break
            if last_end >= horizon:
                if first < 0:
                    first = sel[0]
                anon += _clear(ptes, sel, pfns, mapcount, kind)
                if work is not None and used + PAGE_SIZE >= work or j + 1 == iend:
                    break
                if not kernel.engine.run_ahead(c, last_end):
                    break
                horizon = c.horizon
                if not attention_idle(c, last_end):        # (the engine resumed c at last_end)
                    break
        if work is not None:
            used += PAGE_SIZE if e else 1
            if used >= work:
                break
        j += 1
    if sel:
        if first < 0:
            first = sel[0]
        anon += _clear(ptes, sel, pfns, mapcount, kind)
    if not k:
        cnt = j + 1 - i if j < iend else iend - i
        return ZapSteps(0, i + cnt, c_none * cnt, None, 0, None if work is None else work - cnt, i + cnt)
    if work is not None:
        work -= PAGE_SIZE * k + (last + 1 - i - k)
    return ZapSteps(k, last, last_end - c.clock, np.array(pfns, dtype=np.int64), anon, work, first)


def _clear(ptes, sel: list[int], pfns: list[int], mapcount, kind) -> int:
    """Clear the PTEs at entries `sel` (ptep_get_and_clear_full()) and drop their pages' rmaps
    (page_remove_rmap(): mapcount - 1, print_bad_pte below 0), in order; their pages go to `pfns`, `sel`
    is emptied. Returns how many of the pages are anonymous."""
    anon = 0
    start = len(pfns)
    for j in sel:
        pfn = ptes[j] >> PAGE_SHIFT
        ptes[j] = 0
        mapcount[pfn] -= 1
        anon += kind[pfn] == ANON
        pfns.append(pfn)
    sel.clear()
    for pfn in pfns[start:]:
        if mapcount[pfn] < 0:
            raise AssertionError(f"zap_pte_range: pfn {pfn} mapcount < 0 (print_bad_pte)")
    return anon


def rmap_remove(alloc, pfns: np.ndarray, fs: FrameSpan | None = None, all_anon: bool = False) -> int:
    """page_remove_rmap() of each page, in order: mapcount - 1 (print_bad_pte when it goes below 0).
    Returns how many of the pages are anonymous. `fs`: FrameSpan.of(pfns), when the caller has it;
    `all_anon`: the caller knows every page is anonymous."""
    if fs is None:
        fs = FrameSpan.of(pfns)
    _, mapcount, kind = alloc.views()
    if fs is None:                                      # a page mapped twice here
        np.subtract.at(mapcount, pfns, 1)
        bad = mapcount[pfns] < 0
        anon = int(np.count_nonzero(kind[pfns] == ANON))
    elif fs.spanned:
        lo, hi, m = fs.lo, fs.hi, fs.mask
        mc = mapcount[lo:hi]
        if fs.holes is None:
            mc -= m
        else:                                           # (the span but its holes: no bool arithmetic)
            mc -= 1
            if len(fs.holes):
                mc[fs.holes] += 1
        bad = (mc < 0)[pfns - lo] if mc.min() < 0 else np.zeros(1, dtype=bool)
        anon = len(pfns) if all_anon else fs.count_kind(kind, ANON)
    else:
        mapcount[pfns] -= 1
        bad = mapcount[pfns] < 0
        anon = int(np.count_nonzero(kind[pfns] == ANON))
    if bad.any():
        raise AssertionError(f"zap_pte_range: pfn {int(pfns[np.argmax(bad)])} mapcount < 0 (print_bad_pte)")
    return anon


ARRAY_RELEASE = 256     # release_steps(): from this many pages on, one release_array() (numpy pays off)
AHEAD_ARRAY_RELEASE = 64    # _release_ahead(): likewise (the stretches of a batch, all at once)


def release_steps(kernel, c, pfns: np.ndarray, i: int, chunk: int) -> int:
    """free_pages_and_swap_cache()'s loop from page i of `pfns` on, in one pass: each step releases the
    next `chunk` pages (release_pages()) and then yields page_free per page. Releases the pages of the steps
    that start before the horizon (_release_stretch(): a chunk holding a frame some TLB, paging-structure
    cache or walker still reaches by its own release_pages() at its step's clock, where its report carries
    it). Where the horizon stops it with more than a chunk left, Engine.run_ahead() may run the events due
    first (other CPUs' user work) and the release goes on from there, as the engine's next steps would
    (each stretch's frames checked and released at its own turn). Returns the number of pages released."""
    cost = kernel.costs.page_free
    if cost and c.horizon != INF and len(pfns) - i > chunk and _release_commutes(kernel, pfns[i:]):
        return _release_ahead(kernel, c, pfns, i, chunk, cost)
    done = 0
    while True:
        start = i + done
        n = len(pfns) - start
        clock = c.clock + done * cost
        cut = False
        if cost and c.horizon != INF:
            need = -(-(c.horizon - clock) // cost)       # pages whose cost reaches the horizon
            if need <= n:
                n = min(n, ((need - 1) // chunk + 1) * chunk)
                cut = True
        _release_stretch(kernel, c, pfns[start:start + n], chunk, clock, cost)
        done += n
        if (not cut or len(pfns) - (i + done) <= chunk or not kernel.engine.run_ahead(c, c.clock + done * cost)
                or not attention_idle_plain(kernel.engine, c, c.clock + done * cost)):
            return done


def _release_stretch(kernel, c, part: np.ndarray, chunk: int, clock: int, cost: int) -> None:
    """Release `part`, the pages of consecutive steps of `chunk` pages beginning at `clock` that no other
    CPU's event comes between: at once where nothing reaches them; each chunk holding a frame some TLB,
    paging-structure cache or walker still reaches by its own release_pages() with c's clock at its step's
    start, the time its report carries (a free changes no TLB, cache or walker: what reaches which frame is
    the same at each of these steps)."""
    hit = kernel.invariants.reached(part)
    if hit is None:
        _release_run(kernel, c, part)
        return
    pos = 0
    for j in np.unique(np.flatnonzero(hit) // chunk).tolist():
        at = j * chunk
        if at > pos:
            _release_run(kernel, c, part[pos:at])
        saved, c.clock = c.clock, clock + at * cost
        try:
            kernel.alloc.release_pages(c, part[at:at + chunk].tolist())
        finally:
            c.clock = saved
        pos = at + chunk
    if pos < len(part):
        _release_run(kernel, c, part[pos:])


def _release_run(kernel, c, part: np.ndarray) -> None:
    """release_pages() of the chunks `part` in one call (the same frames freed in the same order): one
    release_array() from ARRAY_RELEASE pages on."""
    if len(part) >= ARRAY_RELEASE:
        kernel.alloc.release_array(c, part)
    else:
        kernel.alloc.release_pages(c, part.tolist())


def _release_commutes(kernel, pfns: np.ndarray) -> bool:
    """May the release of `pfns` wait until the events the lookahead takes meanwhile have run? When no TLB,
    paging-structure cache or walker reaches any of them and no PTE maps any (mapcount 0: no walk can fill
    a TLB entry for one), those events cannot reach them, nor can their release reach those events (and
    the engine runs the lookahead at all, with no observer)."""
    engine = kernel.engine
    if engine.lookahead is None or engine.observer is not None or engine.reserved is not None:
        return False
    if kernel.invariants.check_stores or kernel.invariants.reached(pfns) is not None:
        return False
    return not np.frombuffer(kernel.alloc.mapcount, dtype=np.int16)[pfns].any()


def _release_ahead(kernel, c, pfns: np.ndarray, i: int, chunk: int, cost: int) -> int:
    """release_steps() when the pages commute with the events run at the crossings (_release_commutes):
    the crossings found as release_steps() finds them, the events run at each (Engine.run_ahead), then the
    pages of all the steps run released in one call (the same frames freed in the same order)."""
    engine = kernel.engine
    total = len(pfns) - i
    done = 0
    while True:
        n = total - done
        clock = c.clock + done * cost
        need = -(-(c.horizon - clock) // cost)           # pages whose cost reaches the horizon
        if need > n:
            done = total
            break
        done += min(n, ((need - 1) // chunk + 1) * chunk)
        t = c.clock + done * cost
        if total - done <= chunk or not engine.run_ahead(c, t) or not attention_idle_plain(engine, c, t):
            break
    part = pfns[i:i + done]
    if done >= AHEAD_ARRAY_RELEASE:
        kernel.alloc.release_array(c, part)
    else:
        kernel.alloc.release_pages(c, part.tolist())
    return done


def free_tables(c, tlb, pmd, addr: int, end: int, cost: int, quiet: int,
                add_quiet: Callable[[list, list], None]) -> FreedTables | None:
    """free_pmd_range()'s loop from addr (a PTE table there): the free_pte_range() calls of the tables in
    [addr, end) in one pass. Each is one step (unhook the table, pgtable_free = `cost`), and the next one
    begins by handing the table's frame to the gather (pte_free_tlb()); covers the tables whose steps the
    engine would run, as long as the gather takes their frames without an event (`quiet` of them, taken
    by `add_quiet(tables, addrs)`). The caller yields ns, then the last table's pte_free_tlb(), as its
    free_pte_range() would. None: go step by step."""
    if quiet < 1:
        return None
    room = quiet + 1
    if cost and c.horizon != INF:                       # the step that reaches the horizon is the last
        room = min(room, -(-(c.horizon - c.clock) // cost))
    if room < 2:
        return None
    entries = pmd.entries
    j0, j1 = addr >> PMD_SHIFT, ((end - 1) >> PMD_SHIFT) + 1
    s0 = j0 & 511
    if s0 + j1 - j0 > 512:                              # (one PMD table's entries only: end <= the PUD's end)
        return None
    # the PMD entries of [addr, end), None where none: the first `room` of them when they are all tables
    # (a PteTable is never false), else all (the tables freed are then the first `room` present ones)
    tables = list(map(entries.get, range(s0, s0 + min(room, j1 - j0))))
    if room < j1 - j0 and not all(tables):
        tables = list(map(entries.get, range(s0, s0 + j1 - j0)))
    js: Sequence[int]                                   # the PMD indices of the tables freed, and their slots
    slots: Sequence[int]
    if not all(tables):
        js = list(islice((j for j, pt in zip(range(j0, j1), tables) if pt is not None), room))
        tables = [entries[j & 511] for j in js]
        slots = [j & 511 for j in js]
        addrs = [j << PMD_SHIFT for j in js]
    else:
        js = range(j0, j0 + min(room, len(tables)))
        del tables[room:]
        slots = range(s0, s0 + len(js))
        addrs = list(range(j0 << PMD_SHIFT, (j0 + len(js)) << PMD_SHIFT, 1 << PMD_SHIFT))
    if len(js) < 2:
        return None
    if js[0] == j0:
        addrs[0] = addr
    if len(js) == room:                                 # up to the last table; else on to end
        end = min((js[-1] + 1) << PMD_SHIFT, end)
    mm = tlb.mm
    _delete(entries, slots)                             # pmd_clear() of each
    _delete(mm.pte_tables, js)
    mm.nr_ptes -= len(tables)
    add_quiet(tables[:-1], addrs[:-1])                  # pte_free_tlb() of all but the last
    return FreedTables(cost * len(tables), tables[-1], addrs[-1], end)


_ALL = slice(None)


def _delete(d: dict, keys: Sequence[int]) -> None:
    """del d[key] of each of `keys` (distinct keys of d), in order: at once when they are all of d's."""
    if len(keys) == len(d):
        d.clear()
        return
    for key in keys:                                    # (a plain loop: no argument tuple per call)
        del d[key]


def release_runs(kernel, c, starts: np.ndarray, rlens: np.ndarray, descs: np.ndarray, k: int,
                 ends: Callable[[], np.ndarray]) -> int:
    """Release the pages of `k` units (a gather's batches), in order, as their free_pages_and_swap_cache()
    calls would, in one pass: their pages are the runs (starts, rlens, descs), `ends()` the cumulative page
    counts of the units. Stops before the first unit holding a frame some TLB, paging-structure cache or
    walker still reaches (its report must carry its own step's clock). Returns how many units were
    released."""
    inv = kernel.invariants
    if inv.tlb_refs or inv.pwc_refs or inv.walking:
        seen = 0
        for piece in run_pieces(starts, rlens, descs):
            hit = inv.reached(piece)
            if hit is not None:
                sizes = ends()
                k = int(np.searchsorted(sizes, seen + int(np.argmax(hit)), "right"))
                total = int(sizes[k - 1]) if k else 0
                if not total:
                    return k
                starts, rlens, descs = RunCursor(starts, rlens, descs).take(0, total)
                break
            seen += len(piece)
    dtype = pfn_dtype(kernel.alloc)
    reach = inv.tlb_refs or inv.pwc_refs or inv.walking
    for runs in run_cuts(starts, rlens, descs):
        if reach:
            _release_array_of(kernel, c, runs, dtype)
            continue
        breaks = rising_breaks(*runs)
        if not len(breaks):                             # (one stretch that goes up: no pfn array needed
            fs = FrameSpan.of_runs(runs[0], runs[1])    # when the span lists its holes)
            if fs is not None:
                kernel.alloc.release_span(c, fs, runs[0], runs[1], partial(expand_runs, *runs, dtype))
            else:
                _release_array_of(kernel, c, runs, dtype)
        else:
            _release_stretches(kernel, c, runs, breaks, dtype)
    return k


Runs = tuple[np.ndarray, np.ndarray, np.ndarray]     # pfn runs: (first pfns, lengths, descending flags)
SPAN_RELEASE = 1 << 12      # _release_stretches(): a stretch of runs going up from this many pfns on, apart


def _release_stretches(kernel, c, runs: Runs, breaks: np.ndarray, dtype: type) -> None:
    """Release the pfns of runs (nothing reaches them) that do not go up as a whole, in order: each stretch
    going up of at least SPAN_RELEASE pfns by itself (release_span(), when its span lists its holes), the
    runs between those by release_array() (3.0's batch chain ends with the page tables, below its pages:
    pte_free_tlb() is tlb_remove_page() there)."""
    starts, lens, descs = runs
    first = np.empty(len(breaks) + 1, dtype=np.int64)   # the first run of each stretch
    first[0] = 0
    first[1:] = breaks
    big = np.flatnonzero(np.add.reduceat(lens, first) >= SPAN_RELEASE)
    done = 0                                            # the runs released so far
    for i in big.tolist():
        a = int(first[i])
        b = int(first[i + 1]) if i + 1 < len(first) else len(starts)
        fs = FrameSpan.of_runs(starts[a:b], lens[a:b])
        if fs is None:
            continue
        if done < a:
            _release_array_of(kernel, c, (starts[done:a], lens[done:a], descs[done:a]), dtype)
        kernel.alloc.release_span(c, fs, starts[a:b], lens[a:b],
                                  partial(expand_runs, starts[a:b], lens[a:b], descs[a:b], dtype))
        done = b
    if done < len(starts):
        _release_array_of(kernel, c, (starts[done:], lens[done:], descs[done:]), dtype)


def _release_array_of(kernel, c, runs: Runs, dtype: type) -> None:
    """release_array() of the pfns of runs, with their FrameSpan (its gaps from the runs when none goes
    down)."""
    down = runs[2][runs[1] > 1].any()
    piece = expand_runs(*runs, dtype)
    kernel.alloc.release_array(c, piece, fs=FrameSpan.of(piece, None if down else run_gaps(*runs)))


def release_flat(kernel, c, pfns: np.ndarray, sizes: np.ndarray) -> int:
    """release_runs() of units given as one pfn array cut into consecutive `sizes` (at most the length
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


# ---------------------------------------------------------------- runs of PTE tables (the emulators)
PASS_TABLES = 512       # at most this many PTE tables per pass: bounds its host memory (its pfns and the
                        # per-entry temporaries), not what it does (the next pass goes on)
READ_TABLES = 64        # TableRun.pages(): tables whose entries are copied at once


def pfn_dtype(alloc) -> type:
    """The narrowest numpy type that holds every pfn `alloc` has handed out (int32 up to 2**31 frames)."""
    return np.int32 if alloc.top <= 1 << 31 else np.int64


def _contended(tables: list) -> bool:
    """Is the PTE lock of one of `tables` (PteTables, or None: no table) taken or awaited? (A plain loop:
    cheaper than maps of attrgetters and a set of the owners.)"""
    for pt in tables:
        if pt is not None:
            lock = pt.ptl
            if lock.owner is not None or lock.waiters:
                return True
    return False


class TableRun:
    """The PMD entries of [addr, end) under one PMD table, from addr up to the first whose PTE lock is
    taken or awaited, as units for an emulator: `tables[k]` is the PteTable (None: no table, a pmd_none
    step), `lo[k]`, `hi[k]` its entry range, `addrs[k]` the address after it. `entries()` reads the
    PTEs of the first tables in one array, `pages()` the pfns they map."""

    __slots__ = ("tables", "lo", "hi", "addrs")

    def __init__(self, pmd, addr: int, end: int, limit: int) -> None:
        n = min(((end - 1) >> 21) - (addr >> 21) + 1, limit) if addr < end else 0   # end <= the PUD's end
        i0 = (addr >> 21) & 511
        tables = list(map(pmd.entries.get, range(i0, i0 + n)))
        if _contended(tables):
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

    def _ends(self, k: int) -> list[int]:
        """Which of the first k units may cover part of their table only (the first and the last)."""
        return [0, k - 1] if k > 1 else [0] if k else []

    def widths(self) -> np.ndarray:
        """hi - lo of every unit, as a numpy int64 array (only the run's first and last may be partial)."""
        n = len(self.tables)
        w = np.full(n, 512, dtype=np.int64)
        for u in self._ends(n):
            w[u] = self.hi[u] - self.lo[u]
        return w

    def entries(self, k: int, u0: int = 0) -> np.ndarray:
        """The PTEs of units u0 .. k - 1's tables, concatenated (a writable copy)."""
        tables = self.tables[u0:k]
        lo, hi = self.lo[u0:k], self.hi[u0:k]
        if not all(tables):                             # (a PteTable is never false)
            parts = [pt.ptes if i == 0 and j == 512 else memoryview(pt.ptes)[i:j]
                     for pt, i, j in zip(tables, lo, hi) if pt is not None]
        else:
            parts = [pt.ptes for pt in tables]           # (a comprehension: cheaper than map(attrgetter))
            for u in self._ends(len(tables)):           # (only the run's first and last may be partial)
                if lo[u] or hi[u] != 512:
                    parts[u] = memoryview(parts[u])[lo[u]:hi[u]]
        return np.frombuffer(bytearray().join(parts), dtype=np.int64) if parts else np.zeros(0, dtype=np.int64)

    def pages(self, k: int, dtype: type) -> tuple[np.ndarray, np.ndarray | None]:
        """The pfns the present PTEs of the first k units' tables map, in order, as `dtype` (int32 halves
        a pass's largest array; the caller makes sure every pfn fits), and which of their entries are
        present (None: all of them). Reads READ_TABLES tables at a time: the int64 copy of their entries
        is the only one made."""
        size = sum(self.hi[:k]) - sum(self.lo[:k])      # (an upper bound when some unit has no table)
        out: np.ndarray = np.empty(size, dtype=dtype)
        pos, parts, holes = 0, [], False                # parts: each read's presence (its length: all)
        for u0 in range(0, k, READ_TABLES):
            flat = self.entries(min(k, u0 + READ_TABLES), u0)
            n = int(np.count_nonzero(flat))
            if n == len(flat):
                parts.append(n)
            else:
                pres = flat != 0
                flat = flat[pres]
                parts.append(pres)
                holes = True
            flat >>= PAGE_SHIFT                         # (in place, then one narrowing copy: cheaper than
            out[pos:pos + n] = flat                     # a shift that casts as it stores)
            pos += n
        if not holes:
            return out[:pos], None
        return out[:pos], np.concatenate([np.ones(p, dtype=bool) if type(p) is int else p for p in parts])

    def clear(self, k: int) -> None:
        """ptep_get_and_clear_full() of every entry of the first k units' tables."""
        tables = self.tables[:k]
        if not all(tables):                             # (a PteTable is never false)
            for pt, i, j in zip(tables, self.lo, self.hi):
                if pt is not None:
                    pt.ptes[i:j] = _EMPTY_TABLE if j - i == 512 else _EMPTY_TABLE[i:j]
            return
        ends = self._ends(k)
        for u in ends:
            i, j = self.lo[u], self.hi[u]
            tables[u].ptes[i:j] = _EMPTY_TABLE[i:j]
        for pt in tables[1:-1] if k > 1 else ():       # (a plain loop: no argument tuple per call)
            pt.ptes[_ALL] = _EMPTY_TABLE


def first_crossing(start: int, ends: np.ndarray, lasts: np.ndarray, horizon) -> int:
    """How many consecutive units (cumulative end clocks `ends`, cost of each unit's last step `lasts`)
    the engine would run from clock `start` before stopping: every unit whose steps all start before the
    horizon, up to and including the first one ending at or after it."""
    if not len(ends) or ends[-1] < horizon:
        return len(ends)
    k = int(np.searchsorted(ends, horizon))          # the first unit ending at or after the horizon
    return k + 1 if ends[k] - lasts[k] < horizon else k
