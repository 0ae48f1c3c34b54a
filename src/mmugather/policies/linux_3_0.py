"""Linux 3.0: the preemptible mmu_gather of d16dfc550f53, with e303297e6c3a and 97a894136f29."""
from mmugather.arch import ARCHES
from mmugather.mm.memory.v3_0 import Memory30
from mmugather.mm.mmu_gather.v3_0 import Gather30
from mmugather.mm.mmu_gather.rcu_table_v3_0 import RcuTableFree30
from mmugather.mm.rmap import Rmap30
from mmugather.mm.truncate import Truncate
from mmugather.policies.base import Kernel


class Linux30(RcuTableFree30, Gather30, Memory30, Rmap30, Truncate, Kernel):
    """Linux v3.0 as released: on-stack gather, page-sized batches chained without limit, flush outside
    the PTE lock, cond_resched() per PTE table (mm/memory.c, include/asm-generic/tlb.h of v3.0)."""

    name = "3.0"
    arches = ARCHES["3.0"]
    version = "v3.0"
    source = ("mm/memory.c, include/asm-generic/tlb.h, mm/mmap.c, arch/x86/mm/tlb.c (v3.0); "
              "commits d16dfc550f53, e303297e6c3a, 97a894136f29")
    # An inverted switch: 3.0 as released is the buggy kernel, so switching `tlb_fast_mode` off models the
    # later fix (29eb77825cc7 removed fast mode) rather than the kernel before one.
    fixes = {
        "tlb_fast_mode": ("29eb77825cc7 (2013), inverted: off = the fix",
                          "as released, 3.0 frees pages before the flush when one CPU is possible (fast mode); "
                          "--without-fix tlb_fast_mode removes fast mode as 29eb77825cc7 did"),
    }
