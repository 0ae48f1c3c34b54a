"""The rest of the 2011 series and its descendants: sleeping locks, notifiers, truncate, mremap's flush."""
import pytest
from conftest import run

from mmugather.mm.mm_types import MM_FILEPAGES
from mmugather.policies import POLICIES as ALL
from mmugather.sim.simulation import Simulation
from mmugather.workloads.scenario import parse_scenario

POLICIES = ["2.6.39", "3.0", "6.18"]


def _notifier(policy_sleep_ns=20_000):
    return parse_scenario({"seed": 1, "machine": {"cpus": 2, "latency_task": False},
                           "process": [{"name": "vm", "notifier_sleep_ns": policy_sleep_ns,
                                        "vma": [{"name": "a", "size": "1MiB", "populate": True}],
                                        "thread": [{"cpu": 0, "program": [{"op": "munmap", "vma": "a"},
                                                                          {"op": "exit"}]}]}]}, "t")


def test_sleeping_mmu_notifier_is_a_bug_in_2_6_39_only():
    """invalidate_range_start() runs inside the gather: per-CPU with preemption off in 2.6.39, on the
    stack and preemptible from 3.0 on, which is what XPMEM and KVM needed."""
    kinds = {v["kind"] for v in run(_notifier(), "2.6.39")["violations"]}
    assert kinds == {"sleep-in-atomic"}
    assert run(_notifier(), "3.0")["violations"] == []
    assert run(_notifier(), "6.18")["violations"] == []


def _shared_file_truncate(seed=1):
    """Three processes map one file shared and keep reading it on their CPUs; a fourth truncates it."""
    procs = [{"name": f"reader{k}", "vma": [{"name": "f", "size": "4MiB", "kind": "file", "file": "F",
                                              "shared": True, "writable": False, "populate": True}],
              "thread": [{"cpu": k, "program": [{"op": "touch", "vma": "f", "size": "256KiB", "write": False},
                                                {"op": "churn", "vma": "f", "gap_ns": 700}]}]}
             for k in range(3)]
    procs.append({"name": "truncater", "vma": [{"name": "w", "size": "64KiB", "populate": True}],
                  "thread": [{"cpu": 3, "program": [{"op": "compute", "ns": 200_000},
                                                    {"op": "truncate", "file": "F", "size": "1MiB"},
                                                    {"op": "compute", "ns": 300_000}, {"op": "exit"}]}]})
    return parse_scenario({"seed": seed, "machine": {"cpus": 4, "preempt": "full"}, "files": [{"name": "F"}],
                           "process": procs}, "t")


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_truncate_of_a_file_mapped_by_several_processes_leaves_no_stale_entry(policy, seed):
    assert run(_shared_file_truncate(seed), policy)["violations"] == []


@pytest.mark.parametrize("policy", POLICIES)
def test_truncate_unmaps_the_pages_beyond_the_new_size_in_every_process(policy):
    procs = [{"name": f"p{k}", "vma": [{"name": "f", "size": "4MiB", "kind": "file", "file": "F", "shared": True,
                                         "populate": True}],
              "thread": [{"cpu": k, "program": [{"op": "sleep", "ns": 10**9}]}]} for k in range(2)]
    procs.append({"name": "t", "thread": [{"cpu": 2, "program": [{"op": "truncate", "file": "F", "size": "1MiB"},
                                                                 {"op": "halt"}]}]})
    sc = parse_scenario({"machine": {"cpus": 3, "latency_task": False}, "files": [{"name": "F"}],
                         "process": procs}, "t")
    sim = Simulation(sc, ALL[policy])
    assert sim.run()["violations"] == []
    assert [mm.rss[MM_FILEPAGES] for mm in sim.mms[:2]] == [256, 256]
    assert len(sim.files["F"].page_cache) == 256


def test_2_6_39_breaks_the_i_mmap_lock_when_contended():
    """unmap_mapping_range_vma() drops the spinlock when the readers' faults wait for it (restart_addr)."""
    assert run(_shared_file_truncate(), "2.6.39")["i_mmap_lock_breaks"] > 0
    assert run(_shared_file_truncate(), "3.0")["i_mmap_lock_breaks"] == 0


def _mremap_vs_truncate(delay=22_000):
    """CPU 0 moves most of a shared file mapping with mremap (from 8 KiB in, so PTE by PTE: the first
    move_ptes() takes the 16 pages populated in the first PTE table, the second one page); CPU 1 has read
    translations of their old addresses; CPU 2 truncates the file, getting the i_mmap lock between the
    two move_ptes() calls (a window of a few microseconds: `explore` finds it without the timing)."""
    return parse_scenario({"seed": 1, "machine": {"cpus": 3, "latency_task": False}, "files": [{"name": "F"}],
                           "process": [{"name": "app", "vma": [
                               {"name": "f", "size": "4MiB", "kind": "file", "file": "F", "shared": True,
                                "populate": [[8192, 65536], [2105344, 4096]]},
                               {"name": "d", "size": "4MiB", "writable": False},
                               {"name": "w", "size": "64KiB", "populate": True}],
                               "thread": [
                                   {"cpu": 0, "program": [{"op": "compute", "ns": 20_000},
                                                          {"op": "mremap", "vma": "f", "offset": 8192,
                                                           "to": "d"}, {"op": "exit"}]},
                                   {"cpu": 1, "program": [{"op": "touch", "vma": "f", "offset": 8192,
                                                           "size": "64KiB", "write": False},
                                                          {"op": "churn", "vma": "w", "gap_ns": 500}]},
                                   {"cpu": 2, "program": [{"op": "compute", "ns": delay},
                                                          {"op": "truncate", "file": "F", "size": 0},
                                                          {"op": "exit"}]}]}]}, "t")


def test_mremap_flushing_after_the_locks_drop_is_cve_2018_18281():
    """Without eb66ae030829 move_ptes() drops the PTE and i_mmap locks before flushing the old range:
    truncate zaps the moved PTEs (flushing only the new addresses) and frees the pages while CPU 1 still
    maps them at the old ones. v6.18 flushes before unlocking; v2.6.39/v3.0 flushed every PTE."""
    buggy = run(_mremap_vs_truncate(), "6.18", without_fixes=("mremap_flush",))
    assert {v["kind"] for v in buggy["violations"]} == {"stale-tlb-use-after-free"}
    for policy in POLICIES:
        assert run(_mremap_vs_truncate(), policy)["violations"] == []


def _gup_while_munmap_with_company(hold_ns=200_000):
    """CPU 1 walks with gup_fast while CPU 0 munmaps; CPU 2 keeps a third thread of the mm alive."""
    return parse_scenario({"seed": 1, "machine": {"cpus": 3, "latency_task": False},
                           "process": [{"name": "app", "vma": [{"name": "a", "size": "4MiB", "populate": True},
                                                               {"name": "w", "size": "64KiB", "populate": True}],
                                        "thread": [
                                            {"cpu": 0, "program": [{"op": "compute", "ns": 50_000},
                                                                   {"op": "munmap", "vma": "a"}, {"op": "exit"}]},
                                            {"cpu": 1, "program": [{"op": "gup_fast", "vma": "a", "hold_ns": hold_ns},
                                                                   {"op": "churn", "vma": "w"}]},
                                            {"cpu": 2, "program": [{"op": "churn", "vma": "w"}]}]}]}, "t")


def test_3_0_on_ppc64_frees_page_tables_after_rcu_and_falls_back_to_an_ipi():
    """HAVE_RCU_TABLE_FREE (267239116987): tables go to call_rcu_sched(); without a batch page,
    tlb_remove_table_one() IPIs every other CPU before freeing. No flush IPIs otherwise (tlbie)."""
    ok = run(_gup_while_munmap_with_company(), "3.0", arch="ppc64")
    assert ok["violations"] == [] and ok["ipis_sent"] == 0 and ok["rcu_callbacks"] >= 1
    starved = run(_gup_while_munmap_with_company(), "3.0", arch="ppc64", fail_nowait=1.0)
    assert starved["violations"] == [] and starved["rcu_callbacks"] == 0
    assert starved["ipis_sent"] > 0 and starved["ipis_sent"] % 2 == 0      # each to both other CPUs


class Ppc64FreeWithoutGrace(ALL["3.0"]):
    """Broken: the table batch is freed at once instead of after a grace period."""
    name = "3.0-no-grace"

    def tlb_table_flush(self, c, tlb):
        batch = self._table_batches.pop(tlb, None)
        for t in batch.tables if batch else ():
            self.alloc.free_page(c, t)
        if batch:
            self.alloc.free_page(c, batch.pfn)


def test_rcu_table_free_without_the_grace_period_is_caught_on_ppc64():
    kinds = {v["kind"] for v in run(_gup_while_munmap_with_company(), Ppc64FreeWithoutGrace, arch="ppc64")["violations"]}
    assert "page-table-use-after-free" in kinds


@pytest.mark.parametrize("policy", POLICIES)
def test_fork_write_protects_and_flushes_the_parent(policy):
    """dup_mmap() write-protects the parent's private pages and flushes its TLB: a sibling thread's
    writable translation is shot down; parent and child then break COW on write, each on its own page."""
    sc = parse_scenario({"seed": 1, "machine": {"cpus": 3, "latency_task": False}, "process": [{"name": "p",
        "vma": [{"name": "a", "size": "64KiB", "populate": True}],
        "thread": [{"cpu": 0, "program": [{"op": "compute", "ns": 20_000},
                                          {"op": "fork", "cpu": 2, "program": [
                                              {"op": "touch", "vma": "a", "write": True}]},
                                          {"op": "touch", "vma": "a", "write": True}, {"op": "exit"}]},
                   {"cpu": 1, "program": [{"op": "touch", "vma": "a", "write": True},
                                          {"op": "sleep", "ns": 200_000}, {"op": "exit"}]}]}]}, "t")
    m = run(sc, policy)
    assert m["violations"] == []
    assert m["ipis_by_cpu"][1] >= 1              # the fork's flush_tlb_mm() reached the sibling
    assert m["pages_freed"] == 16 + 16           # the 16 originals and one copy of each, all freed at exit
