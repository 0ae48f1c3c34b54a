"""--arch x86-invlpgb (arch/x86_invlpgb.py): AMD broadcast TLB invalidation of Linux 6.15+. Global ASIDs for mms
running on more than 3 CPUs, INVLPGB + TLBSYNC instead of IPIs, the IPIs of the ASID transition, and why page
tables must then go through RCU: no IPI waits for GUP-fast's IRQs-off walk any more."""
from __future__ import annotations

import json

import pytest
from helpers import run, scenario

from mmugather import api
from mmugather.explore.session import run_search
from mmugather.explore.target import KernelTarget
from mmugather.policies import Linux618
from mmugather.sim.simulation import Simulation
from mmugather.sim.tracing import attach_trace
from mmugather.workloads.builtin import resolve_workload


def madvise_loop(cpus: int, rounds: int = 6):
    """CPU 0 dirties and MADV_DONTNEEDs one page `rounds` times (one flush each) while the other CPUs run
    the same mm (user compute), so all of them are active, not lazy, at every flush."""
    body = [{"op": "touch", "vma": "w", "size": "4KiB", "write": True},
            {"op": "madvise", "advice": "dontneed", "vma": "w", "size": "4KiB"}]
    threads = [{"cpu": 0, "program": body * rounds + [{"op": "exit"}]}]
    threads += [{"cpu": i, "program": [{"op": "compute", "ns": 200_000}, {"op": "exit"}]} for i in range(1, cpus)]
    return scenario([{"name": "w", "size": "8KiB", "populate": True}], threads, cpus=cpus, latency=False)


def test_below_the_threshold_the_arch_is_x86():
    """mm_active_cpus_exceeds(mm, 3): with 3 CPUs running the mm no global ASID is assigned, and every flush
    sends x86's IPIs."""
    base, bcast = run(madvise_loop(3), "6.18", arch="x86"), run(madvise_loop(3), "6.18", arch="x86-invlpgb")
    assert "design_events" not in bcast
    assert (bcast["ipis_by_cpu"], bcast["tlb_flushes"]) == (base["ipis_by_cpu"], base["tlb_flushes"])
    assert base["ipis_sent"] >= 6 * 2                   # each MADV_DONTNEED reaches both other CPUs


def test_above_the_threshold_the_flushes_become_invlpgb_after_one_transition():
    """With 4 CPUs running the mm, the first flush goes by IPI and then gives the mm a global ASID; the second
    is an INVLPGB whose finish_asid_transition() still IPIs the CPUs not on the global ASID yet; after that,
    INVLPGB + TLBSYNC alone: 2 x 3 IPIs instead of 6 x 3 (and exit's flush, which x86 sends to the lazy
    CPUs too, is an INVLPGB)."""
    base, bcast = run(madvise_loop(4), "6.18", arch="x86"), run(madvise_loop(4), "6.18", arch="x86-invlpgb")
    assert base["ipis_sent"] >= 6 * 3 and base["violations"] == []
    assert bcast["ipis_by_cpu"] == [0, 2, 2, 2] and bcast["violations"] == []
    events = bcast["design_events"]
    assert events["global_asid"] == 1
    assert events["invlpgb"] == events["tlbsync"] == bcast["tlb_flushes"] - 1


def test_munmap_on_two_cpus_sends_the_same_ipis_as_x86():
    """The issue's check: `--cpus 2 --workload munmap:29034` is below the threshold."""
    sc = resolve_workload("munmap:29034")
    base = Simulation(sc, Linux618, cpus=2, arch="x86").run()
    bcast = Simulation(sc, Linux618, cpus=2, arch="x86-invlpgb").run()
    assert base["ipis_sent"] > 0
    assert (bcast["ipis_by_cpu"], bcast["tlb_flushes"]) == (base["ipis_by_cpu"], base["tlb_flushes"])


# ------------------------------------------------------------------ page tables, GUP-fast and RCU
class NoRcuTableFree(Linux618):
    """Broken on purpose: tlb_table_flush() invalidates, then frees the table batch at once, with neither an
    RCU grace period nor tlb_remove_table_sync_one() (x86 before a37259732a7d without paravirt did so:
    the flush IPI was what GUP-fast's IRQs-off walk held off)."""
    name = "6.18-no-rcu-table-free"

    def tlb_table_flush(self, c, tlb):
        batch = tlb.batch
        if batch is None:
            return
        yield self.tlb_table_invalidate(c, tlb)
        tlb.batch = None
        for pfn in batch.tables + [batch.pfn]:
            self.alloc.free_page(c, pfn)


def gup_races_munmap():
    """CPU 0 makes the mm go global (two MADV_DONTNEED flushes: IPIs, then the transition's), then munmaps
    `a`, freeing its PTE table; CPU 1 walks `a` with GUP-fast (IRQs off 2 us); CPUs 2, 3 run the mm."""
    dontneed = [{"op": "touch", "vma": "w", "size": "4KiB", "write": True},
                {"op": "madvise", "advice": "dontneed", "vma": "w", "size": "4KiB"}]
    threads = [{"cpu": 0, "program": dontneed * 2 + [{"op": "munmap", "vma": "a"}, {"op": "exit"}]},
               {"cpu": 1, "program": [{"op": "compute", "ns": 5000}, {"op": "gup_fast", "vma": "a", "hold_ns": 2000},
                                      {"op": "exit"}]}]
    threads += [{"cpu": i, "program": [{"op": "compute", "ns": 50_000}, {"op": "exit"}]} for i in (2, 3)]
    return scenario([{"name": "a", "size": "4KiB", "start": 0x10000000, "populate": True},
                     {"name": "w", "size": "4KiB", "start": 0x10200000, "populate": True}],
                    threads, cpus=4, latency=False)


def test_freeing_page_tables_without_rcu_is_safe_on_x86_and_not_on_invlpgb():
    """The same broken policy: x86's flush IPI cannot complete while CPU 1 walks with IRQs off, so the table
    outlives the walk; INVLPGB needs no answer from CPU 1 and the table is freed under the walker."""
    assert run(gup_races_munmap(), NoRcuTableFree, arch="x86")["violations"] == []
    broken = run(gup_races_munmap(), NoRcuTableFree, arch="x86-invlpgb")
    assert {v["kind"] for v in broken["violations"]} == {"page-table-use-after-free"}
    assert run(gup_races_munmap(), Linux618, arch="x86-invlpgb")["violations"] == []


@pytest.mark.slow
def test_explore_catches_the_table_free_without_rcu_on_invlpgb():
    """It takes one preemption (CPU 0's munmap overtaking CPU 1 inside its IRQs-off walk): ~25k executions."""
    report = run_search(KernelTarget(gup_races_munmap(), NoRcuTableFree, arch="x86-invlpgb"), max_preemptions=1)
    assert report["violation"]["kind"] == "page-table-use-after-free"
    assert "gup_fast on CPU 1" in report["violation"]["detail"]


@pytest.mark.slow
@pytest.mark.parametrize("policy, arch", [(Linux618, "x86-invlpgb"), (NoRcuTableFree, "x86")])
def test_explore_proves_rcu_table_free_clean_on_invlpgb_and_the_ipi_enough_on_x86(policy, arch):
    """Every schedule with up to one preemption: 6.18 on x86-invlpgb (RCU table freeing) and the broken
    policy on x86 (the flush IPI waits for GUP-fast)."""
    report = run_search(KernelTarget(gup_races_munmap(), policy, arch=arch), max_preemptions=1)
    assert report["violation"] is None and report["covered"]


# ------------------------------------------------------------------ reports
def test_html_and_trace_show_broadcast_and_lazy_invalidations_as_their_own_events(tmp_path):
    """The HTML report has a row per design event and a chart of them; the Perfetto trace an instant for
    each INVLPGB and TLBSYNC (x86-invlpgb) and each of LATR's lazy invalidations, on the CPU that did it."""
    from pathlib import Path
    latr = f"{Path(__file__).resolve().parents[1] / 'examples' / 'plugins' / 'latr.py'}:Latr"
    sc = madvise_then_munmap()
    comparison = api.compare(sc, ["6.18", latr], arch="x86,x86-invlpgb", trace=tmp_path / "t.json")
    comparison.write_html(tmp_path / "r.html")
    page = (tmp_path / "r.html").read_text()
    for name in ("invlpgb", "tlbsync", "global_asid"):
        assert f"<th>design event: {name}</th>" in page
    assert "<h2>Design events</h2>" in page
    labels = [r.policy + " " + r.arch for r in comparison.runs]
    assert labels == ["6.18 x86", "6.18 x86-invlpgb", "6.18+latr x86"]
    instants = [e for e in json.loads((tmp_path / "t.json").read_text())["traceEvents"] if e["ph"] == "i"]
    by_pid: dict[int, set[str]] = {}
    for e in instants:
        by_pid.setdefault(e["pid"], set()).add(e["name"])
    assert by_pid.get(1) is None
    assert {"invlpgb", "tlbsync", "global_asid"} <= by_pid[2]
    assert {"lazy_shootdown", "lazy_invalidation"} <= by_pid[3]


def madvise_then_munmap():
    """madvise_loop(4)'s flushes, then CPU 0 munmaps 4 MiB the others read first while they keep running
    (LATR makes the munmap's shootdowns lazy; they are handled at the others' ticks)."""
    body = [{"op": "touch", "vma": "w", "size": "4KiB", "write": True},
            {"op": "madvise", "advice": "dontneed", "vma": "w", "size": "4KiB"}] * 2
    threads = [{"cpu": 0, "program": body + [{"op": "compute", "ns": 20_000}, {"op": "munmap", "vma": "a"},
                                             {"op": "exit"}]}]
    threads += [{"cpu": i, "program": [{"op": "touch", "vma": "a", "size": "64KiB", "write": False},
                                       {"op": "churn", "vma": "w", "gap_ns": 1500}]}
                for i in range(1, 4)]
    return scenario([{"name": "a", "size": "4MiB", "populate": True}, {"name": "w", "size": "8KiB", "populate": True}],
                    threads, cpus=4, latency=False)


def test_no_design_event_leaves_the_html_of_the_kernels_as_it_was(tmp_path):
    """Runs that note nothing get no design-event rows and no section."""
    comparison = api.compare(madvise_loop(3), ["6.18"], arch="x86,x86-invlpgb")
    comparison.write_html(tmp_path / "r.html")
    page = (tmp_path / "r.html").read_text()
    assert "design event" not in page and "Design events" not in page


def test_the_trace_names_the_cpus_an_invlpgb_reached():
    sim = Simulation(madvise_loop(4), Linux618, arch="x86-invlpgb")
    trace = attach_trace(sim)
    sim.run()
    sent = [e["args"] for e in trace.events if e.get("name") == "invlpgb"]
    assert sent[0]["cpus"] == []                    # none had reloaded with the global ASID yet
    assert all(a["cpus"] == [0, 1, 2, 3] and a["instructions"] == 1 for a in sent[1:-1])
