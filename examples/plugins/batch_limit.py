"""A worked example of a policy plugin (docs/policies.md): Linux 3.0 with the batch limit that v3.8 added.

3.0 chains gather batch pages without limit, so one munmap can batch every page of a huge region and free
them all in one tlb_flush_mmu() with no cond_resched(): soft lockups on !CONFIG_PREEMPT kernels.
53a59fc67f97 "mm: limit mmu_gather batching to fix soft lockups on !CONFIG_PREEMPT" (v3.8) stops allocating
batch pages past MAX_GATHER_BATCH_COUNT, which makes __tlb_remove_page() report "full" and zap_pte_range()
flush and free early. This plugin overrides that one step of the 3.0 gather:

    mmugather compare --workload small --policies 3.0,examples/plugins/batch_limit.py:Linux30BatchLimit
    mmugather explore examples/munmap-race.toml --policy examples/plugins/batch_limit.py:Linux30BatchLimit
"""
from mmugather.policies import Linux30


class Linux30BatchLimit(Linux30):
    """Linux 3.0 plus 53a59fc67f97: at most MAX_GATHER_BATCH_COUNT batch pages per gather."""

    name = "3.0+batch-limit"
    MAX_GATHER_BATCH_COUNT = 10000 // Linux30.MAX_GATHER_BATCH        # 19 batches of 510 pages

    def tlb_next_batch(self, c, tlb) -> bool:
        """tlb_next_batch(), mm/memory.c v3.8: as in 3.0, but allocate no batch page past
        MAX_GATHER_BATCH_COUNT (False: the caller must flush)."""
        if tlb.active.next is None:
            count, batch = 0, tlb.local.next
            while batch is not None:
                count += 1
                batch = batch.next
            if count >= self.MAX_GATHER_BATCH_COUNT:
                return False
        return super().tlb_next_batch(c, tlb)
