"""The arch layer (arch/): every arch class holds to its Protocol, and the hooks mm/ calls exist on each."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from mmugather.policies import POLICIES
from mmugather.sim.simulation import Simulation
from mmugather.workloads.builtin import resolve_workload

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("policy", ["2.6.39", "3.0"])
def test_mprotect_on_x86_of_2_6_39_and_3_0_flushes_the_whole_mm(policy):
    """mprotect's flush_tlb_range() is flush_tlb_mm() on x86 of that era: one flush, an IPI to the CPU
    running the other thread (it crashed before X86Legacy had flush_tlb_range)."""
    m = Simulation(resolve_workload("mprotect:64:running"), POLICIES[policy], cpus=2, arch="x86").run()
    assert (m["tlb_flushes"], m["ipis_by_cpu"], m["violations"]) == (1, [0, 1], [])


@pytest.mark.skipif(importlib.util.find_spec("mypy") is None, reason="mypy is not installed (test extras)")
def test_every_registered_arch_satisfies_its_protocol_under_mypy():
    """mypy, configured in pyproject.toml, checks arch/ (the registry's types hold each arch class to Arch
    or Arch618)."""
    r = subprocess.run([sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr


# ------------------------------------------------------------------ 6.18 x86 and x86-kvm (issue 24, items 1, 7)
def _kvm(name: str, preempted: list[int], arch: str = "x86-kvm") -> Simulation:
    """`name` on 2 CPUs of the 6.18 policy, the host keeping the vCPUs `preempted` descheduled."""
    sc = resolve_workload(name)
    sc = sc.model_copy(update={"machine": sc.machine.model_copy(update={"kvm_preempted": preempted})})
    return Simulation(sc, POLICIES["6.18"], cpus=2, arch=arch)


def test_kvm_sends_the_ipi_to_a_halted_idle_vcpu():
    """kvm_flush_tlb_multi() (arch/x86/kernel/kvm.c) skips only vCPUs whose steal time says preempted, and
    kvm_sched_out() (virt/kvm/kvm_main.c) marks a halted vCPU not preempted: the lazy idle CPU 1 gets the
    flush that frees a page table, as on this KVM host (docs/host.md: 1 IPI). The model sent none."""
    for name in ("munmap:512:blocked", "munmap-sparse:10:blocked"):
        m = _kvm(name, []).run()
        assert (m["ipis_by_cpu"], m["violations"]) == ([0, 1], []), name


def test_kvm_defers_the_flush_of_a_preempted_vcpu_running_or_lazy():
    """A vCPU the host preempted gets KVM_VCPU_FLUSH_TLB instead of the IPI (the host flushes its TLB before
    it re-enters), whether its thread was running or it was lazy: the pv filter runs on the whole
    mm_cpumask before native_flush_tlb_multi()'s should_flush_tlb(), so a lazy preempted vCPU is marked
    (and flushed) even by a flush that would have skipped it. Natively the lazy CPU keeps its entry."""
    for name in ("munmap:1:running", "munmap:512:blocked", "munmap:20000"):
        m = _kvm(name, [1]).run()
        assert (m["ipis_by_cpu"], m["violations"]) == ([0, 0], []), name
    lazy_native, lazy_kvm = _kvm("munmap:1:blocked", [], "x86"), _kvm("munmap:1:blocked", [1])
    lazy_native.run()
    lazy_kvm.run()
    assert (len(lazy_native.engine.cpus[1].tlb), len(lazy_kvm.engine.cpus[1].tlb)) == (1, 0)


def test_kvm_preempted_is_validated_and_folds_with_cpus():
    from mmugather.errors import InputError
    from mmugather.workloads.scenario import parse_scenario, with_cpus
    base = {"machine": {"cpus": 2}, "process": [{"name": "p", "vma": [], "thread": [{"cpu": 0, "program": []}]}]}
    with pytest.raises(InputError, match=r"machine: kvm_preempted: CPU 2 but the machine has 2 CPUs"):
        parse_scenario({**base, "machine": {"cpus": 2, "kvm_preempted": [2]}}, "t")
    sc = parse_scenario({**base, "machine": {"cpus": 4, "kvm_preempted": [1, 3]}}, "t")
    assert with_cpus(sc, 2).machine.kvm_preempted == [1]
    assert parse_scenario(base, "t").machine.kvm_preempted == []


def test_a_lazy_initiator_is_filtered_by_should_flush_tlb_too(monkeypatch):
    """native_flush_tlb_multi() (arch/x86/mm/tlb.c v6.18) runs flush_tlb_func() on the initiator only if
    should_flush_tlb() picks it (kernel/smp.c smp_call_function_many_cond()) unless tables were freed:
    exit_mmap() after exit_mm() runs lazy, so its forced flushes of a full gather (no table freed yet, the
    other thread's CPU still in mm_cpumask) leave it lazy; only the last flush, which frees the tables,
    switches it to init_mm. The model ran flush_tlb_func() (a switch and a full flush) at the first."""
    from mmugather.arch.x86 import X86
    from mmugather.kernel.sched import TLBSTATE_LAZY
    from mmugather.workloads.scenario import parse_scenario
    calls = []
    real = X86.flush_tlb_func

    def spy(self, t, info):
        calls.append((t.id, t.tlbstate == TLBSTATE_LAZY, info.freed_tables))
        return real(self, t, info)
    monkeypatch.setattr(X86, "flush_tlb_func", spy)
    sc = parse_scenario({"machine": {"cpus": 2, "latency_task": False}, "process": [{
        "name": "p", "vma": [{"name": "a", "size": 20000 * 4096, "populate": True}],
        "thread": [{"cpu": 0, "program": [{"op": "sleep", "ns": 100_000}, {"op": "exit"}]},
                   {"cpu": 1, "program": [{"op": "exit"}]}]}]}, "t")
    m = Simulation(sc, POLICIES["6.18"], cpus=2, arch="x86").run()
    assert m["violations"] == [] and m["tlb_flushes"] == 3
    assert [c for c in calls if c[0] == 0] == [(0, True, True)]


def test_flush_tlb_func_returns_when_already_at_the_requested_generation():
    """flush_tlb_func() (arch/x86/mm/tlb.c v6.18) returns before reading mm's tlb_gen when
    f->new_tlb_gen <= local_tlb_gen: a CPU that caught up to generation 6 while a flush to 7 is still in
    flight does nothing for the IPI of generation 5 (the model did a full flush and jumped to 7)."""
    from mmugather.arch.x86 import FlushTlbInfo
    from mmugather.kernel.sched import TLBSTATE_OK
    sim = Simulation(resolve_workload("munmap:1:running"), POLICIES["6.18"], cpus=2, arch="x86")
    mm, t = sim.mms[0], sim.engine.cpus[1]
    t.loaded_mm, t.tlbstate, t.per_cpu["tlb_gen"] = mm, TLBSTATE_OK, 6
    mm.tlb_gen = 7
    assert sim.arch.flush_tlb_func(t, FlushTlbInfo(mm, 0x1000, 0x2000, 12, False, 5, 0)) == 0
    assert t.per_cpu["tlb_gen"] == 6
    assert sim.arch.flush_tlb_func(t, FlushTlbInfo(mm, 0x1000, 0x2000, 12, False, 7, 0)) == sim.costs.flush_one
    assert t.per_cpu["tlb_gen"] == 7


def _radix_sim(program0, program1=None, populate=True):
    from mmugather.workloads.scenario import parse_scenario
    threads = [{"cpu": 0, "program": program0}] + ([{"cpu": 1, "program": program1}] if program1 else [])
    sc = parse_scenario({"name": "radix", "machine": {"cpus": 2, "policy": "6.18", "latency_task": False},
                         "process": [{"name": "p", "vma": [
                             {"name": "a", "size": "2MiB", "start": 0x10000000, "populate": populate},
                             {"name": "b", "size": "4KiB", "start": 0x10400000, "populate": True}],
                             "thread": threads}]}, "test")
    return Simulation(sc, POLICIES["6.18"], arch="ppc64-radix")


def test_radix_tlb_flush_drops_the_walk_cache_only_when_tables_were_freed():
    """radix__tlb_flush(): a gather that freed no table tlbie's translations (RIC_FLUSH_TLB) and leaves the
    other CPU's PWC; one that freed a table flushes the PWC too (an arch flushing walks always, or never,
    fails one half)."""
    sim = _radix_sim([{"op": "sleep", "ns": 50_000}, {"op": "madvise", "vma": "b"}],
                     [{"op": "touch", "vma": "b", "write": False}, {"op": "sleep", "ns": 100_000}])
    c1 = sim.engine.cpus[1]
    seen = {}
    orig = sim.arch.tlb_flush

    def spy(c, tlb):
        yield orig(c, tlb)
        seen[tlb.freed_tables] = (dict(c1.tlb), len(c1.pwc))
    sim.arch.tlb_flush = spy
    sim.run()
    assert False in seen and seen[False][0] == {} and seen[False][1] == 1
    sim = _radix_sim([{"op": "sleep", "ns": 50_000}, {"op": "munmap", "vma": "b"}],
                     [{"op": "touch", "vma": "b", "write": False}, {"op": "sleep", "ns": 100_000}])
    c1 = sim.engine.cpus[1]
    seen = {}
    orig = sim.arch.tlb_flush
    sim.arch.tlb_flush = spy
    m = sim.run()
    assert seen[True] == ({}, 0) and m["violations"] == []


def test_radix_has_no_pt_reclaim():
    """powerpc does not select ARCH_SUPPORTS_PT_RECLAIM: MADV_DONTNEED of a whole 2 MiB table leaves the
    empty table in place (x86 frees it)."""
    prog = [{"op": "madvise", "vma": "a"}, {"op": "sleep", "ns": 10}]
    radix = _radix_sim(prog).run()
    from mmugather.workloads.scenario import parse_scenario
    sc = parse_scenario({"name": "x", "machine": {"cpus": 2, "policy": "6.18", "latency_task": False},
                         "process": [{"name": "p", "vma": [{"name": "a", "size": "2MiB", "start": 0x10000000,
                                                            "populate": True}],
                                      "thread": [{"cpu": 0, "program": prog}]}]}, "test")
    x86 = Simulation(sc, POLICIES["6.18"], arch="x86").run()
    assert radix["page_tables_reclaimed"] == 0 and x86["page_tables_reclaimed"] == 1
