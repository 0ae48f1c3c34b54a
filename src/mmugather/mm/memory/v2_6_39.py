"""mm/memory.c v2.6.39: the zap walk with its zap_work budget."""
from __future__ import annotations

from mmugather.kernel.locking import COND_RESCHED, SpinLock, SpinUnlock
from mmugather.mm.memory import Memory, TlbRef, _vma_range
import numpy as np

from mmugather.mm.memory.bulk import TableRun, may_bulk, rmap_remove, zap_steps
from mmugather.sim.engine import P_ENABLE, P_PLAIN, Elapse
from mmugather.mm.page_alloc import ANON
from mmugather.mm.pgtable import (
    PAGE_SHIFT, PAGE_SIZE, PGDIR_SIZE, PMD_SIZE, PUD_SIZE, addr_end, pgd_index, pmd_index, pte_index, pud_index,
)


class Memory2639(Memory):
    """The zap walk of Linux 2.6.39 (mm/memory.c v2.6.39): a zap_work budget of ZAP_BLOCK_SIZE bytes
    (PAGE_SIZE per present PTE, 1 per empty entry) bounds each gather; tlb_remove_page() may flush and free
    from inside zap_pte_range(), under the PTE lock."""

    def zap_block_size(self) -> int:
        """ZAP_BLOCK_SIZE: 8 pages with CONFIG_PREEMPT, 1024 otherwise."""
        return (8 if self.engine.full else 1024) * PAGE_SIZE

    def zap_pte_range(self, c, tlb, vma, pt, addr: int, end: int, zap_work: list, details):
        """zap_pte_range(), mm/memory.c v2.6.39. On the fast path, runs of present PTEs that nothing can
        interleave with are zapped in one pass (mm/memory/bulk.py)."""
        mm = tlb.mm
        ptes = pt.ptes
        costs = self.costs
        c_zap, c_none = costs.pte_zap, costs.pte_none
        kind, mapcount = self.alloc.kind, self.alloc.mapcount
        remove = self._tlb_remove_page
        fast = self.fast
        anon = file = 0
        yield SpinLock(pt.ptl)
        i = pte_index(addr)
        iend = i + ((end - addr) >> PAGE_SHIFT)
        none = 0
        work = zap_work[0]
        while True:
            if fast and may_bulk(self, c):
                quiet = self._tlb_quiet(tlb)
                if quiet:
                    n, j, cost, pfns, nanon, work, _ = zap_steps(self, c, pt, i, iend, none, quiet, work)
                    addr += (j - i) << PAGE_SHIFT
                    i = j
                    if not n:                           # only empty entries before the loop ends
                        none += cost
                        break
                    anon += nanon
                    file += n - nanon
                    self._tlb_add_quiet(tlb, pfns[:-1])
                    pfn = int(pfns[-1])
                    yield cost
                    none = 0
                    if not remove(c, tlb, pfn):
                        yield self.tlb_flush_mmu(c, tlb)
                    i += 1
                    addr += PAGE_SIZE
                    if addr == end or work <= 0:
                        break
                    continue
            ptent = ptes[i]
            if ptent:
                work -= PAGE_SIZE
                ptes[i] = 0                                     # ptep_get_and_clear_full()
                pfn = ptent >> PAGE_SHIFT
                if kind[pfn] == ANON:
                    anon += 1
                else:
                    file += 1
                mapcount[pfn] -= 1                              # page_remove_rmap()
                if mapcount[pfn] < 0:
                    raise AssertionError(f"zap_pte_range: pfn {pfn} mapcount < 0 (print_bad_pte)")
                yield c_zap + none
                none = 0
                if not remove(c, tlb, pfn):
                    yield self.tlb_flush_mmu(c, tlb)       # tlb_remove_page(): nr >= FREE_PTE_NR
            else:
                work -= 1
                none += c_none
            i += 1
            addr += PAGE_SIZE
            if addr == end or work <= 0:
                break
        zap_work[0] = work
        if none:
            yield none
        self._add_mm_rss(mm, anon, file)
        yield SpinUnlock(pt.ptl)
        return addr

    def zap_pmd_range(self, c, tlb, vma, pmd, addr: int, end: int, zap_work: list, details):
        """zap_pmd_range(), mm/memory.c v2.6.39. On the fast path, runs of whole tables are emulated in one
        pass (`_zap_tables_bulk`)."""
        while True:
            if self.fast and may_bulk(self, c):
                done = self._zap_tables_bulk(c, tlb, pmd, addr, end, zap_work, details)
                if done is not None:
                    addr, ns, point = done
                    yield Elapse(ns, point)
                    if addr == end or zap_work[0] <= 0:
                        return addr
                    continue
            nxt = addr_end(addr, end, PMD_SIZE)
            pt = pmd.entries.get(pmd_index(addr))
            if pt is None:
                zap_work[0] -= 1
                yield self.costs.pmd_none
            else:
                nxt = yield self.zap_pte_range(c, tlb, vma, pt, addr, nxt, zap_work, details)
            addr = nxt
            if addr == end or zap_work[0] <= 0:
                return addr

    def _zap_tables_bulk(self, c, tlb, pmd, addr: int, end: int, zap_work: list, details):
        """Fast path of zap_pmd_range() from addr: its iterations over whole PMD entries emulated in one
        numpy pass, for as many entries as the engine would run before another CPU could interleave
        (mm/memory/bulk.py). Per table, zap_pte_range()'s lock sections: spin_lock, the zap steps, the
        flushes tlb_remove_page() does from under the lock when FREE_PTE_NR pages are batched, the trailing
        none step, spin_unlock; a missing table is a pmd_none step. When zap_work runs out before `end`,
        what the step path does between zap_pmd_range() returning and being called again at the same
        address is emulated too: unmap_vmas()'s tlb_finish_mmu() (flush, preempt_enable) and
        tlb_gather_mmu() (preempt_disable, the same per-CPU gather), zap_work reset. Returns (address
        reached, ns, preemption point after the last step), zap_work[0] updated, or None."""
        cls = type(self)
        if (c.preempt_count != 1 or c.irqs_off or not self._tlb_bulk_ok(tlb)
                or cls.zap_pte_range is not Memory2639.zap_pte_range):
            return None
        run = TableRun(pmd, addr, end, 512)
        nu = len(run.tables)
        if nu < 2:
            return None
        costs = self.costs
        lock, unlock, c_zap, c_none, pmd_none = costs.lock, costs.unlock, costs.pte_zap, costs.pte_none, costs.pmd_none
        page_free = costs.page_free
        nr = self.FREE_PTE_NR
        can_restart = cls.unmap_vmas is Memory2639.unmap_vmas and (details is None or details.i_mmap_lock is None)
        plan = self._tlb_flush_plan(c, tlb)
        flush_ns = plan[0] + page_free * nr if plan is not None else 0
        is_t = [t is not None for t in run.tables]
        lens = [j - i if t else 0 for t, i, j in zip(run.tables, run.lo, run.hi)]
        flat = run.entries(nu)
        pres = flat != 0
        firsts = [0] * nu                                        # where each unit's entries begin in flat
        for u in range(1, nu):
            firsts[u] = firsts[u - 1] + lens[u - 1]
        cnt = [0] * nu
        if len(flat):
            tl = [u for u in range(nu) if is_t[u]]
            for u, n in zip(tl, np.add.reduceat(pres, [firsts[u] for u in tl], dtype=np.int64).tolist()):
                cnt[u] = n
        t, horizon = c.clock, c.horizon
        work, block = zap_work[0], self.zap_block_size()
        glen, need = len(tlb.pages), tlb.need_flush
        since, point = c.preempt_off_since, c.point
        holds, offs, flushes, under = [], [], [], []
        k = ent = 0
        for u in range(nu):
            ut, uw, ug, un, us, up = t, work, glen, need, since, point
            uholds, uoffs, ufl, uun = [], [], [], []
            n_u, cnt_u = lens[u], cnt[u]
            wsum = None                                          # zap_work spent through each entry
            x = 0
            ok = True
            while True:
                if uw <= 0:                                      # the block ended: restart the gather
                    if not can_restart:
                        ok = False
                        break
                    if un:
                        if plan is None:
                            ok = False
                            break
                        ut += plan[0] + page_free * ug
                        ufl.append(ug)
                        uun.append(False)
                        un, ug = False, 0
                        up = P_PLAIN
                    uoffs.append(ut - us)                        # preempt_enable() ...
                    up = P_ENABLE
                    us = ut                                      # ... preempt_disable()
                    uw = block
                if not is_t[u]:
                    uw -= 1
                    ut += pmd_none
                    up = P_PLAIN
                    last = pmd_none
                    break
                left = n_u - x                                   # entries x.. of the table, up to where
                if cnt_u == n_u:                                 # zap_work runs out (the entry it does)
                    y = x + min(left, -(-uw // PAGE_SIZE))
                    pages = y - x
                    used = PAGE_SIZE * pages
                elif cnt_u == 0:
                    y = x + min(left, uw)
                    pages = 0
                    used = y - x
                else:
                    if wsum is None:
                        f = firsts[u]
                        wsum = np.cumsum(pres[f:f + n_u] * (PAGE_SIZE - 1) + 1)
                    base = int(wsum[x - 1]) if x else 0
                    y = min(n_u, int(np.searchsorted(wsum, base + uw)) + 1)
                    used = int(wsum[y - 1]) - base
                    pages = (used - (y - x)) // (PAGE_SIZE - 1)
                empties = y - x - pages
                uw -= used
                nfl = (ug + pages) // nr
                if nfl and plan is None:
                    ok = False
                    break
                hold = c_zap * pages + c_none * empties + nfl * flush_ns
                ut += lock + hold
                uholds.append(hold)
                ut += unlock
                if nfl:
                    ufl += [nr] * nfl
                    uun += [True] * nfl
                    ug = ug + pages - nr * nfl
                    un = ug > 0
                else:
                    ug += pages
                    un = un or pages > 0
                if pages or nfl or (c_none and empties):
                    up = P_PLAIN
                last = unlock
                x = y
                if x == n_u:
                    break
            if not ok or ut - last >= horizon:
                break
            t, work, glen, need, since, point = ut, uw, ug, un, us, up
            holds += uholds
            offs += uoffs
            flushes += ufl
            under += uun
            ent = firsts[u] + n_u
            k = u + 1
            if t >= horizon:
                break
        if k == 0:
            return None
        pfns = flat[:ent][pres[:ent]] >> PAGE_SHIFT
        del flat, pres, wsum
        run.clear(k)
        anon = rmap_remove(self.alloc, pfns) if len(pfns) else 0
        if flushes and plan[1] is not None:
            plan[1]()
        self._tlb_bulk_commit(c, tlb, pfns, flushes, under, need)
        m = self.metrics
        m.pte_lock_hold.frombytes(np.array(holds, dtype=np.int64).tobytes())
        m.preempt_off.frombytes(np.array(offs, dtype=np.int64).tobytes())
        self._add_mm_rss(tlb.mm, anon, len(pfns) - anon)
        c.preempt_off_since = since
        zap_work[0] = work
        return run.addrs[k - 1], t - c.clock, point

    def zap_pud_range(self, c, tlb, vma, pud, addr: int, end: int, zap_work: list, details):
        """zap_pud_range(), mm/memory.c v2.6.39."""
        while True:
            nxt = addr_end(addr, end, PUD_SIZE)
            pmd = pud.entries.get(pud_index(addr))
            if pmd is None:
                zap_work[0] -= 1
                yield self.costs.pmd_none
            else:
                nxt = yield self.zap_pmd_range(c, tlb, vma, pmd, addr, nxt, zap_work, details)
            addr = nxt
            if addr == end or zap_work[0] <= 0:
                return addr

    def unmap_page_range(self, c, tlb, vma, addr: int, end: int, zap_work: list, details):
        """unmap_page_range(), mm/memory.c v2.6.39 (tlb_start_vma/tlb_end_vma are no-ops on x86)."""
        pgd = vma.mm.pgd
        while True:
            nxt = addr_end(addr, end, PGDIR_SIZE)
            pud = pgd.entries.get(pgd_index(addr))
            if pud is None:
                zap_work[0] -= 1
                yield self.costs.pmd_none
            else:
                nxt = yield self.zap_pud_range(c, tlb, vma, pud, addr, nxt, zap_work, details)
            addr = nxt
            if addr == end or zap_work[0] <= 0:
                return addr

    def unmap_vmas(self, c, tlbp: TlbRef, vmas: list, start_addr: int, end_addr: int, details):
        """unmap_vmas(), mm/memory.c v2.6.39: zap ZAP_BLOCK_SIZE at a time; after each block
        tlb_finish_mmu(), then (if need_resched() or i_mmap_lock contended) cond_resched() or, holding
        i_mmap_lock, return the restart address with no gather left; then tlb_gather_mmu() again. The
        mmu_notifier range calls bracket it, inside the caller's gather (preemption off)."""
        zap_work = [self.zap_block_size()]
        fullmm = tlbp.tlb.fullmm
        mm = tlbp.tlb.mm
        start = start_addr
        i_mmap_lock = details.i_mmap_lock if details is not None else None
        yield self.mmu_notifier_invalidate_range_start(c, mm, start_addr, end_addr)
        for vma in vmas:
            if vma.start >= end_addr:
                break
            r = _vma_range(vma, start_addr, end_addr)
            if r is None:
                continue
            start, end = r
            while start != end:
                start = yield self.unmap_page_range(c, tlbp.tlb, vma, start, end, zap_work, details)
                if zap_work[0] > 0:
                    if start != end:
                        raise AssertionError("unmap_vmas: zap_work left but range not done")
                    break
                yield self.tlb_finish_mmu(c, tlbp.tlb, start, start)
                tlbp.tlb = None
                if c.need_resched or (i_mmap_lock is not None and i_mmap_lock.waiters):
                    if i_mmap_lock is not None:
                        yield self.mmu_notifier_invalidate_range_end(c, mm, start_addr, end_addr)
                        return start
                    yield COND_RESCHED
                tlbp.tlb = yield self.tlb_gather_mmu(c, mm, fullmm)
                zap_work[0] = self.zap_block_size()
        yield self.mmu_notifier_invalidate_range_end(c, mm, start_addr, end_addr)
        return start
