"""x86-64 TLB management of Linux v6.18, native (arch/x86/mm/tlb.c, arch/x86/include/asm/tlb.h,
arch/x86/include/asm/tlbflush.h).

- Per-mm `tlb_gen` (mm->context.tlb_gen) counts flush requests; each CPU remembers the generation its
  TLB is up to date with (cpu_tlbstate.ctxs[asid].tlb_gen; one context: the model has no PCID, so a
  switch to another mm drops the TLB, as a PCID switch to an unused ASID would).
- Lazy TLB: a CPU that goes idle or runs a kernel thread keeps the mm loaded with is_lazy set, and
  stays in mm_cpumask. native_flush_tlb_multi() skips lazy CPUs (should_flush_tlb()) unless page
  tables were freed; a lazy CPU that gets the IPI switches to init_mm (flush_tlb_func()).
- mm_cpumask is not cleared when a CPU switches away; a flush that reaches a CPU no longer running
  the mm clears its bit (TLB_REMOTE_WRONG_CPU). The periodic trim (should_trim_cpumask(), once a
  second) is not modelled: runs are shorter.
- tlb_single_page_flush_ceiling = 33: longer ranges are flushed whole.
Not modelled: global ASIDs and INVLPGB (broadcast_tlb_flush()), LOADED_MM_SWITCHING, trim_cpumask.
Followed: arch/x86/mm/tlb.c of a 6.18-era tree (the CachyOS/linux copy 0ebd1b80: INVLPGB global ASIDs,
EXPORT_SYMBOL_FOR_KVM) and kernel/smp.c smp_call_function_many_cond() (run_local only if cond_func(this_cpu)).
Known divergence: smp_call_function_many_cond() sends the IPIs before it runs func locally; the model runs
the local flush_tlb_func() first, then sends and waits (the same work, the local flush not overlapping the
IPIs' flight).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mmugather.arch.base import ArchBase, Cpu, Gather618, KernelPath
from mmugather.kernel.locking import LOCAL_IRQ_DISABLE, LOCAL_IRQ_ENABLE, PREEMPT_DISABLE, PREEMPT_ENABLE
from mmugather.kernel.smp import SmpCallFunctionMany
from mmugather.kernel.sched import TLBSTATE_LAZY, TLBSTATE_OK

if TYPE_CHECKING:
    from mmugather.mm.mm_types import MmStruct

TLB_FLUSH_ALL = -1


@dataclass(slots=True)
class FlushTlbInfo:
    """struct flush_tlb_info, arch/x86/include/asm/tlbflush.h v6.18."""

    mm: MmStruct
    start: int
    end: int
    stride_shift: int
    freed_tables: bool
    new_tlb_gen: int
    initiating_cpu: int


class X86(ArchBase):
    """The arch interface for the 6.18 policy on x86-64, native."""

    name = "x86"
    tlb_single_page_flush_ceiling = 33
    have_rcu_table_free = True            # MMU_GATHER_RCU_TABLE_FREE (unconditional since a37259732a7d)
    mmu_gather_merge_vmas = True          # arch/x86/Kconfig: select MMU_GATHER_MERGE_VMAS
    mmu_gather_page_size = False
    tlb_needs_table_invalidate = True     # asm-generic default
    pt_reclaim = True                     # select ARCH_SUPPORTS_PT_RECLAIM if X86_64: CONFIG_PT_RECLAIM=y

    @staticmethod
    def tlb_entry_live(x: Cpu) -> bool:
        """A lazy CPU's translations are not used before switch_mm_irqs_off() has compared tlb_gen and
        flushed what went stale."""
        return x.tlbstate != TLBSTATE_LAZY

    @staticmethod
    def pwc_entry_live(x: Cpu) -> bool:
        """Paging-structure caches stay live on lazy CPUs: speculative walks may use them, which is why
        flushes that free page tables IPI lazy CPUs too."""
        return True

    # ------------------------------------------------------------ context switches
    def load_cr3(self, c: Cpu, mm: MmStruct | None) -> None:
        """load_new_mm_cr3() with a flush: CPU c runs mm (None: init_mm), its TLB empty and up to date
        with mm's tlb_gen."""
        self.tlb.flush_all(c)
        c.loaded_mm = mm
        c.active_mm = mm
        c.per_cpu["tlb_gen"] = mm.tlb_gen if mm is not None else 0

    def switch_mm(self, c: Cpu, next_mm: MmStruct) -> None:
        """switch_mm_irqs_off(), arch/x86/mm/tlb.c v6.18."""
        was_lazy = c.tlbstate == TLBSTATE_LAZY
        c.tlbstate = TLBSTATE_OK
        if c.loaded_mm is next_mm:
            if not was_lazy:
                return
            if c.per_cpu.get("tlb_gen", 0) == next_mm.tlb_gen:
                return
            # TLB contents went out of date while we were in lazy mode
            self.load_cr3(c, next_mm)
            return
        next_mm.cpumask.add(c.id)
        self.load_cr3(c, next_mm)

    def enter_lazy_tlb(self, c: Cpu) -> None:
        """enter_lazy_tlb(), arch/x86/mm/tlb.c v6.18: nothing to do on init_mm, else is_lazy = true."""
        if c.loaded_mm is not None:
            c.tlbstate = TLBSTATE_LAZY

    # ------------------------------------------------------------ flushes
    def tlb_flush(self, c: Cpu, tlb: Gather618) -> KernelPath:
        """tlb_flush(), arch/x86/include/asm/tlb.h v6.18: the gathered range (everything for fullmm),
        at the stride of the lowest level cleared, telling whether page tables were freed."""
        start, end = 0, TLB_FLUSH_ALL
        if not tlb.fullmm and not tlb.need_flush_all:
            start, end = tlb.start, tlb.end
        yield self.flush_tlb_mm_range(c, tlb.mm, start, end, tlb.get_unmap_shift(), tlb.freed_tables)

    def flush_tlb_mm(self, c: Cpu, mm: MmStruct) -> KernelPath:
        """flush_tlb_mm(): flush_tlb_mm_range(mm, 0, TLB_FLUSH_ALL, 0UL, true)."""
        yield self.flush_tlb_mm_range(c, mm, 0, TLB_FLUSH_ALL, 12, True)

    def flush_tlb_page(self, c: Cpu, mm: MmStruct, va: int) -> KernelPath:
        """flush_tlb_page(): flush_tlb_mm_range(mm, a, a + PAGE_SIZE, PAGE_SHIFT, false)."""
        yield self.flush_tlb_mm_range(c, mm, va, va + 4096, 12, False)

    def flush_tlb_range(self, c: Cpu, mm: MmStruct, start: int, end: int) -> KernelPath:
        """flush_tlb_range() (arch/x86/include/asm/tlbflush.h v6.18): 4 KiB stride, and freed_tables =
        true: the caller may be moving or freeing page tables (mremap, THP collapse), so lazy CPUs get
        the IPI too."""
        yield self.flush_tlb_mm_range(c, mm, start, end, 12, True)

    def consider_global_asid(self, c: Cpu, mm: MmStruct) -> None:
        """consider_global_asid(), arch/x86/mm/tlb.c v6.15+: returns at once without X86_FEATURE_INVLPGB
        (`!cpu_feature_enabled(X86_FEATURE_INVLPGB)`); arch/x86_invlpgb.py has the feature."""

    def broadcast_tlb_flush(self, c: Cpu, info: FlushTlbInfo) -> KernelPath:
        """broadcast_tlb_flush(), arch/x86/mm/tlb.c v6.15+: only an mm with a global ASID gets here, and only
        X86_FEATURE_INVLPGB gives one (arch/x86_invlpgb.py)."""
        raise AssertionError(f"broadcast_tlb_flush: mm {info.mm.id} has a global ASID without INVLPGB")

    def flush_tlb_mm_range(self, c: Cpu, mm: MmStruct, start: int, end: int, stride_shift: int,
                           freed_tables: bool) -> KernelPath:
        """flush_tlb_mm_range(), arch/x86/mm/tlb.c v6.18: bump mm's tlb_gen; broadcast_tlb_flush() for an mm
        with a global ASID (X86_FEATURE_INVLPGB only: arch/x86_invlpgb.py); else flush_tlb_multi() and
        consider_global_asid() when some other CPU is in mm_cpumask; else flush_tlb_func() locally if mm is
        loaded here."""
        self._count_flush(c)
        yield PREEMPT_DISABLE                                        # get_cpu()
        mm.tlb_gen += 1
        if end != TLB_FLUSH_ALL and (end - start) >> stride_shift > self.tlb_single_page_flush_ceiling:
            start, end = 0, TLB_FLUSH_ALL                            # get_flush_tlb_info()
        info = FlushTlbInfo(mm, start, end, stride_shift, freed_tables, mm.tlb_gen, c.id)
        cost = self.costs.flush_call
        if mm.global_asid:                                           # mm_global_asid(): 0 without INVLPGB
            yield self.broadcast_tlb_flush(c, info)
        elif mm.cpumask - {c.id}:
            yield self.flush_tlb_multi(c, mm, info)
            self.consider_global_asid(c, mm)
        elif c.loaded_mm is mm:
            yield LOCAL_IRQ_DISABLE
            cost += self.flush_tlb_func(c, info)
            yield LOCAL_IRQ_ENABLE
        yield cost
        yield PREEMPT_ENABLE                                         # put_cpu()

    def flush_tlb_multi(self, c: Cpu, mm: MmStruct, info: FlushTlbInfo) -> KernelPath:
        """flush_tlb_multi(mm_cpumask(mm), info), arch/x86/mm/tlb.c v6.18: the paravirt op
        __flush_tlb_multi(), native_flush_tlb_multi() here (X86Kvm: kvm_flush_tlb_multi()). An inline call:
        the native path itself, not a frame of its own on the task's stack."""
        return self.native_flush_tlb_multi(c, sorted(mm.cpumask), info)

    def native_flush_tlb_multi(self, c: Cpu, cpumask: list[int], info: FlushTlbInfo) -> KernelPath:
        """native_flush_tlb_multi(), arch/x86/mm/tlb.c v6.18: on_each_cpu_mask(cpumask, flush_tlb_func)
        when page tables were freed, else on_each_cpu_cond_mask(should_flush_tlb, flush_tlb_func, ...).
        The condition decides for the initiator too (kernel/smp.c smp_call_function_many_cond(): the local
        call only if cond_func(this_cpu)): a lazy initiator, such as exit_mmap() after exit_mm(), does not
        run flush_tlb_func() and stays lazy. The initiator runs flush_tlb_func() itself, the others by IPI,
        and it waits for them."""
        local, targets = self.flush_tlb_multi_cpus(c, cpumask, info)
        if local:
            yield LOCAL_IRQ_DISABLE
            yield self.flush_tlb_func(c, info)
            yield LOCAL_IRQ_ENABLE
        if targets:
            yield SmpCallFunctionMany(targets, self._flush_tlb_func_ipi(info))

    def flush_tlb_multi_cpus(self, c: Cpu, cpumask: list[int], info: FlushTlbInfo) -> tuple[bool, list[int]]:
        """The CPUs of cpumask that native_flush_tlb_multi()'s condition picks (all of them when page tables
        were freed, else should_flush_tlb(); kernel/smp.c smp_call_function_many_cond()): whether the
        initiator is one (it then runs flush_tlb_func() itself) and the others, which an IPI must reach."""
        picked = [cpu for cpu in cpumask if info.freed_tables or self.should_flush_tlb(self.cpus[cpu], info)]
        return c.id in picked, [cpu for cpu in picked if cpu != c.id]

    @staticmethod
    def should_flush_tlb(t: Cpu, info: FlushTlbInfo) -> bool:
        """should_flush_tlb(), arch/x86/mm/tlb.c v6.18: not lazy, and running info->mm (trim_cpumask,
        the once-a-second cleanup of stale bits, is not modelled)."""
        if t.tlbstate == TLBSTATE_LAZY:
            return False
        return t.loaded_mm is info.mm

    def _flush_tlb_func_ipi(self, info: FlushTlbInfo) -> Callable[[Cpu], int]:
        idle_exit = self.costs.ipi_idle_exit

        def flush_tlb_func(t: Cpu) -> int:
            # an idle target first leaves the idle loop (a halted vCPU is woken by the hypervisor)
            return self.flush_tlb_func(t, info) + (idle_exit if t.curr is None else 0)
        return flush_tlb_func

    def flush_tlb_func(self, t: Cpu, info: FlushTlbInfo) -> int:
        """flush_tlb_func(), arch/x86/mm/tlb.c v6.18, on CPU t; returns its cost. A CPU that no longer
        runs info->mm leaves mm_cpumask; a lazy one switches to init_mm; one already up to date with
        f->new_tlb_gen returns before it reads mm's tlb_gen (a later flush, still in flight, will bring
        it up to date); otherwise flush what the generations say is missing: the range one page at a time
        when this is the only flush missed, else everything. (Every flush here has a generation:
        TLB_GENERATION_INVALID is for kernel-range flushes, not modelled.)"""
        mm = info.mm
        if mm is not t.loaded_mm:
            mm.cpumask.discard(t.id)                                # TLB_REMOTE_WRONG_CPU
            return 0
        if t.tlbstate == TLBSTATE_LAZY:
            self.load_cr3(t, None)                                  # switch_mm_irqs_off(NULL, &init_mm)
            t.tlbstate = TLBSTATE_OK
            return self.costs.flush_full
        local_gen = t.per_cpu.get("tlb_gen", 0)
        if info.new_tlb_gen <= local_gen:
            return 0                                                # already up to date with f->new_tlb_gen
        mm_gen = mm.tlb_gen
        if local_gen == mm_gen:
            return 0
        if info.end != TLB_FLUSH_ALL and info.new_tlb_gen == local_gen + 1 == mm_gen:
            cost = 0
            for addr in range(info.start, info.end, 1 << info.stride_shift):
                self.tlb.flush_one(t, addr)
                cost += self.costs.flush_one
        else:
            self.tlb.flush_all(t)
            cost = self.costs.flush_full
        t.per_cpu["tlb_gen"] = mm_gen
        return cost
