"""`KernelPart`: the base of every mm/ mixin (and of policies/exit.py and fork.py), saying for the type checker
what the parts of the modelled kernel share once `policies.base.Kernel` composes them.

A part is one source file of the kernel (mm/mmap.c, mm/rmap.c, mm/mmu_gather.c, ...). Like a kernel source
file it uses the machine's state (set by `Kernel.__init__`) and calls functions that other files define;
the annotations below are that state and those functions' prototypes, the way include/linux/mm.h and
asm-generic/tlb.h declare them for mm/*.c. They exist only for the type checker: at run time a part is a
plain class and the composed Kernel supplies everything (no attribute is defined here).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mmugather.mm.arch_protocol import Arch
    from mmugather.machine.costs import Costs
    from mmugather.machine.engine import Engine
    from mmugather.mm.mm_types import Vma
    from mmugather.mm.page_alloc import PageAlloc
    from mmugather.mm.pgtable import DirTable, PteTable
    from mmugather.mm.protocols import InvariantChecks, Path, ReleaseBackend, TableFreeBackend, ZapBackend
    from mmugather.report.metrics import Metrics


class KernelPart:
    """A part of the modelled kernel: state and prototypes every part may use (see the module docstring)."""

    if TYPE_CHECKING:
        # ---- the machine's state, set by Kernel.__init__
        machine: Any                 # the Simulation (sim/, above mm/): its fields are read, not typed here
        engine: Engine
        alloc: PageAlloc
        costs: Costs
        metrics: Metrics
        invariants: InvariantChecks   # sim/invariants.py's checker, as far as mm/ calls it
        arch: Arch[Any]
        without: frozenset[str]      # the fixes switched off (`--without-fix`)
        num_online_cpus: int
        num_possible_cpus: int
        zap_backend: ZapBackend
        table_backend: TableFreeBackend
        release_backend: ReleaseBackend

        # ---- include/asm-generic/tlb.h, mm/mmu_gather.c (mm/mmu_gather/)
        tlb_gather_mmu: Callable[..., Path]
        tlb_finish_mmu: Callable[..., Path]
        tlb_flush_mmu: Callable[..., Path]
        tlb_flush_mmu_tlbonly: Callable[..., Path]
        tlb_flush: Callable[..., Path]
        tlb_remove_page: Callable[..., Path]
        _tlb_remove_page: Callable[..., Any]                 # whether the caller must flush (bool or int)
        _tlb_remove_folio_pages_size: Callable[..., bool]
        tlb_change_page_size: Callable[..., Path]
        tlb_start_vma: Callable[..., None]
        tlb_end_vma: Callable[..., Path]
        tlb_free_vmas: Callable[..., Path]
        tlb_flush_pte_range: Callable[..., None]
        tlb_flush_pmd_range: Callable[..., None]
        tlb_flush_rmaps: Callable[..., None]
        tlb_delay_rmap: Callable[..., bool]
        pte_free_tlb: Callable[..., Path]
        pmd_free_tlb: Callable[..., Path]
        pud_free_tlb: Callable[..., Path]
        tlb_remove_table_sync_one: Callable[..., Path]

        # ---- mm/memory.c (mm/memory/)
        pmd_table: Callable[..., DirTable]
        install_pte_table: Callable[..., PteTable]
        pte_alloc: Callable[..., Path]
        put_page_now: Callable[..., None]
        zap_pmd_range: Callable[..., Path]
        unmap_vmas: Callable[..., Path]
        free_pgtables: Callable[..., Path]
        free_pgd_range: Callable[..., Path]
        zap_page_range: Callable[..., Path]
        zap_page_range_single: Callable[..., Path]
        zap_page_range_single_batched: Callable[..., Path]
        unmap_mapping_range: Callable[..., Path]
        pte_offset_map_lock: Callable[..., Path]
        remap_pfn_range: Callable[..., int]
        pfn_maps: bool
        fault_around_pages: Callable[[], int]
        page_mkwrite_ns: Callable[..., int]

        # ---- mm/huge_memory.c (mm/huge_memory.py; 6.18)
        pmd_file_folios: bool
        huge_pmd_fault: Callable[..., bool]
        do_huge_pmd_fault: Callable[..., Path]
        split_huge_pmd: Callable[..., Path]
        zap_huge_pmd: Callable[..., Path]

        # ---- mm/mmap.c, mm/vma.c, mm/mremap.c, kernel/fork.c, kernel/exit.c
        split_vma: Callable[..., None]
        detach_vmas: Callable[..., tuple[list[Vma], Any, Any]]
        do_munmap: Callable[..., Path]
        do_vmi_align_munmap: Callable[..., Path]
        exit_mmap: Callable[..., Path]
        mmput: Callable[..., Path]
        move_page_tables: Callable[..., Path]

        # ---- mm/rmap.c, mm/mmu_notifier.c
        i_mmap_lock_write: Callable[..., Path]
        i_mmap_unlock_write: Callable[..., Path]
        i_mmap_lock_read: Callable[..., Path]
        i_mmap_unlock_read: Callable[..., Path]
        unlink_anon_vmas: Callable[..., Path]
        unlink_file_vma: Callable[..., Path]
        anon_vma_lock_write: Callable[..., Path]
        anon_vma_unlock_write: Callable[..., Path]
        folio_mkclean: Callable[..., Path]
        mmu_notifier_invalidate_range_start: Callable[..., Path]
        mmu_notifier_invalidate_range_end: Callable[..., Path]

        # ---- mm/page-writeback.c (mm/page_writeback.py)
        folio_mark_dirty: Callable[..., None]

        # ---- set-up, not a kernel path (policies/base.py)
        populate: Callable[..., int]
