"""Linux 2.6.39: per-CPU mmu_gathers, flushing under the PTE lock, ZAP_BLOCK_SIZE restarts."""
from mmugather.mm.memory.v2_6_39 import Memory2639
from mmugather.mm.mmu_gather.v2_6_39 import Gather2639
from mmugather.arch.x86 import X86Legacy
from mmugather.kernel.locking import SpinLock, SpinUnlock
from mmugather.policies.base import Kernel


class Linux2639(Gather2639, Memory2639, Kernel):
    """The scheme the 2011 rework replaced (include/asm-generic/tlb.h and mm/memory.c of v2.6.39)."""

    name = "2.6.39"
    arches = {"x86": X86Legacy}

    def i_mmap_lock_write(self, c, mapping):
        """spin_lock(&mapping->i_mmap_lock), v2.6.39."""
        yield SpinLock(mapping.i_mmap_lock)

    def i_mmap_unlock_write(self, c, mapping):
        yield SpinUnlock(mapping.i_mmap_lock)
    version = "v2.6.39"
    source = "include/asm-generic/tlb.h, mm/memory.c, mm/mmap.c, arch/x86/mm/tlb.c (v2.6.39)"
