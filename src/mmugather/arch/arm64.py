"""arm64 TLB management of Linux v6.18 (arch/arm64/include/asm/tlb.h, tlbflush.h, mm/context.c).

Invalidation is broadcast in hardware: a TLBI ...IS instruction reaches every CPU's TLB and walk cache,
and the issuing CPU waits for completion with DSB ISH. No IPIs. Details modelled:
- tlb_flush(): for fullmm, only a flush_tlb_mm() when page tables were freed (the ASID allocator will
  not reuse the ASID without invalidating everything); else __flush_tlb_range() with
  last_level = !freed_tables: leaf-only TLBI VALE1IS keeps cached walks, TLBI VAE1IS drops them too.
- __flush_tlb_range(): ranges of MAX_DVM_OPS (= PTRS_PER_PTE) pages or more become flush_tlb_mm()
  (TLBI ASIDE1IS); without FEAT_TLBIRANGE.
- ASIDs: translations are tagged, so a context switch needs no flush. The model keeps a CPU's
  translations of its loaded mm only and drops them on a switch (as x86 without PCID); the broadcast
  TLBIs reach every CPU anyway, so this hides no stale entry a TLBI would have left.
- No lazy TLB tracking: enter_lazy_tlb() does nothing.
"""
from __future__ import annotations

from mmugather.kernel.locking import PREEMPT_DISABLE, PREEMPT_ENABLE
from mmugather.mm.pgtable import PAGE_SHIFT

MAX_DVM_OPS = 512


class Arm64:
    """The arch interface for the 6.18 policy on arm64."""

    name = "arm64"
    have_rcu_table_free = True
    mmu_gather_merge_vmas = False        # arm64 does not select MMU_GATHER_MERGE_VMAS
    mmu_gather_page_size = False
    tlb_needs_table_invalidate = True

    def __init__(self, machine) -> None:
        self.tlb = machine.tlb
        self.costs = machine.costs
        self.metrics = machine.metrics
        self.cpus = machine.engine.cpus

    @staticmethod
    def tlb_entry_live(x) -> bool:
        """Translations of an mm no task uses any more (mm_users == 0: exit_mmap) are dead: nothing
        runs user code of that ASID again, which is why tlb_flush() skips leaf flushes for fullmm."""
        return x.loaded_mm is None or x.loaded_mm.users > 0

    @staticmethod
    def pwc_entry_live(x) -> bool:
        """Cached walks stay live: speculative walks through a still-installed TTBR0 may use them."""
        return True

    def switch_mm(self, c, next_mm) -> None:
        """switch_mm() -> check_and_switch_context(): the CPU runs next_mm's ASID (see module doc)."""
        if c.loaded_mm is next_mm:
            return
        self.tlb.flush_all(c)
        c.loaded_mm = c.active_mm = next_mm
        if next_mm is not None:
            next_mm.cpumask.add(c.id)

    def enter_lazy_tlb(self, c) -> None:
        """enter_lazy_tlb(): nothing on arm64."""

    # ------------------------------------------------------------ flushes
    def tlb_flush(self, c, tlb):
        """tlb_flush(), arch/arm64/include/asm/tlb.h v6.18."""
        last_level = not tlb.freed_tables
        if tlb.fullmm:
            if not last_level:
                yield self.flush_tlb_mm(c, tlb.mm)
            return
        yield self._flush_tlb_range(c, tlb.mm, tlb.start, tlb.end, 1 << tlb.get_unmap_shift(), last_level)

    def flush_tlb_mm(self, c, mm):
        """flush_tlb_mm(): TLBI ASIDE1IS + DSB ISH: every entry of the ASID on every CPU."""
        self.metrics.tlb_flushes += 1
        if c.ptl_held:
            self.metrics.flushes_under_pte_lock += 1
        yield PREEMPT_DISABLE
        for x in self.cpus:
            if x.loaded_mm is mm:
                self.tlb.flush_all(x)
        yield self.costs.flush_call + self.costs.tlbi + self.costs.dsb_ish
        yield PREEMPT_ENABLE

    def flush_tlb_page(self, c, mm, va: int):
        """flush_tlb_page(): TLBI VALE1IS of one page."""
        yield self._flush_tlb_range(c, mm, va, va + 4096, 4096, True)

    def flush_tlb_range(self, c, mm, start: int, end: int):
        """flush_tlb_range(): all levels (it may be invalidating table entries)."""
        yield self._flush_tlb_range(c, mm, start, end, 4096, False)

    def _flush_tlb_range(self, c, mm, start: int, end: int, stride: int, last_level: bool):
        """__flush_tlb_range(), arch/arm64/include/asm/tlbflush.h v6.18."""
        if (end - start) >= MAX_DVM_OPS * stride:
            yield self.flush_tlb_mm(c, mm)
            return
        self.metrics.tlb_flushes += 1
        if c.ptl_held:
            self.metrics.flushes_under_pte_lock += 1
        ops = 0
        for x in self.cpus:
            if x.loaded_mm is not mm:
                continue
            for addr in range(start, end, stride):
                self.tlb.flush_leaf(x, addr)
            if not last_level:
                self.tlb.flush_walks(x, start, end)
        ops = max(1, (end - start) // stride)
        yield self.costs.flush_call + ops * self.costs.tlbi + self.costs.dsb_ish
