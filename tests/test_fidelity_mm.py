"""Issue 24 items 4, 5, 6 and 9: zap_pte_range()'s need_resched() break and PT_RECLAIM across retries
(6.18), 3.0's RCU table batch, 2.6.39's lock break only under CONFIG_PREEMPT, and the gathers' sizes."""
from helpers import run, scenario


def _dontneed(size, preempt="none", latency=False):
    """One thread MADV_DONTNEEDs a populated, PMD-aligned VMA of `size`."""
    return scenario([{"name": "buf", "size": size, "populate": True}],
                    [{"cpu": 0, "program": [{"op": "madvise", "vma": "buf"}, {"op": "exit"}]}],
                    cpus=2, preempt=preempt, latency=latency)


def test_618_table_emptied_across_a_forced_break_is_reclaimed():
    """mm/memory.c v6.18 zap_pte_range(): the gather fills (7 + 19 * 509 = 9678 pages) at page 462 of
    the 19th table of a 40 MiB MADV_DONTNEED; the forced flush retries inside zap_pte_range() keeping
    `start` and `can_reclaim_pt`, so try_to_free_pte() still frees that table: all 20 go."""
    m = run(_dontneed("40MiB"), "6.18")
    assert m["violations"] == []
    assert m["page_tables_reclaimed"] == 20


def test_618_need_resched_drops_the_pte_lock_mid_table():
    """Since 6.14 the PTE loop breaks when need_resched(): under preempt=full a latency task woken while
    a 2 MiB table is being zapped waits for one PTE step and the unlock, not for the rest of the table;
    the broken table is still reclaimed (try_to_free_pte())."""
    whole_table = 512 * 100                              # well under one table's PTE-lock hold (~61 us)
    m = run(_dontneed("8MiB", preempt="full", latency=True), "6.18")
    assert m["violations"] == [] and m["page_tables_reclaimed"] == 4
    assert 0 < m["sched_latency_ns"]["max"] < whole_table // 10


def _sparse(n, policy, arch):
    """munmap-sparse:n on two CPUs (one page per 2 MiB: n PTE tables freed)."""
    from mmugather.sim.simulation import Simulation
    from mmugather.workloads.builtin import resolve_workload
    return Simulation(resolve_workload(f"munmap-sparse:{n}"), policy, cpus=2, arch=arch).run()


def test_30_full_rcu_table_batch_is_handed_to_rcu_without_a_gather_flush():
    """mm/memory.c v3.0 tlb_remove_table(): the 509th table fills the mmu_table_batch and only
    tlb_table_flush() runs (call_rcu_sched() of the batch), not tlb_flush_mmu(): freeing 600 tables
    takes as many TLB flushes as freeing 100 (the final one), and two RCU batches are queued."""
    from mmugather.policies import POLICIES
    few, many = (_sparse(n, POLICIES["3.0"], "ppc64") for n in (100, 600))
    assert few["violations"] == [] and many["violations"] == []
    assert many["tlb_flushes"] == few["tlb_flushes"]
    assert many["rcu_callbacks"] == few["rcu_callbacks"] + 1


def _contended_truncate(preempt):
    """Three processes keep reading a shared file mapping (their faults wait for the i_mmap lock) while a
    fourth truncates it; no latency task, so nothing asks for a reschedule."""
    from mmugather.workloads.scenario import parse_scenario
    procs = [{"name": f"reader{k}", "vma": [{"name": "f", "size": "4MiB", "kind": "file", "file": "F",
                                              "shared": True, "writable": False, "populate": True}],
              "thread": [{"cpu": k, "program": [{"op": "touch", "vma": "f", "size": "256KiB", "write": False},
                                                {"op": "churn", "vma": "f", "gap_ns": 700}]}]}
             for k in range(3)]
    procs.append({"name": "truncater", "thread": [{"cpu": 3, "program": [
        {"op": "compute", "ns": 200_000}, {"op": "truncate", "file": "F", "size": "1MiB"}, {"op": "exit"}]}]})
    return parse_scenario({"seed": 1, "machine": {"cpus": 4, "preempt": preempt, "latency_task": False},
                           "files": [{"name": "F"}], "process": procs}, "t")


def test_2639_i_mmap_lock_break_for_waiters_only_under_config_preempt():
    """include/linux/sched.h v2.6.39 spin_needbreak() is spin_is_contended() only with CONFIG_PREEMPT, 0
    otherwise: unmap_mapping_range_vma() (mm/memory.c) drops the i_mmap_lock for the waiting readers
    under preempt=full, never under none or voluntary."""
    breaks = {p: run(_contended_truncate(p), "2.6.39") for p in ("none", "voluntary", "full")}
    assert all(m["violations"] == [] for m in breaks.values())
    assert breaks["full"]["i_mmap_lock_breaks"] > 0
    assert breaks["none"]["i_mmap_lock_breaks"] == breaks["voluntary"]["i_mmap_lock_breaks"] == 0


def _munmap(pages, policy, arch="x86"):
    """munmap:pages step by step on two CPUs, recording the size of every release_pages() chunk."""
    from mmugather.policies import POLICIES
    from mmugather.sim.simulation import Simulation
    from mmugather.workloads.builtin import resolve_workload
    sim = Simulation(resolve_workload(f"munmap:{pages}"), POLICIES[policy], cpus=2, arch=arch, fast=False)
    chunks, release = [], sim.alloc.release_pages
    sim.alloc.release_pages = lambda c, pfns: (chunks.append(len(pfns)), release(c, pfns))[1]
    m = sim.run()
    assert m["violations"] == []
    return m, chunks


def test_sizeof_struct_mmu_gather():
    """struct mmu_gather on x86-64: 104 bytes in 3.0 (include/asm-generic/tlb.h: fullmm is an unsigned int
    of its own after the need_flush/fast_mode bitfields), 112 with ppc64's table batch pointer; 128 in 6.18
    (no page_size field without CONFIG_MMU_GATHER_PAGE_SIZE). munmap of one page uses no batch page."""
    assert _munmap(1, "3.0")[0]["gather_memory_bytes"] == 104
    assert _munmap(1, "3.0", "ppc64")[0]["gather_memory_bytes"] == 112
    assert _munmap(1, "6.18")[0]["gather_memory_bytes"] == 128


def test_pagevec_size_is_the_kernels():
    """free_pages_and_swap_cache() (mm/swap_state.c) frees PAGEVEC_SIZE pages at a time: 14 in 2.6.39 and
    3.0, 31 in 6.x (include/linux/pagevec.h: "31 pointers + header align the folio_batch structure")."""
    assert max(_munmap(100, "2.6.39")[1]) == 14
    assert max(_munmap(100, "3.0")[1]) == 14
    assert max(_munmap(100, "6.18")[1]) == 31


def _zero_page(program, cpus=1, threads=()):
    """One thread runs `program` on a 64-page anonymous VMA that nothing populated (and `threads` others)."""
    return scenario([{"name": "a", "size": "256KiB"}], [{"cpu": 0, "program": program}, *threads], cpus=cpus,
                    latency=False)


def test_anonymous_read_faults_map_the_zero_page_and_munmap_frees_nothing():
    """mm/memory.c do_anonymous_page() "Use the zero-page for reads" (v2.6.32 on): 64 read faults allocate
    no page (no alloc or zero cost); the zap clears the 64 special PTEs without a free (vm_normal_page()
    is NULL). The same pass as writes allocates, zeroes and frees 64 pages."""
    read = {"op": "touch", "vma": "a", "write": False}
    for policy in ("2.6.39", "3.0", "6.18"):
        r = run(_zero_page([read, {"op": "munmap", "vma": "a"}, {"op": "exit"}]), policy)
        w = run(_zero_page([{**read, "write": True}, {"op": "munmap", "vma": "a"}, {"op": "exit"}]), policy)
        assert r["violations"] == [] and w["violations"] == [], policy
        assert r["page_faults"] == w["page_faults"] == 64, policy
        assert r["pages_freed"] == 0 and r["pages_unmapped"] == 0 and w["pages_freed"] == 64, policy


def test_a_write_after_a_read_copies_the_zero_page_and_flushes_the_reader():
    """do_wp_page() -> wp_page_copy() of the zero page (6.18): a fresh zeroed page replaces the special PTE
    with ptep_clear_flush(), so a second thread of the process that read the page first, running on CPU 1,
    takes one shootdown per page; no old page is freed and the new one is the process's own (RSS)."""
    read, write = {"op": "touch", "vma": "a", "write": False}, {"op": "touch", "vma": "a", "write": True}
    reader = {"cpu": 1, "program": [read, {"op": "compute", "ns": 5_000_000}, {"op": "exit"}]}
    m = run(_zero_page([{"op": "compute", "ns": 1_000_000}, write, {"op": "exit"}], cpus=2, threads=[reader]),
            "6.18")
    assert m["violations"] == []
    assert m["ipis_by_cpu"][1] == 64 and m["page_faults"] == 128 and m["pages_freed"] == 64
