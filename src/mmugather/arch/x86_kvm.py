"""x86-64 of Linux v6.18 as a KVM guest with paravirtual TLB flush (arch/x86/kernel/kvm.c
kvm_flush_tlb_multi(), virt/kvm/kvm_main.c kvm_sched_out(), arch/x86/kvm/x86.c record_steal_time()).

kvm_flush_tlb_multi() copies the mask and, for each target vCPU whose steal-time record says
KVM_VCPU_PREEMPTED, sets KVM_VCPU_FLUSH_TLB there instead of sending an IPI; the host flushes that vCPU's
TLB (kvm_vcpu_flush_tlb_guest()) before it next enters the guest. Then native_flush_tlb_multi() as X86.

Known divergence (issue 24, item 1): the model treats an idle CPU (its vCPU halted) as preempted, while
kvm_sched_out() marks a vCPU preempted only when its thread was runnable and descheduled by the host, so a
halted idle vCPU still gets the IPI; and the kernel drops preempted vCPUs from the mask before
should_flush_tlb() filters it, the model after.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from mmugather.arch.base import Cpu
from mmugather.arch.x86 import X86, FlushTlbInfo
from mmugather.sim.engine import TLBSTATE_LAZY

if TYPE_CHECKING:
    from mmugather.mm.mm_types import MmStruct


class X86Kvm(X86):
    """The arch interface for the 6.18 policy on x86-64 as a KVM guest with PV TLB flush."""

    name = "x86-kvm"

    @staticmethod
    def tlb_entry_live(x: Cpu) -> bool:
        return x.tlbstate != TLBSTATE_LAZY and not x.per_cpu.get("kvm_flush_tlb")

    @staticmethod
    def pwc_entry_live(x: Cpu) -> bool:
        return not x.per_cpu.get("kvm_flush_tlb")

    def switch_mm(self, c: Cpu, next_mm: MmStruct) -> None:
        """record_steal_time()/kvm_vcpu_flush_tlb_guest() on the host before the vCPU runs again: a
        deferred flush empties the TLB, then switch_mm_irqs_off() as native."""
        if c.per_cpu.pop("kvm_flush_tlb", False):
            self.tlb.flush_all(c)
        super().switch_mm(c, next_mm)

    def pv_filter(self, targets: list[int], info: FlushTlbInfo) -> list[int]:
        """kvm_flush_tlb_multi(): a preempted vCPU (here: an idle CPU) gets KVM_VCPU_FLUSH_TLB, no IPI."""
        sent = []
        for cpu in targets:
            t = self.cpus[cpu]
            if t.curr is None:
                t.per_cpu["kvm_flush_tlb"] = True
            else:
                sent.append(cpu)
        return sent
