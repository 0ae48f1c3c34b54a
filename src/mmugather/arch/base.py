"""The arch side of the arch interface: the state and accounting the arch modules share.

What the modelled kernel (mm/, kernel/) and the engine may call on an architecture - the `Arch` Protocol
(`Arch618` for the 6.18 gather's knobs), and the `Cpu`, `Task`, `Gather`, `Gather618` an arch reads - is
stated on the mm side, in mm/arch_protocol.py, as include/asm-generic/ states what generic code expects of
an arch; it is re-exported here for the arch modules. Each arch module (arch/x86_legacy.py, x86.py,
x86_kvm.py, arm64.py, ppc64.py, ppc64_radix.py) implements one of them, and the typed registry in
arch/__init__.py holds it to its Protocol under mypy.

Every flush is a kernel path: a generator the engine runs (machine/engine.py), yielding simulated nanoseconds,
requests (kernel/locking.py, kernel/smp.py) and nested paths.

`Board` is what an arch takes from the machine it is built for; `ArchBase` is the state every arch keeps
(the machine's TLBs, costs, metrics and CPUs) and the accounting every flush does; `BroadcastTlb` is what the
arches with hardware-broadcast invalidation share (arm64, powerpc): no IPIs, no lazy TLB.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from mmugather.kernel.locking import PREEMPT_DISABLE, PREEMPT_ENABLE
from mmugather.mm.arch_protocol import Arch, Arch618, Cpu, Gather, Gather618, KernelPath, Task

if TYPE_CHECKING:
    from mmugather.machine.costs import Costs
    from mmugather.machine.tlb import Tlb
    from mmugather.mm.mm_types import MmStruct
    from mmugather.report.metrics import Metrics

__all__ = ["Arch", "Arch618", "ArchBase", "Board", "BroadcastTlb", "Cpu", "Gather", "Gather618", "KernelPath",
           "Task"]


class _Engine(Protocol):
    @property
    def cpus(self) -> Sequence[Cpu]: ...


class _MachineSpec(Protocol):
    """The scenario's [machine] settings an arch reads (workloads/scenario.py Machine)."""

    @property
    def kvm_preempted(self) -> Sequence[int]: ...


class _ScenarioSpec(Protocol):
    @property
    def machine(self) -> _MachineSpec: ...


class Board(Protocol):
    """What an arch takes from the machine it is built for (sim/simulation.py Simulation)."""

    @property
    def tlb(self) -> Tlb: ...
    @property
    def costs(self) -> Costs: ...
    @property
    def metrics(self) -> Metrics: ...
    @property
    def engine(self) -> _Engine: ...
    @property
    def scenario(self) -> _ScenarioSpec: ...


class ArchBase:
    """The machine an arch drives: the TLBs, the cost model, the metrics and the CPUs."""

    def __init__(self, machine: Board) -> None:
        self.tlb = machine.tlb
        self.costs = machine.costs
        self.metrics = machine.metrics
        self.cpus = machine.engine.cpus

    def _count_flush(self, c: Cpu) -> None:
        """Account one flush call on CPU c (and whether it ran under a PTE lock)."""
        self.metrics.tlb_flushes += 1
        if c.ptl_held:
            self.metrics.flushes_under_pte_lock += 1


class BroadcastTlb(ArchBase):
    """Hardware-broadcast invalidation (arm64 TLBI ...IS + DSB ISH; powerpc tlbie): every CPU's TLB hears
    it, no IPIs. Translations are tagged (ASID, VSID), so a context switch needs no flush; the model keeps
    a CPU's translations of its loaded mm only and drops them on a switch (as x86 without PCID), which
    hides no stale entry a broadcast would have left. No lazy TLB tracking."""

    def switch_mm(self, c: Cpu, next_mm: MmStruct) -> None:
        """switch_mm(): arm64 check_and_switch_context() (mm/context.c v6.18), powerpc switch_slb()
        (v3.0): the CPU runs next_mm's ASID or segments."""
        if c.loaded_mm is next_mm:
            return
        self.tlb.flush_all(c)
        c.loaded_mm = c.active_mm = next_mm
        next_mm.cpumask.add(c.id)

    def enter_lazy_tlb(self, c: Cpu) -> None:
        """enter_lazy_tlb(): nothing on arm64 (v6.18) or powerpc (v3.0)."""

    def flush_tlb_mm(self, c: Cpu, mm: MmStruct) -> KernelPath:
        """flush_tlb_mm(): arm64 TLBI ASIDE1IS + DSB ISH (asm/tlbflush.h v6.18); powerpc hash64 (v3.0)
        issued the invalidations per PTE, modelled as one broadcast. Every entry of mm on every CPU."""
        self._count_flush(c)
        yield PREEMPT_DISABLE
        for x in self.cpus:
            if x.loaded_mm is mm:
                self.tlb.flush_all(x)
        yield self.costs.flush_call + self.costs.tlbi + self.costs.dsb_ish
        yield PREEMPT_ENABLE
