"""MADV_COLLAPSE of a file THP mapped by PTEs (mm/khugepaged.py, mm/khugepaged.c v6.2): the PTE table is
retracted and freed with pte_free(), after tlb_remove_table_sync_one() (2ba99c5e0881)."""
import pytest

from mmugather.errors import InputError
from mmugather.mm.page_alloc import FILE, PGTABLE
from mmugather.policies import get_policy
from mmugather.sim.simulation import Simulation
from mmugather.workloads.scenario import parse_scenario

BASE = 0x10000000                                       # 2 MiB-aligned
COLLAPSE = {"op": "madvise", "vma": "f", "advice": "collapse"}


def _sc(program, vma=None, cpus=2, others=()):
    vma = vma or {"name": "f", "size": "2MiB", "kind": "file", "file": "F", "shared": True, "start": BASE,
                  "populate": [(0, 16384)]}
    threads = [{"cpu": 0, "program": program}] + [{"cpu": c, "program": p} for c, p in others]
    return parse_scenario({"name": "t", "machine": {"cpus": cpus, "policy": "6.18", "latency_task": False},
                           "files": [{"name": "F"}],
                           "process": [{"name": "p", "vma": [vma], "thread": threads}]}, "test")


def _run(sc, policy="6.18", **kw):
    sim = Simulation(sc, get_policy(policy), **kw)
    return sim, sim.run()


def test_collapse_retracts_the_pte_table_and_the_pages_refault():
    """The block's table leaves the page tables and is freed; the four mapped page-cache pages lose their
    mapping (mapcount, reference, file RSS) but stay cached; touching them again faults them back in."""
    sc = _sc([COLLAPSE, {"op": "halt"}])
    sim, m = _run(sc)
    mm = sim.processes[0].mm
    assert BASE >> 21 not in mm.pte_tables and mm.nr_ptes == 0 and mm.rss == [0, 0]
    pfns = [sim.files["F"].page_cache[i] for i in range(4)]
    assert all(sim.alloc.kind[p] == FILE and sim.alloc.mapcount[p] == 0 and sim.alloc.refcount[p] == 1
               for p in pfns)
    assert m["violations"] == []
    _, m2 = _run(_sc([COLLAPSE, {"op": "touch", "vma": "f", "size": "16KiB"}]))
    assert m2["page_faults"] == 4 and m2["violations"] == []


def test_collapse_frees_the_table_at_once_not_after_a_grace_period():
    """pte_free() returns the table page to the allocator before madvise returns (no RCU, no gather)."""
    sim = Simulation(_sc([COLLAPSE, {"op": "halt"}]), get_policy("6.18"))
    tables_before = sim.alloc.nr_used[PGTABLE]
    sim.engine.run()                                      # no rcu_barrier(): only what the path freed itself
    assert sim.alloc.nr_used[PGTABLE] == tables_before - 1


def test_tlb_remove_table_sync_one_ipis_every_other_cpu_before_the_free():
    """With the fix the collapse IPIs the three other CPUs of an arm64 machine (whose TLB flush sends none);
    without it (--without-fix collapse_sync) no IPI is sent at all."""
    sc = _sc([COLLAPSE, {"op": "halt"}], cpus=4)
    _, fixed = _run(sc, arch="arm64")
    _, buggy = _run(sc, arch="arm64", without_fixes=("collapse_sync",))
    assert fixed["ipis_sent"] == 3 and buggy["ipis_sent"] == 0


def test_a_partial_or_misaligned_block_is_not_collapsed():
    """Only whole 2 MiB-aligned blocks inside the range collapse (madvise_collapse()'s hstart/hend)."""
    vma = {"name": "f", "size": "4MiB", "kind": "file", "file": "F", "shared": True, "start": BASE + 0x100000,
           "populate": [(0, 16384)]}
    sim, m = _run(_sc([COLLAPSE, {"op": "halt"}], vma=vma))
    assert (BASE + 0x100000) >> 21 in sim.processes[0].mm.pte_tables and sim.processes[0].mm.rss[0] == 4


def test_a_pte_mapping_a_cow_copy_aborts_the_collapse():
    """Step 1 finds a PTE that does not map the THP's subpage (a private COW copy): the table stays."""
    vma = {"name": "f", "size": "2MiB", "kind": "file", "file": "F", "start": BASE, "populate": [(0, 16384)]}
    sim, m = _run(_sc([{"op": "touch", "vma": "f", "size": "4KiB", "write": True}, COLLAPSE, {"op": "halt"}],
                      vma=vma))
    assert BASE >> 21 in sim.processes[0].mm.pte_tables and m["violations"] == []


def test_madv_collapse_is_einval_before_v6_1():
    """3.0 has no MADV_COLLAPSE: the call does nothing."""
    sim, m = _run(_sc([COLLAPSE, {"op": "halt"}]), policy="3.0")
    assert BASE >> 21 in sim.processes[0].mm.pte_tables and m["violations"] == []


def test_collapse_of_anonymous_memory_is_refused():
    with pytest.raises(InputError, match="MADV_COLLAPSE is modelled for file VMAs only"):
        _sc([COLLAPSE], vma={"name": "f", "size": "2MiB", "start": BASE})
