"""The seed's claims (d16dfc550f53 "mm: mmu_gather rework"), as properties that a wrong model fails."""
from helpers import munmap_while_others_run, run, scenario


def test_voluntary_3_0_never_flushes_or_frees_under_pte_lock():
    """With voluntary preemption, 3.0 does the TLB flush and page frees outside the PTE lock."""
    m = run(munmap_while_others_run(), "3.0")
    assert m["pages_freed"] >= 1024
    assert m["flushes_under_pte_lock"] == 0
    assert m["frees_under_pte_lock"] == 0


def test_voluntary_2_6_39_flushes_and_frees_under_pte_lock():
    """2.6.39's tlb_remove_page() flushes from inside zap_pte_range once FREE_PTE_NR (506) pages are batched."""
    m = run(munmap_while_others_run(), "2.6.39")
    assert m["flushes_under_pte_lock"] >= 2
    assert m["frees_under_pte_lock"] >= 2 * 506


def test_3_0_holds_pte_lock_for_less_time():
    old = run(munmap_while_others_run(), "2.6.39")
    new = run(munmap_while_others_run(), "3.0")
    assert new["pte_lock_hold_ns"]["max"] < old["pte_lock_hold_ns"]["max"]


def test_full_preemption_2_6_39_sends_ten_times_the_ipis():
    """ZAP_BLOCK_SIZE is 8 pages under CONFIG_PREEMPT: 2.6.39 finishes (and flushes) the gather every 8 pages."""
    sc = munmap_while_others_run(preempt="full")
    old, new = run(sc, "2.6.39"), run(sc, "3.0")
    assert new["ipis_sent"] > 0
    assert old["ipis_sent"] >= 10 * new["ipis_sent"]


def test_every_nowait_failing_3_0_completes_with_8_page_flushes():
    """With no batch page to be had, 3.0 makes progress with the 8-entry on-stack bundle."""
    m = run(munmap_while_others_run(fail_nowait=1.0), "3.0")
    assert m["pages_freed"] >= 1024
    assert m["batch_alloc_attempts"] > 0 and m["batch_alloc_failures"] == m["batch_alloc_attempts"]
    assert m["pages_per_flush"]["max"] <= 8
    assert m["tlb_flushes"] >= 1024 // 8
    assert m["violations"] == []


def test_one_cpu_3_0_uses_fast_mode():
    """num_possible_cpus() == 1: pages are freed at once and no batch page is ever allocated."""
    sc = scenario([{"name": "a", "size": "4MiB", "populate": True}],
                  [{"cpu": 0, "program": [{"op": "munmap", "vma": "a"}, {"op": "exit"}]}], cpus=1)
    m = run(sc, "3.0")
    assert m["pages_freed"] == 1024
    assert m["batch_alloc_attempts"] == 0
    assert m["pages_per_flush"]["max"] == 0
    m2 = run(munmap_while_others_run(cpus=2), "3.0")
    assert m2["batch_alloc_attempts"] > 0


def test_3_0_flush_counts_are_exact():
    """munmap of 1024 pages: 3.0 flushes once (batches chain without limit in v3.0); 2.6.39 with full
    preemption flushes after every 8-page block plus once for the page tables."""
    sc = scenario([{"name": "a", "size": "4MiB", "populate": True}],
                  [{"cpu": 0, "program": [{"op": "munmap", "vma": "a"}, {"op": "exit"}]},
                   {"cpu": 1, "program": [{"op": "compute", "ns": 10}]}], cpus=2, latency=False)
    m = run(sc, "3.0")
    assert m["tlb_flushes"] == 1
    # 1024 pages, 2 PTE tables, and (no neighbouring VMA) the PMD and PUD tables above them
    assert m["pages_per_flush"]["max"] == 1024 + 2 + 1 + 1
    sc_full = scenario([{"name": "a", "size": "4MiB", "populate": True}],
                       [{"cpu": 0, "program": [{"op": "munmap", "vma": "a"}, {"op": "exit"}]}], cpus=2,
                       preempt="full", latency=False)
    m = run(sc_full, "2.6.39")
    # munmap: 128 blocks of 8 pages, then free_pgtables + finish; exit_mmap of the now empty mm: nothing.
    assert m["tlb_flushes"] == 128 + 1
