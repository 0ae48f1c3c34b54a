"""x86-64 TLB management as Linux 2.6.39 and 3.0 had it (arch/x86/mm/tlb.c, arch/x86/include/asm/tlb.h,
arch/x86/include/asm/mmu_context.h).

- tlb_flush(tlb) is flush_tlb_mm(tlb->mm): every gather flush is a whole-mm flush.
- flush_tlb_mm flushes locally (or leave_mm() when the current task has no mm: exit_mmap runs after
  exit_mm() cleared current->mm), then IPIs every other CPU in mm_cpumask and waits for all of them.
- A CPU in lazy TLB mode (a kernel thread or idle borrowing the mm) that receives the flush IPI calls
  leave_mm(): it leaves mm_cpumask and loads swapper_pg_dir, so it gets no further IPIs for that mm.
- switch_mm to the same mm reloads CR3 only if leave_mm() had cleared the CPU from mm_cpumask.
The IPIs are the dedicated INVALIDATE_TLB_VECTOR ones of that era (smp_invalidate_interrupt); they became
smp_call_function_many() calls only in 3.6. No PCID: loading CR3 drops every user translation.
"""
from __future__ import annotations

from mmugather.kernel.locking import LOCAL_IRQ_DISABLE, LOCAL_IRQ_ENABLE, PREEMPT_DISABLE, PREEMPT_ENABLE
from mmugather.kernel.smp import SmpCallFunctionMany
from mmugather.sim.engine import TLBSTATE_LAZY, TLBSTATE_OK


class X86Legacy:
    """The arch interface for the 2.6.39 and 3.0 policies on x86-64."""

    name = "x86"
    have_rcu_table_free = False

    def __init__(self, machine) -> None:
        self.tlb = machine.tlb
        self.costs = machine.costs
        self.metrics = machine.metrics

    @staticmethod
    def tlb_entry_live(x) -> bool:
        """Every cached translation on another CPU may be used at once (a lazy CPU still runs on the
        mm's page tables until leave_mm())."""
        return True

    pwc_entry_live = tlb_entry_live

    # ------------------------------------------------------------ context switches
    def load_cr3(self, c, mm) -> None:
        """load_cr3(): point the CPU at mm's page tables (None: swapper_pg_dir), dropping its TLB."""
        self.tlb.flush_all(c)
        c.loaded_mm = mm

    def switch_mm(self, c, next_mm) -> None:
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

    def enter_lazy_tlb(self, c) -> None:
        """enter_lazy_tlb(): TLBSTATE_OK -> TLBSTATE_LAZY; the mm stays loaded and in mm_cpumask."""
        if c.tlbstate == TLBSTATE_OK:
            c.tlbstate = TLBSTATE_LAZY

    def leave_mm(self, c) -> None:
        """leave_mm(), arch/x86/mm/tlb.c: a lazy CPU leaves mm_cpumask and loads swapper_pg_dir."""
        if c.tlbstate == TLBSTATE_OK:
            raise AssertionError(f"leave_mm: CPU {c.id} is not in lazy TLB mode")
        if c.active_mm is not None:
            c.active_mm.cpumask.discard(c.id)
        self.load_cr3(c, None)

    # ------------------------------------------------------------ flushes
    def tlb_flush(self, c, tlb):
        """tlb_flush(), arch/x86/include/asm/tlb.h v2.6.39/v3.0: flush_tlb_mm(tlb->mm)."""
        yield self.flush_tlb_mm(c, tlb.mm)

    def flush_tlb_mm(self, c, mm):
        """flush_tlb_mm(), arch/x86/mm/tlb.c v2.6.39/v3.0."""
        yield self._flush(c, mm, None)

    def flush_tlb_page(self, c, mm, va: int):
        """flush_tlb_page(), arch/x86/mm/tlb.c v2.6.39/v3.0: INVLPG here, the same va on the others."""
        yield self._flush(c, mm, va)

    def _flush(self, c, mm, va: int | None):
        """The body flush_tlb_mm() and flush_tlb_page() share: local flush (or leave_mm() when current
        has no mm), then flush_tlb_others() to the rest of mm_cpumask, with preemption off."""
        self.metrics.tlb_flushes += 1
        if c.ptl_held:
            self.metrics.flushes_under_pte_lock += 1
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

    def _local_flush(self, c, va: int | None) -> int:
        """local_flush_tlb() (va None) or __flush_tlb_one(va); returns its cost."""
        if va is None:
            self.tlb.flush_all(c)
            return self.costs.flush_full
        self.tlb.flush_one(c, va)
        return self.costs.flush_one

    def _invalidate_handler(self, mm, va: int | None):
        def smp_invalidate_interrupt(t) -> int:
            """smp_invalidate_interrupt(), arch/x86/mm/tlb.c v2.6.39/v3.0: flush if this CPU runs mm,
            leave_mm() if it only holds it lazily."""
            if t.active_mm is not mm:
                return 0
            if t.tlbstate == TLBSTATE_OK:
                return self._local_flush(t, va)
            self.leave_mm(t)
            return self.costs.flush_full
        return smp_invalidate_interrupt


TLB_FLUSH_ALL = -1


class FlushTlbInfo:
    """struct flush_tlb_info, arch/x86/include/asm/tlbflush.h v6.18."""

    __slots__ = ("mm", "start", "end", "stride_shift", "freed_tables", "new_tlb_gen", "initiating_cpu")

    def __init__(self, mm, start, end, stride_shift, freed_tables, new_tlb_gen, cpu) -> None:
        self.mm = mm
        self.start = start
        self.end = end
        self.stride_shift = stride_shift
        self.freed_tables = freed_tables
        self.new_tlb_gen = new_tlb_gen
        self.initiating_cpu = cpu


class X86:
    """x86-64 TLB management of Linux v6.18 (arch/x86/mm/tlb.c, arch/x86/include/asm/tlb.h), native.

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
    """

    name = "x86"
    tlb_single_page_flush_ceiling = 33
    have_rcu_table_free = True            # MMU_GATHER_RCU_TABLE_FREE (unconditional since a37259732a7d)
    mmu_gather_merge_vmas = True          # arch/x86/Kconfig: select MMU_GATHER_MERGE_VMAS
    mmu_gather_page_size = False
    tlb_needs_table_invalidate = True     # asm-generic default

    def __init__(self, machine) -> None:
        self.tlb = machine.tlb
        self.costs = machine.costs
        self.metrics = machine.metrics
        self.cpus = machine.engine.cpus

    @staticmethod
    def tlb_entry_live(x) -> bool:
        """A lazy CPU's translations are not used before switch_mm_irqs_off() has compared tlb_gen and
        flushed what went stale."""
        return x.tlbstate != TLBSTATE_LAZY

    @staticmethod
    def pwc_entry_live(x) -> bool:
        """Paging-structure caches stay live on lazy CPUs: speculative walks may use them, which is why
        flushes that free page tables IPI lazy CPUs too."""
        return True

    # ------------------------------------------------------------ context switches
    def load_cr3(self, c, mm) -> None:
        self.tlb.flush_all(c)
        c.loaded_mm = mm
        c.active_mm = mm
        c.per_cpu["tlb_gen"] = mm.tlb_gen if mm is not None else 0

    def switch_mm(self, c, next_mm) -> None:
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
        if next_mm is not None:
            next_mm.cpumask.add(c.id)
        self.load_cr3(c, next_mm)

    def enter_lazy_tlb(self, c) -> None:
        """enter_lazy_tlb(), arch/x86/mm/tlb.c v6.18: nothing to do on init_mm, else is_lazy = true."""
        if c.loaded_mm is not None:
            c.tlbstate = TLBSTATE_LAZY

    # ------------------------------------------------------------ flushes
    def tlb_flush(self, c, tlb):
        """tlb_flush(), arch/x86/include/asm/tlb.h v6.18: the gathered range (everything for fullmm),
        at the stride of the lowest level cleared, telling whether page tables were freed."""
        start, end = 0, TLB_FLUSH_ALL
        if not tlb.fullmm and not tlb.need_flush_all:
            start, end = tlb.start, tlb.end
        yield self.flush_tlb_mm_range(c, tlb.mm, start, end, tlb.get_unmap_shift(), tlb.freed_tables)

    def flush_tlb_mm(self, c, mm):
        """flush_tlb_mm(): flush_tlb_mm_range(mm, 0, TLB_FLUSH_ALL, 0UL, true)."""
        yield self.flush_tlb_mm_range(c, mm, 0, TLB_FLUSH_ALL, 12, True)

    def flush_tlb_page(self, c, mm, va: int):
        """flush_tlb_page(): flush_tlb_mm_range(mm, a, a + PAGE_SIZE, PAGE_SHIFT, false)."""
        yield self.flush_tlb_mm_range(c, mm, va, va + 4096, 12, False)

    def flush_tlb_range(self, c, mm, start: int, end: int):
        """flush_tlb_range() (arch/x86/include/asm/tlbflush.h v6.18): 4 KiB stride, and freed_tables =
        true: the caller may be moving or freeing page tables (mremap, THP collapse), so lazy CPUs get
        the IPI too."""
        yield self.flush_tlb_mm_range(c, mm, start, end, 12, True)

    def flush_tlb_mm_range(self, c, mm, start: int, end: int, stride_shift: int, freed_tables: bool):
        """flush_tlb_mm_range(), arch/x86/mm/tlb.c v6.18: bump mm's tlb_gen; flush_tlb_multi() when some
        other CPU is in mm_cpumask, else flush_tlb_func() locally if mm is loaded here."""
        self.metrics.tlb_flushes += 1
        if c.ptl_held:
            self.metrics.flushes_under_pte_lock += 1
        yield PREEMPT_DISABLE                                        # get_cpu()
        mm.tlb_gen += 1
        if end != TLB_FLUSH_ALL and (end - start) >> stride_shift > self.tlb_single_page_flush_ceiling:
            start, end = 0, TLB_FLUSH_ALL                            # get_flush_tlb_info()
        info = FlushTlbInfo(mm, start, end, stride_shift, freed_tables, mm.tlb_gen, c.id)
        cost = self.costs.flush_call
        if mm.cpumask - {c.id}:
            yield self.flush_tlb_multi(c, mm, info)
        elif c.loaded_mm is mm:
            yield LOCAL_IRQ_DISABLE
            cost += self.flush_tlb_func(c, info)
            yield LOCAL_IRQ_ENABLE
        yield cost
        yield PREEMPT_ENABLE                                         # put_cpu()

    def flush_tlb_multi(self, c, mm, info):
        """native_flush_tlb_multi(), arch/x86/mm/tlb.c v6.18: every CPU in mm_cpumask when page tables
        were freed, else only those should_flush_tlb() picks (not lazy); the initiator runs
        flush_tlb_func() itself, the others by IPI, and it waits for them."""
        targets = []
        for cpu in sorted(mm.cpumask):
            if cpu != c.id and (info.freed_tables or self.should_flush_tlb(self.cpus[cpu], info)):
                targets.append(cpu)
        if c.id in mm.cpumask:
            yield LOCAL_IRQ_DISABLE
            yield self.flush_tlb_func(c, info)
            yield LOCAL_IRQ_ENABLE
        targets = self.pv_filter(targets, info)
        if targets:
            yield SmpCallFunctionMany(targets, self._flush_tlb_func_ipi(info))

    def pv_filter(self, targets: list[int], info) -> list[int]:
        """The CPUs that get an IPI (native: all of them)."""
        return targets

    @staticmethod
    def should_flush_tlb(t, info) -> bool:
        """should_flush_tlb(), arch/x86/mm/tlb.c v6.18: not lazy, and running info->mm (trim_cpumask,
        the once-a-second cleanup of stale bits, is not modelled)."""
        if t.tlbstate == TLBSTATE_LAZY:
            return False
        return t.loaded_mm is info.mm

    def _flush_tlb_func_ipi(self, info):
        def flush_tlb_func(t) -> int:
            return self.flush_tlb_func(t, info)
        return flush_tlb_func

    def flush_tlb_func(self, t, info) -> int:
        """flush_tlb_func(), arch/x86/mm/tlb.c v6.18, on CPU t; returns its cost. A CPU that no longer
        runs info->mm leaves mm_cpumask; a lazy one switches to init_mm; otherwise flush what the
        generations say is missing: the range one page at a time when this is the only flush missed,
        else everything."""
        mm = info.mm
        if mm is not t.loaded_mm:
            mm.cpumask.discard(t.id)                                # TLB_REMOTE_WRONG_CPU
            return 0
        if t.tlbstate == TLBSTATE_LAZY:
            self.load_cr3(t, None)                                  # switch_mm_irqs_off(NULL, &init_mm)
            t.tlbstate = TLBSTATE_OK
            return self.costs.flush_full
        local_gen = t.per_cpu.get("tlb_gen", 0)
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


class X86Kvm(X86):
    """x86-64 v6.18 as a KVM guest with paravirtual TLB flush (arch/x86/kernel/kvm.c
    kvm_flush_tlb_multi()): a target vCPU that is not running on the host (here: an idle CPU, whose vCPU
    halted and was descheduled) gets KVM_VCPU_FLUSH_TLB set in its steal-time area instead of an IPI,
    and the host flushes its TLB before it next enters the guest."""

    name = "x86-kvm"

    @staticmethod
    def tlb_entry_live(x) -> bool:
        return x.tlbstate != TLBSTATE_LAZY and not x.per_cpu.get("kvm_flush_tlb")

    @staticmethod
    def pwc_entry_live(x) -> bool:
        return not x.per_cpu.get("kvm_flush_tlb")

    def switch_mm(self, c, next_mm) -> None:
        """record_steal_time()/kvm_vcpu_flush_tlb_guest() on the host before the vCPU runs again: a
        deferred flush empties the TLB, then switch_mm_irqs_off() as native."""
        if c.per_cpu.pop("kvm_flush_tlb", False):
            self.tlb.flush_all(c)
        super().switch_mm(c, next_mm)

    def pv_filter(self, targets: list[int], info) -> list[int]:
        sent = []
        for cpu in targets:
            t = self.cpus[cpu]
            if t.curr is None:                       # vCPU preempted: deferred flush, no IPI
                t.per_cpu["kvm_flush_tlb"] = True
            else:
                sent.append(cpu)
        return sent
