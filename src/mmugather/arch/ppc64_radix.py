"""64-bit powerpc (Book3S) with the radix MMU, Linux v6.18 (arch/powerpc/mm/book3s64/radix_tlb.c,
arch/powerpc/include/asm/tlb.h, arch/powerpc/Kconfig).

- The MMU walks the Linux page tables in hardware and caches the walks in a page-walk cache (PWC), per
  PID (the mm's context id). Invalidation is broadcast in hardware (tlbie with a RIC: RIC_FLUSH_TLB
  drops translations, RIC_FLUSH_PWC the walk cache, RIC_FLUSH_ALL both), no IPIs.
- powerpc selects MMU_GATHER_RCU_TABLE_FREE, MMU_GATHER_PAGE_SIZE and MMU_GATHER_MERGE_VMAS;
  `tlb_needs_table_invalidate()` is `radix_enabled()`, true here (0ed1325967ab, v5.5).
- radix__tlb_flush(): fullmm (or need_flush_all): the PID's TLB and PWC; a page size it does not know
  (the gather's page_size 0: nothing zapped yet): the PID's TLB, and its PWC too when tables were freed;
  else the range: per page (RIC_FLUSH_TLB) up to tlb_single_page_flush_ceiling pages, plus the PWC when
  tables were freed; longer ranges the whole PID.
- Translations are tagged by PID, so a context switch needs no flush; the model keeps a CPU's
  translations of its loaded mm only and drops them on a switch (BroadcastTlb).
Not modelled: tlbiel for a thread-local mm (mm_is_thread_local(): the same entries, fewer CPUs to reach),
the 2 MiB/1 GiB flushes of THP and hugetlb ranges (the model maps 4 KiB pages), MMU_LAZY_TLB_SHOOTDOWN's
IPIs of lazy CPUs at exit, and nest MMUs (coprocessors).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from mmugather.arch.base import BroadcastTlb, Cpu, Gather618, KernelPath
from mmugather.kernel.locking import PREEMPT_DISABLE, PREEMPT_ENABLE

if TYPE_CHECKING:
    from mmugather.mm.mm_types import MmStruct

RIC_FLUSH_TLB, RIC_FLUSH_PWC, RIC_FLUSH_ALL = 0, 1, 2


class Ppc64Radix(BroadcastTlb):
    """The arch interface for the 6.18 policy on ppc64 with the radix MMU."""

    name = "ppc64-radix"
    have_rcu_table_free = True           # select MMU_GATHER_RCU_TABLE_FREE
    mmu_gather_merge_vmas = True         # select MMU_GATHER_MERGE_VMAS
    mmu_gather_page_size = True          # select MMU_GATHER_PAGE_SIZE
    tlb_needs_table_invalidate = True    # radix_enabled()
    tlb_single_page_flush_ceiling = 33   # radix_tlb.c
    pt_reclaim = False                   # powerpc does not select ARCH_SUPPORTS_PT_RECLAIM

    @staticmethod
    def tlb_entry_live(x: Cpu) -> bool:
        return True

    @staticmethod
    def pwc_entry_live(x: Cpu) -> bool:
        """The hardware walker may use the PWC speculatively while the PID is loaded."""
        return True

    def _tlbie_pid(self, c: Cpu, mm: MmStruct, ric: int) -> KernelPath:
        """_tlbie_pid(): a broadcast invalidation of the whole PID with `ric`, then ptesync."""
        self._count_flush(c)
        yield PREEMPT_DISABLE
        for x in self.cpus:
            if x.loaded_mm is not mm:
                continue
            if ric == RIC_FLUSH_ALL:
                self.tlb.flush_all(x)
            elif ric == RIC_FLUSH_TLB:
                self.tlb.flush_translations(x)
            else:
                self.tlb.flush_pwc(x)
        yield self.costs.flush_call + self.costs.tlbi + self.costs.dsb_ish
        yield PREEMPT_ENABLE

    def _flush_range_psize(self, c: Cpu, mm: MmStruct, start: int, end: int, also_pwc: bool) -> KernelPath:
        """__radix__flush_tlb_range_psize(): per page up to the ceiling (and the PWC when also_pwc),
        else the whole PID."""
        if (end - start) >> 12 > self.tlb_single_page_flush_ceiling:
            yield self._tlbie_pid(c, mm, RIC_FLUSH_ALL if also_pwc else RIC_FLUSH_TLB)
            return
        self._count_flush(c)
        yield PREEMPT_DISABLE
        for x in self.cpus:
            if x.loaded_mm is not mm:
                continue
            for addr in range(start, end, 4096):
                self.tlb.flush_leaf(x, addr)
            if also_pwc:
                self.tlb.flush_pwc(x)           # _tlbie_pid(pid, RIC_FLUSH_PWC)
        ops = max(1, (end - start) >> 12) + (1 if also_pwc else 0)
        yield self.costs.flush_call + ops * self.costs.tlbi + self.costs.dsb_ish
        yield PREEMPT_ENABLE

    def tlb_flush(self, c: Cpu, tlb: Gather618) -> KernelPath:
        """radix__tlb_flush(), arch/powerpc/mm/book3s64/radix_tlb.c v6.18."""
        if tlb.fullmm or tlb.need_flush_all:
            yield self._tlbie_pid(c, tlb.mm, RIC_FLUSH_ALL)          # __flush_all_mm(mm, true)
        elif tlb.page_size != 4096:                                   # radix_get_mmu_psize() == -1
            yield self._tlbie_pid(c, tlb.mm, RIC_FLUSH_ALL if tlb.freed_tables else RIC_FLUSH_TLB)
        else:
            yield self._flush_range_psize(c, tlb.mm, tlb.start, tlb.end, tlb.freed_tables)

    def flush_tlb_mm(self, c: Cpu, mm: MmStruct) -> KernelPath:
        """radix__flush_tlb_mm(): _tlbie_pid(pid, RIC_FLUSH_TLB); the PWC stays."""
        yield self._tlbie_pid(c, mm, RIC_FLUSH_TLB)

    def flush_tlb_page(self, c: Cpu, mm: MmStruct, va: int) -> KernelPath:
        """radix__flush_tlb_page(): tlbie of one page, RIC_FLUSH_TLB."""
        yield self._flush_range_psize(c, mm, va, va + 4096, False)

    def flush_tlb_range(self, c: Cpu, mm: MmStruct, start: int, end: int) -> KernelPath:
        """radix__flush_tlb_range() -> __radix__flush_tlb_range(): translations only."""
        yield self._flush_range_psize(c, mm, start, end, False)
