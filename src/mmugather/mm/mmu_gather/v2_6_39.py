"""The Linux 2.6.39 gather: include/asm-generic/tlb.h v2.6.39."""
from __future__ import annotations

from mmugather.kernel.locking import PREEMPT_DISABLE, PREEMPT_ENABLE
from mmugather.mm.kernel_part import KernelPart
from mmugather.mm.protocols import Path
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


class Gather2639(KernelPart):
    """The 2.6.39 gather, as kernel methods (include/asm-generic/tlb.h, Linux v2.6.39)."""

    FREE_PTE_NR = 506
    PAGEVEC_SIZE = 14                 # include/linux/pagevec.h v2.6.39: free_pages_and_swap_cache()'s chunk

    def tlb_gather_mmu(self, c, mm, fullmm: bool) -> Path:
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

    def tlb_flush_mmu(self, c, tlb) -> Path:
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

    def tlb_finish_mmu(self, c, tlb, start: int, end: int) -> Path:
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

    def tlb_remove_page(self, c, tlb, pfn: int) -> Path:
        """tlb_remove_page(), asm-generic/tlb.h v2.6.39: batch the page; flush when nr >= FREE_PTE_NR."""
        if not self._tlb_remove_page(c, tlb, pfn):
            yield self.tlb_flush_mmu(c, tlb)

    def gather_static_bytes(self, ncpus: int) -> int:
        """DEFINE_PER_CPU storage of 2.6.39: one struct mmu_gather per possible CPU."""
        return ncpus * MmuGather2639.SIZEOF
