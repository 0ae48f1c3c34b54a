"""Policy plugins for the tests: deliberately broken gathers that the invariant checker, the explorer, the
fast path and the trace must catch or reproduce (imported by test modules as `plugins.gathers`, loaded by
the CLI as `tests/plugins/gathers.py:CLASS`), and a class that is not a kernel at all."""
from mmugather.kernel.locking import MIGHT_SLEEP, SpinLock, SpinUnlock
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


class SleepUnderPteLock(Linux30):
    """A broken zap: takes a sleeping lock while holding the PTE lock."""

    def zap_pte_range(self, c, tlb, vma, pt, addr, end, details):
        yield SpinLock(pt.ptl)
        yield MIGHT_SLEEP
        yield SpinUnlock(pt.ptl)
        return (yield from super().zap_pte_range(c, tlb, vma, pt, addr, end, details))


class LeakBatchPages(Linux30):
    """A broken finish: forgets to free the batch pages."""

    def tlb_finish_mmu(self, c, tlb, start, end):
        yield from self.tlb_flush_mmu(c, tlb)


class NotAKernel:
    """Has the look of a policy but is not a Kernel subclass."""

    name = "impostor"


class RaisesInFlush(Linux30):
    """A plugin with a bug of its own: its flush raises."""

    def tlb_flush_mmu(self, c, tlb):
        raise KeyError("batch")
        yield
