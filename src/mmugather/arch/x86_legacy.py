"""x86-64 TLB management as Linux 2.6.39 and 3.0 had it (arch/x86/mm/tlb.c, arch/x86/include/asm/tlb.h,
arch/x86/include/asm/tlbflush.h, arch/x86/include/asm/mmu_context.h).

- tlb_flush(tlb) is flush_tlb_mm(tlb->mm): every gather flush is a whole-mm flush; so is
  flush_tlb_range(vma, start, end) (asm/tlbflush.h, CONFIG_SMP).
- flush_tlb_mm flushes locally (or leave_mm() when the current task has no mm: exit_mmap runs after
  exit_mm() cleared current->mm), then IPIs every other CPU in mm_cpumask and waits for all of them.
- A CPU in lazy TLB mode (a kernel thread or idle borrowing the mm) that receives the flush IPI calls
  leave_mm(): it leaves mm_cpumask and loads swapper_pg_dir, so it gets no further IPIs for that mm.
- switch_mm to the same mm reloads CR3 only if leave_mm() had cleared the CPU from mm_cpumask.
The IPIs are the dedicated INVALIDATE_TLB_VECTOR ones of that era (smp_invalidate_interrupt); they became
smp_call_function_many() calls only in 3.6. No PCID: loading CR3 drops every user translation.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from mmugather.arch.base import ArchBase, Cpu, Gather, KernelPath
from mmugather.kernel.locking import PREEMPT_DISABLE, PREEMPT_ENABLE
from mmugather.kernel.smp import SmpCallFunctionMany
from mmugather.kernel.sched import TLBSTATE_LAZY, TLBSTATE_OK

if TYPE_CHECKING:
    from mmugather.mm.mm_types import MmStruct


class X86Legacy(ArchBase):
    """The arch interface for the 2.6.39 and 3.0 policies on x86-64."""

    name = "x86"
    have_rcu_table_free = False

    @staticmethod
    def tlb_entry_live(x: Cpu) -> bool:
        """Every cached translation on another CPU may be used at once (a lazy CPU still runs on the
        mm's page tables until leave_mm())."""
        return True

    pwc_entry_live = tlb_entry_live

    # ------------------------------------------------------------ context switches
    def load_cr3(self, c: Cpu, mm: MmStruct | None) -> None:
        """load_cr3(): point the CPU at mm's page tables (None: swapper_pg_dir), dropping its TLB."""
        self.tlb.flush_all(c)
        c.loaded_mm = mm

    def switch_mm(self, c: Cpu, next_mm: MmStruct) -> None:
        """switch_mm(), arch/x86/include/asm/mmu_context.h v2.6.39/v3.0."""
        prev = c.active_mm
        if prev is not next_mm:
            if prev is not None:
                prev.cpumask.discard(c.id)
            c.tlbstate = TLBSTATE_OK
            c.active_mm = next_mm
            next_mm.cpumask.add(c.id)
            self.load_cr3(c, next_mm)
            return
        c.tlbstate = TLBSTATE_OK
        if c.id not in next_mm.cpumask:
            # We were in lazy tlb mode and leave_mm disabled tlb flush IPI delivery: reload CR3 so that no
            # freed page table is used.
            next_mm.cpumask.add(c.id)
            self.load_cr3(c, next_mm)

    def enter_lazy_tlb(self, c: Cpu) -> None:
        """enter_lazy_tlb(): TLBSTATE_OK -> TLBSTATE_LAZY; the mm stays loaded and in mm_cpumask."""
        if c.tlbstate == TLBSTATE_OK:
            c.tlbstate = TLBSTATE_LAZY

    def leave_mm(self, c: Cpu) -> None:
        """leave_mm(), arch/x86/mm/tlb.c: a lazy CPU leaves mm_cpumask and loads swapper_pg_dir."""
        if c.tlbstate == TLBSTATE_OK:
            raise AssertionError(f"leave_mm: CPU {c.id} is not in lazy TLB mode")
        if c.active_mm is not None:
            c.active_mm.cpumask.discard(c.id)
        self.load_cr3(c, None)

    # ------------------------------------------------------------ flushes
    def tlb_flush(self, c: Cpu, tlb: Gather) -> KernelPath:
        """tlb_flush(), arch/x86/include/asm/tlb.h v2.6.39/v3.0: flush_tlb_mm(tlb->mm)."""
        yield self.flush_tlb_mm(c, tlb.mm)

    def flush_tlb_mm(self, c: Cpu, mm: MmStruct) -> KernelPath:
        """flush_tlb_mm(), arch/x86/mm/tlb.c v2.6.39/v3.0."""
        yield self._flush(c, mm, None)

    def flush_tlb_page(self, c: Cpu, mm: MmStruct, va: int) -> KernelPath:
        """flush_tlb_page(), arch/x86/mm/tlb.c v2.6.39/v3.0: INVLPG here, the same va on the others."""
        yield self._flush(c, mm, va)

    def flush_tlb_range(self, c: Cpu, mm: MmStruct, start: int, end: int) -> KernelPath:
        """flush_tlb_range(), arch/x86/include/asm/tlbflush.h v2.6.39/v3.0: flush_tlb_mm(vma->vm_mm)."""
        yield self.flush_tlb_mm(c, mm)

    def _flush(self, c: Cpu, mm: MmStruct, va: int | None) -> KernelPath:
        """The body flush_tlb_mm() and flush_tlb_page() share: local flush (or leave_mm() when current
        has no mm), then flush_tlb_others() to the rest of mm_cpumask, with preemption off."""
        if c.curr is None:
            raise AssertionError(f"flush on CPU {c.id}: no task is running there")
        self._count_flush(c)
        yield PREEMPT_DISABLE
        cost = self.costs.flush_call
        if c.active_mm is mm:
            if c.curr.mm is None:
                self.leave_mm(c)
                cost += self.costs.flush_full
            else:
                cost += self._local_flush(c, va)
        yield cost
        others = sorted(mm.cpumask - {c.id})
        if others:
            yield SmpCallFunctionMany(others, self._invalidate_handler(mm, va))
        yield PREEMPT_ENABLE

    def _local_flush(self, c: Cpu, va: int | None) -> int:
        """local_flush_tlb() (va None) or __flush_tlb_one(va); returns its cost."""
        if va is None:
            self.tlb.flush_all(c)
            return self.costs.flush_full
        self.tlb.flush_one(c, va)
        return self.costs.flush_one

    def _invalidate_handler(self, mm: MmStruct, va: int | None) -> Callable[[Cpu], int]:
        def smp_invalidate_interrupt(t: Cpu) -> int:
            """smp_invalidate_interrupt(), arch/x86/mm/tlb.c v2.6.39/v3.0: flush if this CPU runs mm,
            leave_mm() if it only holds it lazily."""
            if t.active_mm is not mm:
                return 0
            if t.tlbstate == TLBSTATE_OK:
                return self._local_flush(t, va)
            self.leave_mm(t)
            return self.costs.flush_full
        return smp_invalidate_interrupt
