"""Research designs as plugins (docs/designs.md): LATR's lazy munmap shootdowns and ABIS's access-tracked
shootdown targets, against 6.18, in the free-running machine and under the explorer."""
from pathlib import Path

from conftest import scenario

from mmugather.explore.session import run_search
from mmugather.explore.target import KernelTarget
from mmugather.policies import Linux618, get_policy
from mmugather.sim.simulation import Simulation
from mmugather.sim.tracing import TIDS_PER_RUN, attach_trace

PLUGINS = Path(__file__).resolve().parent.parent / "examples" / "plugins"
LATR = get_policy(f"{PLUGINS / 'latr.py'}:Latr")
ABIS = get_policy(f"{PLUGINS / 'abis.py'}:Abis")


def munmap_race(other_reads_region: bool, cpus: int = 2, size: str = "8KiB"):
    """CPU 0 munmaps region `a`; the other CPUs run the same mm, reading `a` first if `other_reads_region`
    (so their TLBs map it), then their own memory `w`."""
    first = [{"op": "touch", "vma": "a", "write": False}] if other_reads_region else []
    threads = [{"cpu": 0, "program": [{"op": "touch", "vma": "a", "write": False}, {"op": "munmap", "vma": "a"},
                                      {"op": "exit"}]}]
    threads += [{"cpu": i, "program": first + [{"op": "touch", "vma": "w", "write": False}]} for i in range(1, cpus)]
    return scenario([{"name": "a", "size": size, "populate": True}, {"name": "w", "size": "8KiB", "populate": True}],
                    threads, cpus=cpus, latency=False)


def churn_while_munmap(cpus: int = 4):
    """CPU 0 munmaps 4 MiB while the other CPUs keep touching their own memory (the mm loaded on all)."""
    threads = [{"cpu": 0, "program": [{"op": "compute", "ns": 20000}, {"op": "munmap", "vma": "a"},
                                      {"op": "exit"}]}]
    threads += [{"cpu": i, "program": [{"op": "churn", "vma": "w", "gap_ns": 1500}]} for i in range(1, cpus)]
    return scenario([{"name": "a", "size": "4MiB", "populate": True}, {"name": "w", "size": "1MiB", "populate": True}],
                    threads, cpus=cpus, latency=False)


def test_latr_munmap_sends_no_ipis_and_reclaims_everything_once_every_cpu_passed():
    """The munmap's shootdowns become saved states handled at context switches and ticks: fewer IPIs than
    6.18, every page still freed by the end, no violation."""
    sc = churn_while_munmap()
    base = Simulation(sc, Linux618).run()
    sim = Simulation(sc, LATR)
    lazy = sim.run()
    assert base["violations"] == [] and lazy["violations"] == []
    assert base["ipis_sent"] >= 3 and lazy["ipis_sent"] < base["ipis_sent"]
    assert sim.arch.lazy_saved > 0 and sim.arch.lazy_invalidations >= sim.arch.lazy_saved
    assert lazy["pages_freed"] == base["pages_freed"]


def test_latr_without_its_reuse_delay_frees_pages_another_tlb_still_maps():
    """Without the lazy free the explorer finds a real use-after-free through CPU 1's stale TLB; with it
    the frees wait, and what it finds instead is the lazy window itself: munmap returns while CPU 1 still
    maps the range (LATR's design, docs/designs.md)."""
    sc = munmap_race(other_reads_region=True)
    no_delay = run_search(KernelTarget(sc, LATR, without_fixes=("latr_lazy_free",)), max_preemptions=1)
    assert no_delay["violation"]["kind"] == "stale-tlb-use-after-free"
    assert "CPU 1's TLB still maps" in no_delay["violation"]["detail"]
    delayed = run_search(KernelTarget(sc, LATR), max_preemptions=1)
    assert delayed["violation"]["kind"] == "stale-tlb-after-return"
    assert "CPU 1's TLB still maps" in delayed["violation"]["detail"]


def test_latr_is_clean_under_explore_when_no_other_cpu_caches_the_range():
    """Other CPUs run the mm (so the munmap's shootdowns are lazy and its frees wait for them) but never
    cached the range: every schedule with one preemption is clean, leaks included."""
    report = run_search(KernelTarget(munmap_race(other_reads_region=False, cpus=3), LATR), max_preemptions=1)
    assert report["violation"] is None and report["covered"]


def test_abis_ipis_only_the_cpus_whose_access_bits_were_set():
    """CPU 1 read the region, CPU 2 only its own memory: the munmap's shootdown IPIs both under 6.18, only
    CPU 1 under ABIS (the machine halts after the munmap, before exit's whole-mm flush)."""
    threads = [{"cpu": 0, "program": [{"op": "compute", "ns": 20000}, {"op": "munmap", "vma": "a"},
                                      {"op": "halt"}]},
               {"cpu": 1, "program": [{"op": "touch", "vma": "a", "size": "8KiB", "write": False},
                                      {"op": "churn", "vma": "w", "gap_ns": 1500}]},
               {"cpu": 2, "program": [{"op": "churn", "vma": "w", "gap_ns": 1500}]}]
    sc = scenario([{"name": "a", "size": "2MiB", "populate": True}, {"name": "w", "size": "8KiB", "populate": True}],
                  threads, cpus=3, latency=False)
    base = Simulation(sc, Linux618).run()
    sim = Simulation(sc, ABIS)
    abis = sim.run()
    assert base["violations"] == [] and abis["violations"] == []
    assert base["ipis_by_cpu"][1] > 0 and base["ipis_by_cpu"][2] > 0
    assert abis["ipis_by_cpu"][1] > 0 and abis["ipis_by_cpu"][2] == 0
    assert abis["ipis_sent"] < base["ipis_sent"] and sim.arch.abis_ipis_avoided > 0
    assert abis["design_events"] == {"ipi_avoided": sim.arch.abis_ipis_avoided}


def test_abis_is_clean_under_explore_on_a_munmap_race():
    """CPU 1's TLB maps the range being unmapped: ABIS must still shoot it down in every schedule."""
    report = run_search(KernelTarget(munmap_race(other_reads_region=True, cpus=3), ABIS), max_preemptions=1)
    assert report["violation"] is None and report["covered"]


def test_abis_watches_the_tlb_beside_the_simulations_own_observer():
    """Tlb.watch fans out: an observer handed to the Simulation (the explorer's footprint) and ABIS's access
    tracking both see every fill, in that order, and ABIS's records follow the fills and full flushes."""
    seen = []

    class Log:
        def tlb_op(self, name, c, args):
            if name == "fill":
                seen.append((name, c.id, args[0] in c.per_cpu.get("abis_pages", ())))
    sim = Simulation(munmap_race(other_reads_region=True), ABIS, tlb_observer=Log())
    assert sim.tlb.observers[1] is sim.arch
    c1 = sim.engine.cpus[1]
    sim.tlb.fill(c1, 0x1234, 7 << 12)
    assert seen == [("fill", 1, False)] and 0x1234 in c1.per_cpu["abis_pages"]
    sim.tlb.fill(c1, 0x1234, 7 << 12)
    assert seen[-1] == ("fill", 1, True)
    sim.tlb.flush_all(c1)
    assert "abis_pages" not in c1.per_cpu


def test_lazy_shootdowns_and_invalidations_are_counted_and_traced_on_their_cpus():
    """Engine.note: each LATR saved shootdown and each CPU's lazy invalidation of it is counted in the
    metrics' design_events and is an instant on that CPU's trace track; 6.18 notes none (no such key)."""
    sc = churn_while_munmap()
    assert "design_events" not in Simulation(sc, Linux618).run()
    sim = Simulation(sc, LATR)
    trace = attach_trace(sim)
    m = sim.run()
    events = m["design_events"]
    assert events["lazy_shootdown"] == sim.arch.lazy_saved > 0
    assert events["lazy_invalidation"] == sim.arch.lazy_invalidations >= events["lazy_shootdown"]
    instants = [e for e in trace.to_dict()["traceEvents"] if e["ph"] == "i"]
    lazy = [e for e in instants if e["name"] == "lazy_invalidation"]
    assert len(lazy) == events["lazy_invalidation"]
    cpu_of = {e["tid"] - trace.pid * TIDS_PER_RUN for e in lazy}
    assert cpu_of == {1, 2, 3} and all(e["args"]["saved_by_cpu"] == 0 for e in lazy)
    saved = [e for e in instants if e["name"] == "lazy_shootdown"]
    assert saved and {e["tid"] - trace.pid * TIDS_PER_RUN for e in saved} == {0}
