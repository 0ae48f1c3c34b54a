"""The Linux 2.6.39 gather: include/asm-generic/tlb.h v2.6.39."""
from __future__ import annotations

import numpy as np

from mmugather.kernel.locking import PREEMPT_DISABLE, PREEMPT_ENABLE
from mmugather.mm.swap_state import free_pages_and_swap_cache


class MmuGather2639:
    """struct mmu_gather, include/asm-generic/tlb.h v2.6.39: mm, nr (~0U: fast mode), need_flush, fullmm,
    pages[FREE_PTE_NR]."""

    __slots__ = ("mm", "fast_mode", "need_flush", "fullmm", "pages")

    SIZEOF = 8 + 4 * 4 + 8 * 506   # bytes of per-CPU storage, whether used or not

    def __init__(self) -> None:
        self.mm = None
        self.fast_mode = False
        self.need_flush = False
        self.fullmm = False
        self.pages: list[int] = []


class Gather2639:
    """The 2.6.39 gather, as kernel methods (include/asm-generic/tlb.h, Linux v2.6.39)."""

    FREE_PTE_NR = 506

    def tlb_gather_mmu(self, c, mm, fullmm: bool):
        """tlb_gather_mmu(), asm-generic/tlb.h v2.6.39: `&get_cpu_var(mmu_gathers)`: preemption off until
        tlb_finish_mmu(); fast mode (nr = ~0U) when only one CPU is online."""
        yield PREEMPT_DISABLE
        tlb = c.per_cpu.get("mmu_gathers")
        if tlb is None:
            tlb = c.per_cpu["mmu_gathers"] = MmuGather2639()
        tlb.mm = mm
        tlb.fast_mode = self.num_online_cpus == 1
        tlb.fullmm = fullmm
        return tlb

    def tlb_flush_mmu(self, c, tlb):
        """tlb_flush_mmu(), asm-generic/tlb.h v2.6.39: if anything was unmapped, tlb_flush() then
        free_pages_and_swap_cache() of the batch (nothing to free in fast mode)."""
        if not tlb.need_flush:
            return
        tlb.need_flush = False
        yield self.tlb_flush(c, tlb)
        if not tlb.fast_mode:
            pages, tlb.pages = tlb.pages, []
            self.metrics.pages_per_flush.append(len(pages))
            yield free_pages_and_swap_cache(self, c, pages)

    def tlb_finish_mmu(self, c, tlb, start: int, end: int):
        """tlb_finish_mmu(), asm-generic/tlb.h v2.6.39: flush, check_pgt_cache(), put_cpu_var()."""
        yield self.tlb_flush_mmu(c, tlb)
        yield PREEMPT_ENABLE

    def _tlb_remove_page(self, c, tlb, pfn: int) -> int:
        """The batching half of tlb_remove_page(), asm-generic/tlb.h v2.6.39. Returns the slots left before
        FREE_PTE_NR (0: the caller must tlb_flush_mmu() now, as tlb_remove_page() does itself). In fast
        mode the page is freed at once (free_page_and_swap_cache) and 1 is returned."""
        tlb.need_flush = True
        if tlb.fast_mode:
            self.put_page_now(c, pfn)
            return 1
        pages = tlb.pages
        pages.append(pfn)
        left = self.FREE_PTE_NR - len(pages)
        return left if left > 0 else 0

    def _tlb_quiet(self, tlb) -> int:
        """Fast path (mm/memory/bulk.py): how many pages `_tlb_remove_page` would batch with no other
        effect (before the one that fills the batch); 0 in fast mode or when a subclass changed it."""
        cls = type(self)
        if (tlb.fast_mode or cls._tlb_remove_page is not Gather2639._tlb_remove_page
                or cls.tlb_remove_page is not Gather2639.tlb_remove_page):
            return 0
        return max(0, self.FREE_PTE_NR - len(tlb.pages) - 1)

    def _tlb_add_quiet(self, tlb, pfns) -> None:
        """`_tlb_remove_page` of each of pfns (a numpy array, at most `_tlb_quiet(tlb)` of them)."""
        if len(pfns):
            tlb.need_flush = True
            tlb.pages.extend(pfns.tolist())

    def _tlb_bulk_ok(self, tlb) -> bool:
        """Fast path: may an emulator batch pages and restart this gather as the stock 2.6.39 code does?"""
        cls = type(self)
        return (not tlb.fast_mode and cls._tlb_remove_page is Gather2639._tlb_remove_page
                and cls.tlb_gather_mmu is Gather2639.tlb_gather_mmu
                and cls.tlb_finish_mmu is Gather2639.tlb_finish_mmu)

    def _tlb_flush_plan(self, c, tlb):
        """Fast path: tlb_flush_mmu() as an emulator may run it: (ns of its flush_tlb_mm step, the effect of
        that flush on this CPU to apply once), or None when only the step path can run it: anything but the
        stock code on x86 of that era, another CPU in mm_cpumask (IPIs), anything cached on this CPU, or a
        frame some TLB, paging-structure cache or walker still reaches (a free would report it)."""
        from mmugather.arch import X86Legacy
        from mmugather.sim.engine import TLBSTATE_OK
        arch, mm, inv = self.arch, tlb.mm, self.invariants
        cls = type(self)
        if (type(arch) is not X86Legacy or cls.tlb_flush_mmu is not Gather2639.tlb_flush_mmu
                or cls.tlb_flush.__qualname__ != "Kernel.tlb_flush" or not mm.cpumask <= {c.id}
                or c.tlb or c.pwc or c.dangling or inv.tlb_refs or inv.pwc_refs or inv.walking):
            return None
        costs = self.costs
        if c.active_mm is not mm:
            return costs.flush_call, None
        if c.curr.mm is None:
            if c.tlbstate == TLBSTATE_OK:
                return None
            return costs.flush_call + costs.flush_full, lambda: arch.leave_mm(c)
        return costs.flush_call + costs.flush_full, lambda: arch.tlb.flush_all(c)

    def _tlb_bulk_commit(self, c, tlb, pfns, flushes: list[int], under: list[bool], need_flush: bool) -> None:
        """Fast path: the pages an emulator batched (`pfns`, after those already in the gather) and the
        flushes it emulated, `flushes[k]` pages each (under the PTE lock when `under[k]`): free the flushed
        pages in order, keep the rest, account the flushes."""
        m = self.metrics
        if flushes:
            seq = np.concatenate((np.array(tlb.pages, dtype=np.int64), pfns)) if tlb.pages else pfns
            nfree = sum(flushes)
            m.tlb_flushes += len(flushes)
            m.flushes_under_pte_lock += sum(under)
            m.pages_per_flush.frombytes(np.array(flushes, dtype=np.int64).tobytes())
            self.alloc.release_array(c, seq[:nfree], np.repeat(np.array(under, dtype=bool), flushes))
            tlb.pages = seq[nfree:].tolist()
        else:
            tlb.pages.extend(pfns.tolist())
        tlb.need_flush = need_flush

    def tlb_remove_page(self, c, tlb, pfn: int):
        """tlb_remove_page(), asm-generic/tlb.h v2.6.39: batch the page; flush when nr >= FREE_PTE_NR."""
        if not self._tlb_remove_page(c, tlb, pfn):
            yield self.tlb_flush_mmu(c, tlb)

    def gather_static_bytes(self, ncpus: int) -> int:
        """DEFINE_PER_CPU storage of 2.6.39: one struct mmu_gather per possible CPU."""
        return ncpus * MmuGather2639.SIZEOF
