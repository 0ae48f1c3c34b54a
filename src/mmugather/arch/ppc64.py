"""64-bit powerpc with the hash MMU, as Linux 3.0 had it (arch/powerpc/include/asm/tlb.h, asm/tlbflush.h,
arch/powerpc/mm/tlb_hash64.c, arch/powerpc/mm/pgtable.c; the series' patch 10, 267239116987, made its RCU
page-table freeing generic).

- Invalidation is broadcast in hardware (tlbie), no IPIs. Linux batches the hash-table invalidations of
  the PTEs it clears (hpte_need_flush() into ppc64_tlb_batch) and issues them by the end of each PTE table
  (arch_leave_lazy_mmu_mode()); the model issues them at tlb_flush(), when the gather flushes, which is no
  earlier than the kernel and frees nothing sooner.
- The MMU never walks the Linux page tables: a hash miss runs hash_page(), a software walk with IRQs off,
  like gup_fast. So there is no paging-structure cache to flush, and page tables must be freed after an
  RCU-sched grace period: HAVE_RCU_TABLE_FREE.
- Tagged translations (the hash table is global and tagged by VSID), switch_mm(): see BroadcastTlb
  (arch/base.py).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from mmugather.arch.base import BroadcastTlb, Cpu, Gather, KernelPath

if TYPE_CHECKING:
    from mmugather.mm.mm_types import MmStruct


class Ppc64Hash(BroadcastTlb):
    """The arch interface for the 3.0 policy on ppc64 (hash MMU)."""

    name = "ppc64"
    have_rcu_table_free = True

    @staticmethod
    def tlb_entry_live(x: Cpu) -> bool:
        return True

    @staticmethod
    def pwc_entry_live(x: Cpu) -> bool:
        """No hardware walk cache: a cached walk would have to be a software walker's, tracked apart."""
        return False

    def tlb_flush(self, c: Cpu, tlb: Gather) -> KernelPath:
        """tlb_flush(), arch/powerpc/include/asm/tlb.h v3.0: flush_tlb_pending(): the batched hash
        invalidations, tlbie broadcast to every CPU."""
        yield self.flush_tlb_mm(c, tlb.mm)

    def flush_tlb_page(self, c: Cpu, mm: MmStruct, va: int) -> KernelPath:
        """flush_tlb_page(): an empty function on hash64 v3.0 (clearing the PTE queued its hash
        invalidation, hpte_need_flush()); modelled as a tlbie of one page on every CPU, counted as a
        flush but, unlike the others, not in flushes_under_pte_lock."""
        self.metrics.tlb_flushes += 1
        for x in self.cpus:
            if x.loaded_mm is mm:
                self.tlb.flush_leaf(x, va)
        yield self.costs.flush_call + self.costs.tlbi + self.costs.dsb_ish

    def flush_tlb_range(self, c: Cpu, mm: MmStruct, start: int, end: int) -> KernelPath:
        """flush_tlb_range(): modelled as flush_tlb_mm()."""
        yield self.flush_tlb_mm(c, mm)
