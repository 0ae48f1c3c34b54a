"""Linux 2.6.39: per-CPU mmu_gathers, flushing under the PTE lock, ZAP_BLOCK_SIZE restarts."""
from mmugather.arch import ARCHES
from mmugather.mm.memory.v2_6_39 import Memory2639
from mmugather.mm.mmu_gather.v2_6_39 import Gather2639
from mmugather.mm.rmap import Rmap2639
from mmugather.mm.truncate import Truncate2639
from mmugather.policies.base import Kernel


class Linux2639(Gather2639, Memory2639, Rmap2639, Truncate2639, Kernel):
    """The scheme the 2011 rework replaced (include/asm-generic/tlb.h, mm/memory.c, mm/mmap.c, mm/rmap.c
    of v2.6.39): i_mmap_lock and anon_vma->lock are spinlocks."""

    name = "2.6.39"
    arches = ARCHES["2.6.39"]
    version = "v2.6.39"
    source = "include/asm-generic/tlb.h, mm/memory.c, mm/mmap.c, mm/rmap.c, arch/x86/mm/tlb.c (v2.6.39)"
