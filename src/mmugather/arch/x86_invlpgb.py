"""x86-64 with AMD broadcast TLB invalidation (INVLPGB + TLBSYNC, global ASIDs), Linux v6.15+ native
(arch/x86/mm/tlb.c, arch/x86/include/asm/tlb.h, arch/x86/include/asm/tlbflush.h).

Rik van Riel's series "AMD broadcast TLB invalidation" (v1-v14, linux-mm 2024-2025), merged for 6.15 through
tip x86/core: 4a02ed8e1cc3 (consolidate full flush threshold decision), 767ae437a32d (INVLPGB feature and
Kconfig entry), b7aa05cbdc52 (INVLPGB support code: __invlpgb(), __tlbsync(), asm/tlb.h), 82378c6c2f43
(INVLPGB for kernel TLB flushes), 72a920eacd8a (broadcast flushing in page reclaim), d504d1247e36 (global
ASID allocation helpers), be88a1dd6112 (global ASID context switch and TLB flush), c9826613a9cb (global
ASID process exit helpers), 4afeb0ed1753 (enable broadcast TLB invalidation for multi-threaded processes),
440a65b7d25f (AMD translation cache extensions), 634ab76159a8 (always set the ASID valid bit). Its first
two patches went into 6.14 (tip x86/mm): a37259732a7d "x86/mm: Make MMU_GATHER_RCU_TABLE_FREE unconditional"
and f2c5c2105827 "x86/mm: Remove pv_ops.mmu.tlb_remove_table call": with INVLPGB no IPI serializes
against GUP-fast's IRQs-off walk, so page tables must always be freed after an RCU grace period (the
model's X86 has have_rcu_table_free already, and v6.18's mmu_gather frees tables through RCU).

Modelled (followed: tlb.c of the 6.18-era CachyOS/linux copy 0ebd1b80, asm/tlb.h of a 7.0 tree):
- flush_tlb_mm_range(): an mm with a global ASID is flushed by broadcast_tlb_flush(); otherwise by IPIs
  (X86), after which consider_global_asid() gives it a global ASID once mm_active_cpus_exceeds(mm, 3):
  more than 3 CPUs run it, not lazy (the cover letter says "3 or more"; the code says 4 or more).
- mm_assign_global_asid() sets asid_transition; until every CPU running the mm has reloaded with the global
  ASID, finish_asid_transition() (after the INVLPGBs) sends the IPI flush to all of mm_cpumask, lazy CPUs
  included (native_flush_tlb_multi(): freed_tables || mm_in_asid_transition()). These are the IPIs left.
- A CPU switches to the global ASID at its next switch_mm_irqs_off() or when flush_tlb_func() runs on it
  (mm_needs_global_asid()); with a global ASID, flush_tlb_func() does nothing and a lazy->running switch
  needs no flush (global ASIDs are kept up to date by INVLPGB).
- broadcast_tlb_flush(): TLB_FLUSH_ALL: one INVLPGB of the PCID; else one INVLPGB per invlpgb_count_max
  strides. INVLPGB without INVLPGB_FLAG_FINAL_ONLY drops the translations and the cached walks of the
  range on every CPU that uses that PCID, lazy or not; then __tlbsync() waits.
- Below the threshold (and without INVLPGB's global ASID) everything is X86's.
Known divergences: consider_global_asid() runs at every IPI flush; the kernel returns early unless
`(current->pid & 0x1f) == (jiffies & 0x1f)` (one jiffy in 32 per task: 128 ms at HZ=250), so the kernel
switches later, by a delay the runs here (tens of ms) cannot show without it deciding the result by the
pid/jiffies phase alone; the explorer also leaves clocks out of its states. allocate_global_asid()'s bitmap
and rollover flush are not modelled (mm i gets TLB_NR_DYN_ASIDS + i), nor mm_free_global_asid().
flush_tlb_func() reloads the global ASID before it tests is_lazy, as 6.18 does: a lazy CPU the transition's
IPI reaches leaves lazy mode on the global ASID (the race Rik van Riel's "x86/mm: fix race between
flush_tlb_func and idle task leave_mm", May 2025, Fixes: 4afeb0ed1753, would close by testing is_lazy first).
Not modelled: flush_tlb_all()/flush_tlb_kernel_range() (invlpgb_flush_all(); no kernel-range flushes in the
model), arch_tlbbatch_flush() (reclaim), PTI's user PCID.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, cast

from mmugather.arch.base import Board, Cpu, KernelPath
from mmugather.arch.x86 import TLB_FLUSH_ALL, X86, FlushTlbInfo
from mmugather.kernel.sched import TLBSTATE_LAZY, TLBSTATE_OK

if TYPE_CHECKING:
    from mmugather.mm.mm_types import MmStruct

TLB_NR_DYN_ASIDS = 6          # arch/x86/include/asm/tlbflush.h
PMD_SHIFT = 21


class _NotingEngine(Protocol):
    """The engine's design-event hook (machine/engine.py Engine.note)."""

    def note(self, c: Any, name: str, args: dict | None = None) -> None: ...


class X86Invlpgb(X86):
    """The arch interface for the 6.18 policy on x86-64 with AMD INVLPGB (X86_FEATURE_INVLPGB set)."""

    name = "x86-invlpgb"
    global_asid_threshold = 3     # consider_global_asid(): mm_active_cpus_exceeds(mm, 3)
    # CPUID Fn8000_0008 EDX[15:0] + 1 (invlpgb_count_max, arch/x86/kernel/cpu/amd.c): the Milan value was
    # not found; 8 is an estimate. It only splits ranges of 9..33 pages into several INVLPGBs.
    invlpgb_count_max = 8

    def __init__(self, machine: Board) -> None:
        super().__init__(machine)
        self.engine = cast(_NotingEngine, machine.engine)

    # ------------------------------------------------------------ ASIDs
    @staticmethod
    def is_global_asid(c: Cpu) -> bool:
        """is_global_asid(cpu_tlbstate.loaded_mm_asid): CPU c runs its mm under that mm's global ASID."""
        return c.per_cpu.get("asid", 0) >= TLB_NR_DYN_ASIDS

    @staticmethod
    def mm_needs_global_asid(mm: MmStruct, c: Cpu) -> bool:
        """mm_needs_global_asid(), arch/x86/mm/tlb.c: mm has a global ASID that CPU c does not use yet."""
        return mm.global_asid != 0 and c.per_cpu.get("asid", 0) != mm.global_asid

    def load_cr3(self, c: Cpu, mm: MmStruct | None) -> None:
        """load_new_mm_cr3() after choose_new_asid(): the mm's global ASID if it has one, else a dynamic one
        (the model has one dynamic context, so the TLB is dropped either way: switch_mm to another mm)."""
        super().load_cr3(c, mm)
        c.per_cpu["asid"] = mm.global_asid if mm is not None else 0

    def _reload_global_asid(self, c: Cpu, mm: MmStruct) -> None:
        """switch_mm_irqs_off(NULL, mm) when mm_needs_global_asid(): choose_new_asid() returns the global ASID
        with need_flush = 0 (INVLPGB kept it up to date). The translations cached under the old dynamic ASID
        are unreachable from then on: the model, which keeps one context per CPU, drops them."""
        self.tlb.flush_all(c)
        c.per_cpu["asid"] = mm.global_asid

    def switch_mm(self, c: Cpu, next_mm: MmStruct) -> None:
        """switch_mm_irqs_off(), arch/x86/mm/tlb.c v6.15+: staying on the same mm, a CPU moves to the mm's new
        global ASID, and one already on it needs no tlb_gen check (is_global_asid(prev_asid)); else X86's."""
        if c.loaded_mm is next_mm and self.mm_needs_global_asid(next_mm, c):
            c.tlbstate = TLBSTATE_OK
            self._reload_global_asid(c, next_mm)
            return
        if c.loaded_mm is next_mm and self.is_global_asid(c):
            c.tlbstate = TLBSTATE_OK
            return
        super().switch_mm(c, next_mm)

    @staticmethod
    def mm_active_cpus_exceeds(mm: MmStruct, cpus: list[Cpu], threshold: int) -> bool:
        """mm_active_cpus_exceeds(): more than `threshold` CPUs of mm_cpumask run mm and are not lazy."""
        if len(mm.cpumask) <= threshold:
            return False
        count = sum(1 for cpu in mm.cpumask
                    if cpus[cpu].loaded_mm is mm and cpus[cpu].tlbstate != TLBSTATE_LAZY)
        return count > threshold

    def consider_global_asid(self, c: Cpu, mm: MmStruct) -> None:
        """consider_global_asid() -> use_global_asid() -> mm_assign_global_asid(): a global ASID for an mm
        active on more than global_asid_threshold CPUs, and asid_transition set (see the module's
        divergences: no pid/jiffies sampling)."""
        if mm.global_asid or not self.mm_active_cpus_exceeds(mm, list(self.cpus), self.global_asid_threshold):
            return
        mm.asid_transition = True
        mm.global_asid = TLB_NR_DYN_ASIDS + mm.id
        self.engine.note(c, "global_asid", {"mm": mm.id, "asid": mm.global_asid})

    # ------------------------------------------------------------ flushes
    def broadcast_tlb_flush(self, c: Cpu, info: FlushTlbInfo) -> KernelPath:
        """broadcast_tlb_flush(), arch/x86/mm/tlb.c v6.15+: INVLPGBs of the mm's PCID (all of it, or the range
        in invlpgb_count_max strides), finish_asid_transition(), then __tlbsync()."""
        mm = info.mm
        reached = [x for x in self.cpus if x.loaded_mm is mm and x.per_cpu.get("asid", 0) == mm.global_asid]
        if info.end == TLB_FLUSH_ALL:
            ops = 1                                                  # invlpgb_flush_single_pcid_nosync()
            for x in reached:
                self.tlb.flush_all(x)
        else:
            stride = 1 << info.stride_shift
            strides = max(1, (info.end - info.start) >> info.stride_shift)
            ops = -(-strides // self.invlpgb_count_max)              # invlpgb_flush_user_nr_nosync() each
            for x in reached:
                for addr in range(info.start, info.end, stride):
                    self.tlb.flush_leaf(x, addr)
                self.tlb.flush_walks(x, info.start, info.end)     # no INVLPGB_FLAG_FINAL_ONLY
        self.engine.note(c, "invlpgb", {"mm": mm.id, "asid": mm.global_asid, "instructions": ops,
                                        "start": hex(info.start), "end": "all" if info.end == TLB_FLUSH_ALL
                                        else hex(info.end), "cpus": [x.id for x in reached]})
        yield ops * self.costs.invlpgb
        yield self.finish_asid_transition(c, info)
        self.engine.note(c, "tlbsync", {"mm": mm.id})
        yield self.costs.tlbsync                                     # __tlbsync()

    def finish_asid_transition(self, c: Cpu, info: FlushTlbInfo) -> KernelPath:
        """finish_asid_transition(), arch/x86/mm/tlb.c v6.15+: while a CPU running the mm is not on its global
        ASID yet, flush_tlb_multi(mm_cpumask) (IPIs, which make stragglers reload); once none is left,
        mm_clear_asid_transition()."""
        mm = info.mm
        if not mm.asid_transition:
            return
        for cpu in sorted(mm.cpumask):
            x = self.cpus[cpu]
            if x.loaded_mm is mm and x.per_cpu.get("asid", 0) != mm.global_asid:
                yield self.flush_tlb_multi(c, mm, info)
                return
        mm.asid_transition = False

    def native_flush_tlb_multi(self, c: Cpu, cpumask: list[int], info: FlushTlbInfo) -> KernelPath:
        """native_flush_tlb_multi(), v6.15+: as X86's, and every CPU of the mask, lazy or not, while the mm is
        in its ASID transition (`info->freed_tables || mm_in_asid_transition(info->mm)`)."""
        if not info.mm.asid_transition or info.freed_tables:
            yield super().native_flush_tlb_multi(c, cpumask, info)
            return
        wide = FlushTlbInfo(info.mm, info.start, info.end, info.stride_shift, True, info.new_tlb_gen,
                            info.initiating_cpu)
        yield super().native_flush_tlb_multi(c, cpumask, wide)

    def flush_tlb_func(self, t: Cpu, info: FlushTlbInfo) -> int:
        """flush_tlb_func(), arch/x86/mm/tlb.c v6.18: on a CPU running info->mm, mm_needs_global_asid() first:
        switch_mm_irqs_off(NULL, loaded_mm, NULL) reloads with the global ASID and clears is_lazy; then a CPU
        on a global ASID has nothing to do (INVLPGB keeps it up to date); else X86's (the wrong-CPU case,
        the lazy switch to init_mm, the tlb_gen comparison)."""
        mm = info.mm
        if mm is not t.loaded_mm:
            return super().flush_tlb_func(t, info)
        cost = 0
        if self.mm_needs_global_asid(mm, t):
            t.tlbstate = TLBSTATE_OK
            self._reload_global_asid(t, mm)
            cost = self.costs.flush_full
        if self.is_global_asid(t):
            return cost
        return super().flush_tlb_func(t, info)
