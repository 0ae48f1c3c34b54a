"""x86-64 of Linux v6.18 as a KVM guest with paravirtual TLB flush (arch/x86/kernel/kvm.c
kvm_flush_tlb_multi(), virt/kvm/kvm_main.c kvm_sched_out(), arch/x86/kvm/x86.c record_steal_time()).

kvm_flush_tlb_multi() copies mm_cpumask and, for each vCPU whose steal-time record says KVM_VCPU_PREEMPTED,
sets KVM_VCPU_FLUSH_TLB there and clears it from the copy; then native_flush_tlb_multi() (X86) filters what
is left (should_flush_tlb()) and sends the IPIs. So the pv filter runs before the lazy filter, on the whole
mask, and only preempted vCPUs escape the IPI: kvm_sched_out() marks a vCPU preempted only when its thread
was runnable and wanted to run (`task_is_runnable(current) && vcpu->wants_to_run`, 6.13+), i.e. the host
descheduled it against its will. A halted idle vCPU (HLT: its thread blocks) is not preempted and still
gets the IPI, which is what this machine measures (docs/host.md: munmap:512:blocked, 1 IPI on CPU 1).

Which vCPUs the host has preempted is a scenario setting, `[machine] kvm_preempted` (default none): the
CPUs whose steal-time record reads preempted whenever another vCPU flushes. The initiator is never
preempted (it is running: "The local vCPU is never preempted", kvm.c). The host flushes a marked vCPU's TLB
(kvm_vcpu_flush_tlb_guest(), from record_steal_time()) before that vCPU runs guest code again; the model
flushes it at the moment of marking, which no guest code can observe, and leaves its cpu_tlbstate tlb_gen
as it is (the host flush does not touch it either).

Followed: kvm.c of a 6.16+ tree (wrmsrq(), apic_update_callback(); kvm_flush_tlb_multi() unchanged since
5.x apart from try_cmpxchg()), kvm_main.c kvm_sched_out() of 6.13+.
Not modelled: a preemption schedule (a vCPU preempted for part of the run), KVM_HINTS_REALTIME.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from mmugather.arch.base import Board, Cpu, KernelPath
from mmugather.arch.x86 import X86, FlushTlbInfo

if TYPE_CHECKING:
    from mmugather.mm.mm_types import MmStruct


class X86Kvm(X86):
    """The arch interface for the 6.18 policy on x86-64 as a KVM guest with PV TLB flush."""

    name = "x86-kvm"

    def __init__(self, machine: Board) -> None:
        super().__init__(machine)
        self.preempted = frozenset(machine.scenario.machine.kvm_preempted)

    def flush_tlb_multi(self, c: Cpu, mm: MmStruct, info: FlushTlbInfo) -> KernelPath:
        """kvm_flush_tlb_multi(), arch/x86/kernel/kvm.c: a preempted vCPU of mm_cpumask gets
        KVM_VCPU_FLUSH_TLB instead of an IPI; native_flush_tlb_multi() on the rest."""
        flushmask = []
        for cpu in sorted(mm.cpumask):
            if cpu != c.id and cpu in self.preempted:         # steal_time.preempted & KVM_VCPU_PREEMPTED
                self.tlb.flush_all(self.cpus[cpu])            # KVM_VCPU_FLUSH_TLB, done by the host on entry
            else:
                flushmask.append(cpu)
        yield self.native_flush_tlb_multi(c, flushmask, info)
