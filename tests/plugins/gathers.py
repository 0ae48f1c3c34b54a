"""Policy plugins for the tests: deliberately broken gathers the explorer must catch, and a class that is
not a kernel at all."""
from mmugather.mm.swap_state import free_pages_and_swap_cache
from mmugather.policies import Linux30


class FreeBeforeFlush(Linux30):
    """A broken gather: tlb_flush_mmu() frees the batched pages first and flushes after (invariant #1
    upside down)."""

    def tlb_flush_mmu(self, c, tlb):
        if not tlb.need_flush:
            return
        tlb.need_flush = False
        batch = tlb.local
        while batch is not None:
            pages, batch.pages = batch.pages, []
            yield free_pages_and_swap_cache(self, c, pages)
            batch = batch.next
        tlb.active = tlb.local
        yield self.tlb_flush(c, tlb)


class LocalFlushOnly(Linux30):
    """A broken arch flush: only this CPU's TLB is flushed, no shootdown IPI."""

    def tlb_flush(self, c, tlb):
        self.machine.tlb.flush_all(c)
        yield self.costs.flush_full


class NotAKernel:
    """Has the look of a policy but is not a Kernel subclass."""

    name = "impostor"


class RaisesInFlush(Linux30):
    """A plugin with a bug of its own: its flush raises."""

    def tlb_flush_mmu(self, c, tlb):
        raise KeyError("batch")
        yield
