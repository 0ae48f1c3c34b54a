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
        "unlimited_batching": ("53a59fc67f97 (2012, v3.8), inverted: off = the fix",
                               "as released, 3.0 chains gather batches without limit and frees them all in one "
                               "tlb_flush_mmu() with no scheduling point; --without-fix unlimited_batching caps "
                               "them at MAX_GATHER_BATCH_COUNT as 53a59fc67f97 did"),
    }

    def known_bug(self, violations: list[dict]) -> str | None:
        """On one CPU, with fast mode (not `--without-fix tlb_fast_mode`), a stale TLB entry to a freed
        page is 3.0's own bug: fast mode frees at once, before the flush, and the preemptible gather lets
        another thread of the mm run on that CPU in between (explore/bugs.py, fast-mode-3.0)."""
        if (self.num_online_cpus != 1 or "tlb_fast_mode" in self.without
                or not any(v["kind"] == "stale-tlb-use-after-free" for v in violations)):
            return None
        return ("3.0's fast-mode bug: with one CPU the gather frees pages before the flush, and the preemptible "
                "gather lets another thread of the mm run in between; fixed by 29eb77825cc7 \"arch, mm: Remove "
                "tlb_fast_mode()\" (--without-fix tlb_fast_mode)")
