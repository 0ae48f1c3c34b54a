"""The 6.18 model: real-kernel shootdown counts, batch limits, lazy TLB, nested gathers, lockless walkers."""
import pytest
from helpers import run, scenario

from mmugather.mm.mmu_gather.v6_18 import Gather618
from mmugather.mm.page_alloc import PGTABLE
from mmugather.policies import POLICIES
from mmugather.policies.linux_6_18 import Linux618
from mmugather.sim.simulation import Simulation
from mmugather.workloads.builtin import resolve_workload

# Measured on Linux 6.18, x86-64, 2 CPUs: thread A on CPU 0 makes the call, thread B of the same process
# is on CPU 1 (the issue's table; mmugather.host.probe reproduces it live).
FACTS = {
    "munmap:1": [0, 1], "munmap:9000": [0, 1], "munmap:20000": [0, 3], "dontneed:1": [0, 1],
    "mprotect:1": [0, 1], "mprotect:20000": [0, 1], "munmap-untouched:1": [0, 0],
    "munmap:1:alone": [0, 0], "dontneed:1:alone": [0, 0], "mprotect:1:alone": [0, 0],
    "munmap:1:blocked": [0, 0], "dontneed:1:blocked": [0, 0], "mprotect:1:blocked": [0, 0],
}


def ipis(workload, arch="x86", **kw):
    m = Simulation(resolve_workload(workload), Linux618, cpus=2, arch=arch, **kw).run()
    assert m["violations"] == []
    return m["ipis_by_cpu"]


@pytest.mark.parametrize("workload", FACTS)
def test_real_kernel_shootdown_counts(workload):
    """ipis_by_cpu of the 6.18/x86 model equals what the real kernel sends."""
    assert ipis(workload) == FACTS[workload]


def test_gather_capacity_is_the_kernels_derivation():
    """include/asm-generic/tlb.h v6.18 on 64-bit: MAX_GATHER_BATCH = (PAGE_SIZE - sizeof(struct
    mmu_gather_batch {next; nr; max;})) / sizeof(void *), MAX_GATHER_BATCH_COUNT = 10000UL / MAX_GATHER_BATCH,
    MMU_GATHER_BUNDLE = 8; __tlb_remove_folio_pages_size() fills a batch to max - 1 entries. The model's
    constants are those, and the page that fills the last allowed batch forces a flush under the PTE lock:
    one page less is one flush, that page is two (9678 pages, measured on 6.18 by kernel-check)."""
    page_size, sizeof_batch, sizeof_ptr, bundle = 4096, 8 + 4 + 4, 8, 8
    batch = (page_size - sizeof_batch) // sizeof_ptr
    kernel = (bundle - 1) + (10000 // batch) * (batch - 1)
    g = Gather618
    assert (g.MMU_GATHER_BUNDLE - 1) + g.MAX_GATHER_BATCH_COUNT * (g.MAX_GATHER_BATCH - 1) == kernel
    assert ipis(f"munmap:{kernel - 1}") == [0, 1]
    assert ipis(f"munmap:{kernel}") == [0, 2]


def test_flushes_that_free_page_tables_reach_lazy_cpus_natively_and_under_kvm():
    """native_flush_tlb_multi() IPIs lazy CPUs when tables were freed; kvm_flush_tlb_multi() defers only
    the flush of a vCPU the host preempted (none by default: an idle vCPU is halted, not preempted)."""
    assert ipis("munmap-sparse:10:blocked") == [0, 1]
    assert ipis("munmap-sparse:10:blocked", arch="x86-kvm") == [0, 1]
    assert ipis("munmap:20000", arch="x86-kvm") == [0, 3]


def test_arm64_broadcasts_without_ipis():
    m = Simulation(resolve_workload("munmap:20000"), Linux618, cpus=2, arch="arm64").run()
    assert m["ipis_sent"] == 0 and m["tlb_flushes"] >= 3 and m["violations"] == []


def test_policies_run_only_on_their_arches():
    assert set(POLICIES["6.18"].arches) == {"x86", "x86-invlpgb", "x86-kvm", "arm64", "ppc64-radix"}
    assert set(POLICIES["3.0"].arches) >= {"x86"} and "arm64" not in POLICIES["3.0"].arches


def _parallel_dontneed(seed=1):
    """Two threads MADV_DONTNEED the same range 5 us apart while a third has written translations to it."""
    warm = {"op": "touch", "vma": "buf", "size": "2MiB", "write": True}
    return scenario(
        [{"name": "buf", "size": "8MiB", "populate": True}, {"name": "w", "size": "1MiB", "populate": True}],
        [{"cpu": 0, "program": [{"op": "compute", "ns": 300000}, {"op": "madvise", "vma": "buf"}, {"op": "exit"}]},
         {"cpu": 1, "program": [{"op": "compute", "ns": 305000}, {"op": "madvise", "vma": "buf"}, {"op": "exit"}]},
         {"cpu": 2, "program": [warm, {"op": "churn", "vma": "w", "gap_ns": 1000}]}],
        cpus=3, latency=False, seed=seed)


def test_nested_gathers_force_a_flush_99baac21e458():
    """The second madvise finds the PTEs already none and gathers nothing; without tlb_flush_pending it
    returns while the first has not flushed, leaving CPU 2 a stale writable entry."""
    assert run(_parallel_dontneed(), "6.18")["violations"] == []
    kinds = {v["kind"] for v in run(_parallel_dontneed(), "6.18", without_fixes=("tlb_flush_pending",))["violations"]}
    assert kinds == {"stale-tlb-after-return"}
    # Linux 3.0 had the same race (the fix came in 4.13/4.14)
    assert {v["kind"] for v in run(_parallel_dontneed(), "3.0")["violations"]} == {"stale-tlb-after-return"}


def _gup_during_munmap(hold_ns=200_000):
    """CPU 1 walks a region with gup_fast (IRQs off, hold_ns per PTE table) while CPU 0 munmaps it."""
    return scenario(
        [{"name": "a", "size": "4MiB", "populate": True}],
        [{"cpu": 0, "program": [{"op": "compute", "ns": 50_000}, {"op": "munmap", "vma": "a"}, {"op": "exit"}]},
         {"cpu": 1, "program": [{"op": "gup_fast", "vma": "a", "hold_ns": hold_ns}]}],
        cpus=2, latency=False)


@pytest.mark.parametrize("policy,arch", [("2.6.39", "x86"), ("3.0", "x86"), ("6.18", "x86"), ("6.18", "arm64")])
def test_gup_fast_never_reads_a_freed_table(policy, arch):
    """IPI-based flushes (x86) wait for the walker's IRQs-off section; RCU table freeing waits for its
    grace period (arm64 has no IPIs at all)."""
    m = run(_gup_during_munmap(), policy, arch=arch)
    assert m["violations"] == [] and m["page_tables_freed"] >= 2


class FreeTablesAtOnce(Linux618):
    """Broken: page tables go back to the allocator when unhooked, without waiting for anything."""
    name = "free-tables-at-once"

    def tlb_remove_table(self, c, tlb, pfn):
        self.alloc.free_page(c, pfn)
        yield 0


@pytest.mark.parametrize("arch", ["x86", "arm64"])
def test_freeing_tables_without_waiting_is_caught(arch):
    kinds = {v["kind"] for v in run(_gup_during_munmap(), FreeTablesAtOnce, arch=arch)["violations"]}
    assert "page-table-use-after-free" in kinds


def test_rcu_frees_tables_only_after_every_cpu_passed_a_quiescent_state():
    """On arm64 no IPI waits for the walker: munmap's page tables, RCU-freed, stay allocated until the
    walker's 1 ms IRQs-off section (a sched-RCU read side) has ended, though munmap finished long before."""
    sim = Simulation(_gup_during_munmap(hold_ns=1_000_000), Linux618, arch="arm64")
    freed_at, walk_end = [], []
    inv, alloc = sim.invariants, sim.alloc
    exit_, on_free, on_free_each = inv.walker_exit, alloc.on_free, alloc.on_free_each_array

    def walker_exit(c, pfn):
        walk_end.append(c.clock)
        exit_(c, pfn)

    def on_free_table(c, pfn, kind):
        if kind == PGTABLE and c is not None:
            freed_at.append(c.clock)
        on_free(c, pfn, kind)

    def on_free_tables(c, pfns, kinds):                 # the fast path's frees of a table batch at once
        if c is not None:
            freed_at.extend([c.clock] * int((kinds == PGTABLE).sum()))
        on_free_each(c, pfns, kinds)
    inv.walker_exit, alloc.on_free, alloc.on_free_each_array = walker_exit, on_free_table, on_free_tables
    m = sim.run()
    assert m["violations"] == [] and len(freed_at) >= 2
    assert walk_end[0] >= 1_000_000 and min(freed_at) >= walk_end[0]
