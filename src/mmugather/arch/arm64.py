"""arm64 TLB management of Linux v6.18 (arch/arm64/include/asm/tlb.h, asm/tlbflush.h, mm/context.c).

Invalidation is broadcast in hardware: a TLBI ...IS instruction reaches every CPU's TLB and walk cache,
and the issuing CPU waits for completion with DSB ISH. No IPIs. Details modelled:
- tlb_flush(): for fullmm, only a flush_tlb_mm() when page tables were freed (the ASID allocator will
  not reuse the ASID without invalidating everything); else __flush_tlb_range() with
  last_level = !freed_tables: leaf-only TLBI VALE1IS keeps cached walks, TLBI VAE1IS drops them too.
- __flush_tlb_range(): ranges of MAX_DVM_OPS (= PTRS_PER_PTE) strides or more become flush_tlb_mm()
  (TLBI ASIDE1IS) (__flush_tlb_range_limit_excess() without FEAT_TLBIRANGE).
- ASIDs, switch_mm(), no lazy TLB: see BroadcastTlb (arch/base.py).
Not modelled: the TTL level hint (tlb_get_level()), FEAT_TLBIRANGE range operations, and 6.18.35's
`last_level = !(freed_tables || unshared_tables)` (no shared page tables in the model).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from mmugather.arch.base import BroadcastTlb, Cpu, Gather618, KernelPath

if TYPE_CHECKING:
    from mmugather.mm.mm_types import MmStruct

MAX_DVM_OPS = 512


class Arm64(BroadcastTlb):
    """The arch interface for the 6.18 policy on arm64."""

    name = "arm64"
    have_rcu_table_free = True
    mmu_gather_merge_vmas = False        # arm64 does not select MMU_GATHER_MERGE_VMAS
    mmu_gather_page_size = False
    tlb_needs_table_invalidate = True
    # CONFIG_PT_RECLAIM: a known divergence. Only x86_64 selects ARCH_SUPPORTS_PT_RECLAIM in 6.18, so arm64
    # has no MADV_DONTNEED table reclaim and frees a lone table by IPI + free; the model keeps x86's
    # configuration here until the recorded golden outputs are re-recorded for the change.
    pt_reclaim = True

    @staticmethod
    def tlb_entry_live(x: Cpu) -> bool:
        """Translations of an mm no task uses any more (mm_users == 0: exit_mmap) are dead: nothing
        runs user code of that ASID again, which is why tlb_flush() skips leaf flushes for fullmm."""
        return x.loaded_mm is None or x.loaded_mm.users > 0

    @staticmethod
    def pwc_entry_live(x: Cpu) -> bool:
        """Cached walks stay live: speculative walks through a still-installed TTBR0 may use them."""
        return True

    def tlb_flush(self, c: Cpu, tlb: Gather618) -> KernelPath:
        """tlb_flush(), arch/arm64/include/asm/tlb.h v6.18."""
        last_level = not tlb.freed_tables
        if tlb.fullmm:
            if not last_level:
                yield self.flush_tlb_mm(c, tlb.mm)
            return
        yield self._flush_tlb_range(c, tlb.mm, tlb.start, tlb.end, 1 << tlb.get_unmap_shift(), last_level)

    def flush_tlb_page(self, c: Cpu, mm: MmStruct, va: int) -> KernelPath:
        """flush_tlb_page(): TLBI VALE1IS of one page."""
        yield self._flush_tlb_range(c, mm, va, va + 4096, 4096, True)

    def flush_tlb_range(self, c: Cpu, mm: MmStruct, start: int, end: int) -> KernelPath:
        """flush_tlb_range(): all levels (it may be invalidating table entries)."""
        yield self._flush_tlb_range(c, mm, start, end, 4096, False)

    def _flush_tlb_range(self, c: Cpu, mm: MmStruct, start: int, end: int, stride: int,
                         last_level: bool) -> KernelPath:
        """__flush_tlb_range(), arch/arm64/include/asm/tlbflush.h v6.18."""
        if (end - start) >= MAX_DVM_OPS * stride:
            yield self.flush_tlb_mm(c, mm)
            return
        self._count_flush(c)
        for x in self.cpus:
            if x.loaded_mm is not mm:
                continue
            for addr in range(start, end, stride):
                self.tlb.flush_leaf(x, addr)
            if not last_level:
                self.tlb.flush_walks(x, start, end)
        ops = max(1, (end - start) // stride)
        yield self.costs.flush_call + ops * self.costs.tlbi + self.costs.dsb_ish
