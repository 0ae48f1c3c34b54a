"""64-bit powerpc with the hash MMU, as Linux 3.0 had it (arch/powerpc/include/asm/tlb.h, mm/tlb_hash64.c,
arch/powerpc/mm/pgtable.c; the series' patch 10, 267239116987, made its RCU page-table freeing generic).

- Invalidation is broadcast in hardware (tlbie), no IPIs. Linux batches the hash-table invalidations of
  the PTEs it clears (ppc64_tlb_batch) and issues them by the end of each PTE table; the model issues them
  at tlb_flush(), when the gather flushes, which is no earlier than the kernel and frees nothing sooner.
- The MMU never walks the Linux page tables: a hash miss runs hash_page(), a software walk with IRQs off,
  like gup_fast. So there is no paging-structure cache to flush, and page tables must be freed after an
  RCU-sched grace period: HAVE_RCU_TABLE_FREE.
- The model keeps the translations of the loaded mm and drops them on a switch (the hash table is global
  and tagged by VSID; the broadcast tlbie reaches every CPU anyway).
"""
from __future__ import annotations

from mmugather.kernel.locking import PREEMPT_DISABLE, PREEMPT_ENABLE


class Ppc64Hash:
    """The arch interface for the 3.0 policy on ppc64 (hash MMU)."""

    name = "ppc64"
    have_rcu_table_free = True

    def __init__(self, machine) -> None:
        self.tlb = machine.tlb
        self.costs = machine.costs
        self.metrics = machine.metrics
        self.cpus = machine.engine.cpus

    @staticmethod
    def tlb_entry_live(x) -> bool:
        return True

    @staticmethod
    def pwc_entry_live(x) -> bool:
        """No hardware walk cache: a cached walk would have to be a software walker's, tracked apart."""
        return False

    def switch_mm(self, c, next_mm) -> None:
        """switch_mm(): switch_slb() to next's segments."""
        if c.loaded_mm is next_mm:
            return
        self.tlb.flush_all(c)
        c.loaded_mm = c.active_mm = next_mm
        if next_mm is not None:
            next_mm.cpumask.add(c.id)

    def enter_lazy_tlb(self, c) -> None:
        """enter_lazy_tlb(): nothing on powerpc."""

    def tlb_flush(self, c, tlb):
        """tlb_flush(), arch/powerpc/include/asm/tlb.h v3.0: flush_tlb_pending(): the batched hash
        invalidations, tlbie broadcast to every CPU."""
        yield self.flush_tlb_mm(c, tlb.mm)

    def flush_tlb_mm(self, c, mm):
        """flush_tlb_mm() (hash64: the invalidations were issued per PTE; modelled as one broadcast)."""
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
        """flush_tlb_page(): tlbie of one page on every CPU."""
        self.metrics.tlb_flushes += 1
        for x in self.cpus:
            if x.loaded_mm is mm:
                self.tlb.flush_leaf(x, va)
        yield self.costs.flush_call + self.costs.tlbi + self.costs.dsb_ish

    def flush_tlb_range(self, c, mm, start: int, end: int):
        yield self.flush_tlb_mm(c, mm)
