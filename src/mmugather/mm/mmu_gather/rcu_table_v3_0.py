"""HAVE_RCU_TABLE_FREE as Linux 3.0 has it (267239116987 "mm, powerpc: Move the RCU page-table freeing
into generic code", part of the 2011 series; mm/memory.c and include/asm-generic/tlb.h v3.0).

On arches that select it (powerpc, sparc64, and s390 from the series' last patch), page-table pages do not
go through the page batches: tlb_remove_table() collects them in a page-sized mmu_table_batch that
tlb_flush_mmu() hands to call_rcu_sched() right after the TLB flush, so software walkers that run with
IRQs off (gup_fast, powerpc's hash_page) never see a table freed under them. When the batch page cannot be
allocated, tlb_remove_table_one() IPIs every other CPU (smp_call_function: it returns only once each has
left any IRQs-off section) and frees the table at once. With fewer than two users of the mm there can be
no concurrent walker and the table is freed directly.
"""
from __future__ import annotations

from mmugather.kernel.smp import SmpCallFunctionMany
from mmugather.mm.kernel_part import KernelPart
from mmugather.mm.mmu_gather import PAGE_SIZE
from mmugather.mm.mmu_gather.v6_18 import TableBatch
from mmugather.mm.page_alloc import BATCH, GFP_NOWAIT


class RcuTableFree30(KernelPart):
    """Kernel methods for CONFIG_HAVE_RCU_TABLE_FREE, v3.0; inert unless the arch selects it."""

    MAX_TABLE_BATCH = (PAGE_SIZE - 16 - 8) // 8           # 509

    def pte_free_tlb(self, c, tlb, pt, addr: int):
        """pte_free_tlb() -> the arch's __pte_free_tlb(): pgtable_free_tlb() -> tlb_remove_table()."""
        if not self.arch.have_rcu_table_free:
            yield super().pte_free_tlb(c, tlb, pt, addr)
            return
        yield self.tlb_remove_table(c, tlb, pt.pfn)

    def pmd_free_tlb(self, c, tlb, pmd, addr: int):
        if not self.arch.have_rcu_table_free:
            yield super().pmd_free_tlb(c, tlb, pmd, addr)
            return
        yield self.tlb_remove_table(c, tlb, pmd.pfn)

    def pud_free_tlb(self, c, tlb, pud, addr: int):
        if not self.arch.have_rcu_table_free:
            yield super().pud_free_tlb(c, tlb, pud, addr)
            return
        yield self.tlb_remove_table(c, tlb, pud.pfn)

    def tlb_remove_table(self, c, tlb, pfn: int):
        """tlb_remove_table(), mm/memory.c v3.0 (267239116987): need_flush = 1; with fewer than two
        users free the table at once; else batch it (GFP_NOWAIT batch page, tlb_remove_table_one() when
        none), and a full batch (MAX_TABLE_BATCH) goes to tlb_table_flush() alone: call_rcu_sched() of
        the batch, no TLB flush and no free of the gathered pages (the generic line stayed
        `tlb_table_flush(tlb)` until the code moved to mm/mmu_gather.c in 4.18; read in a ~3.16 mm/memory.c
        and in s390's 3.0-era copy of it, not in a v3.0 tag: none is stored). Safe on hash64: nothing
        walks these tables but software walkers with IRQs off, which the grace period waits for."""
        tlb.need_flush = True
        if tlb.mm.users < 2:                  # no concurrent page-table walk is possible
            self.alloc.free_page(c, pfn)
            yield self.costs.pgtable_free
            return
        batch = self._table_batches.get(tlb)
        if batch is None:
            bpfn = self.alloc.alloc_page(BATCH, GFP_NOWAIT)
            yield self.costs.page_alloc
            if bpfn < 0:
                yield self.tlb_remove_table_one(c, pfn)
                return
            batch = self._table_batches[tlb] = TableBatch(bpfn)
            self.metrics.gather_memory(PAGE_SIZE)
        batch.tables.append(pfn)
        if len(batch.tables) == self.MAX_TABLE_BATCH:
            self.tlb_table_flush(c, tlb)

    def tlb_remove_table_one(self, c, pfn: int):
        """tlb_remove_table_one(), mm/memory.c v3.0: smp_call_function() of an empty handler to every
        other online CPU (waiting for each: none is inside an IRQs-off walk once it answers), then free."""
        others = [x.id for x in self.engine.cpus if x is not c]
        if others:
            yield SmpCallFunctionMany(others, _tlb_remove_table_smp_sync)
        self.alloc.free_page(c, pfn)
        yield self.costs.pgtable_free

    def tlb_flush(self, c, tlb):
        """tlb_flush() then tlb_table_flush(), the order of tlb_flush_mmu() v3.0."""
        yield super().tlb_flush(c, tlb)
        self.tlb_table_flush(c, tlb)

    def tlb_table_flush(self, c, tlb) -> None:
        """tlb_table_flush(), mm/memory.c v3.0: call_rcu_sched() the table batch."""
        batch = self._table_batches.pop(tlb, None)
        if batch is None:
            return

        def tlb_remove_table_rcu(cpu, batch=batch) -> None:
            for t in batch.tables:
                self.alloc.free_page(cpu, t)
            self.alloc.free_page(cpu, batch.pfn)
            self.metrics.gather_memory(-PAGE_SIZE)
        self.engine.rcu.call_rcu(c, tlb_remove_table_rcu)

    @property
    def _table_batches(self) -> dict:
        """tlb->batch of each gather in flight (struct mmu_gather v3.0 has the field under the config)."""
        return self.__dict__.setdefault("table_batches", {})


def _tlb_remove_table_smp_sync(t) -> int:
    """tlb_remove_table_smp_sync(): simply deliver the interrupt."""
    return 0
