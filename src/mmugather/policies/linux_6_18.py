"""Linux 6.18: the range-tracking mmu_gather of today's kernel, on x86-64 (native or KVM guest) and arm64."""
from mmugather.arch import ARCHES
from mmugather.mm.huge_memory import HugeMemory618
from mmugather.mm.khugepaged import Khugepaged
from mmugather.mm.madvise import Madvise618
from mmugather.mm.memory.v6_18 import Memory618
from mmugather.mm.mmap import Mmap618
from mmugather.mm.mmu_gather.v6_18 import Gather618
from mmugather.mm.mprotect import Mprotect618
from mmugather.mm.rmap import Rmap618
from mmugather.mm.truncate import Truncate618
from mmugather.mm.vma import VmaOps618
from mmugather.policies.base import Kernel


class Linux618(Gather618, HugeMemory618, Memory618, Khugepaged, Madvise618, Mmap618, VmaOps618, Mprotect618, Rmap618,
               Truncate618, Kernel):
    """Linux v6.18 (mm/mmu_gather.c, include/asm-generic/tlb.h, mm/memory.c, mm/vma.c, mm/madvise.c,
    arch/x86/mm/tlb.c, arch/arm64/include/asm/tlb.h), configured like an x86-64 distribution kernel:
    MMU_GATHER_RCU_TABLE_FREE, PT_RECLAIM, THP only where madvised (the model maps 4 KiB pages, and PMD-sized
    file folios by one PMD where a file's page cache holds them: mm/huge_memory.py; MADV_COLLAPSE of file THPs
    retracts PTE tables with the v6.2 path of mm/khugepaged.py)."""

    name = "6.18"
    version = "v6.18"
    source = ("mm/mmu_gather.c, include/asm-generic/tlb.h, mm/memory.c, mm/vma.c, mm/madvise.c, "
              "arch/x86/mm/tlb.c, arch/arm64/include/asm/tlb.h (v6.18)")
    arches = ARCHES["6.18"]
    fixes = {
        "tlb_flush_pending": ("99baac21e458, 56236a59556c (2017, v4.13/v4.14)",
                              "count gathers in flight per mm; tlb_finish_mmu() forces a flush when nested"),
        "no_reset_range": ("7a30df49f63a (2019, v5.2)",
                           "the nested gather's forced flush keeps freed_tables (flushes page-walk caches)"),
        "table_invalidate": ("d86564a2f085 (2018, v4.19; x86), 0ed1325967ab (2020, v5.5; powerpc radix)",
                             "tlb_table_invalidate(): flush the TLB and paging-structure caches before page "
                             "tables go to RCU or tlb_remove_table_one()"),
        "mm_users_shortcut": ("a6f572084fbe (2018, v4.19)",
                              "tlb_remove_table() no longer frees at once when mm_users < 2 (lazy-TLB CPUs "
                              "are not counted in mm_users)"),
        "force_flush_range": ("e6c495a96ce0, 2b047252d087 (2013, v3.11)",
                              "zap_pte_range()'s forced flush covers the PTEs zapped so far, not those still "
                              "to come"),
        "mremap_flush": ("eb66ae030829 (2018, v4.20; CVE-2018-18281)",
                         "move_ptes() flushes the old range before dropping the PTE locks"),
        "pfnmap_flush": ("b67fbebd4cf9 (2022, v5.19; CVE-2022-39188)",
                         "flush the TLBs for a VM_PFNMAP VMA before free_pgtables() unlinks it from i_mmap"),
        "collapse_sync": ("2ba99c5e0881 (2022, v6.1)",
                          "collapse_and_free_pmd() calls tlb_remove_table_sync_one() before pte_free(), so no "
                          "gup_fast walker is inside the table when it is freed"),
        "dirty_force_flush": ("1cf35d47712d (2014, v3.15)",
                              "zap_pte_range() flushes the TLB before dropping the PTE lock when it zapped a "
                              "dirty shared file PTE, so folio_mkclean() waits for the flush"),
        "delay_rmap": ("5df397dec7c4 (2022, v6.2)",
                       "the rmap of a dirty shared file page zapped goes after the TLB flush "
                       "(tlb_flush_rmaps()), so folio_mkclean() still finds the page mapped"),
    }

    move_pmd = True               # x86 and arm64 select HAVE_MOVE_PMD

    @property
    def mremap_flush(self) -> str:  # type: ignore[override]  # Mremap's class constant, from the fixes here
        """Where move_ptes() flushes (mm/mremap.py): before the PTE locks drop, or, without the fix,
        after them (v3.7-v4.19)."""
        return "after-unlock" if "mremap_flush" in self.without else "before-unlock"
