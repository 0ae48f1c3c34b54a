"""The bug catalogue: every entry's buggy variant shows its violation, its fixed variant none.

CI runs each buggy variant at the entry's bound and each fixed variant at a bound of one preemption (but
for SLOW_FIXED's, whose bound is one: their slow test at the catalogue bound is that run); the slow tests
prove the fixed variants clean at the entry's bound and one more."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from mmugather.explore import search
from mmugather.explore.bugs import CATALOGUE, available, get_bug, run_bug

ROOT = Path(__file__).resolve().parent.parent
BUGS = [b.name for b in available()]
# entries whose fixed variant takes more than a few seconds at one preemption (their bound: the slow
# test_fixed_variant_passes_at_the_catalogue_bound covers them)
SLOW_FIXED = {"rmap-removed-before-flush", "dirty-pte-flush-after-unlock"}


def test_the_catalogue_has_the_issue_entries_and_they_run_with_this_build():
    assert {"fast-mode-3.0", "madv-dontneed-flush-miss", "mremap-flush-after-unlock",
            "nested-flush-reset-range", "forced-flush-wrong-range", "unlimited-batching-soft-lockup",
            "radix-table-free-no-invalidate", "lazy-mm-users-shortcut", "pfnmap-munmap-vs-revoke",
            "khugepaged-gup-fast-free", "rmap-removed-before-flush", "dirty-pte-flush-after-unlock",
            "table-free-no-invalidate"} <= set(BUGS)
    assert len({b.name for b in CATALOGUE}) == len(CATALOGUE)
    for bug in available():
        assert bug.commits and 2000 < bug.year < 2030 and bug.buggy_without != bug.fixed_without
        assert bug.fixed_in and bug.introduced and "\n" not in bug.title


@pytest.mark.parametrize("name", BUGS)
def test_buggy_variant_fails_with_the_expected_violation(name):
    bug = get_bug(name)
    res = search.exhaustive(bug.variant(fixed=False), max_preemptions=bug.max_preemptions, budget=bug.budget,
                            max_depth=bug.max_depth)
    assert res.violation is not None and res.violation["kind"] == bug.expect


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_FIXED else n for n in BUGS])
def test_fixed_variant_passes_with_one_preemption(name):
    bug = get_bug(name)
    res = search.exhaustive(bug.variant(fixed=True), max_preemptions=1, max_depth=bug.max_depth)
    assert res.violation is None and res.covered


@pytest.mark.slow
@pytest.mark.parametrize("name", BUGS)
def test_fixed_variant_passes_at_the_catalogue_bound(name):
    bug = get_bug(name)
    out = run_bug(bug)
    assert out["ok"], out


@pytest.mark.slow
@pytest.mark.parametrize("name", BUGS)
def test_fixed_variant_passes_at_a_longer_bound(name):
    bug = get_bug(name)
    res = search.exhaustive(bug.variant(fixed=True), max_preemptions=bug.slow_max_preemptions, budget=10**7,
                            max_depth=bug.max_depth)
    assert res.violation is None and res.covered


def test_bugs_run_json_shape_and_exit_code():
    r = subprocess.run([sys.executable, "-m", "mmugather", "bugs", "run", "fast-mode-3.0", "--json"],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["name"] == "fast-mode-3.0" and out["commits"] == ["29eb77825cc7"]
    assert out["buggy"]["violation"]["kind"] == "stale-tlb-use-after-free"
    assert set(out["buggy"]) >= {"violation", "seconds", "transitions"}
    assert out["fixed"]["violation"] is None and out["fixed"]["bound"]["covered"]
    assert set(out["fixed"]) >= {"violation", "seconds", "transitions", "bound"}
    listed = subprocess.run([sys.executable, "-m", "mmugather", "bugs", "list", "--json"], capture_output=True,
                            text=True, cwd=ROOT)
    assert listed.returncode == 0 and [b["name"] for b in json.loads(listed.stdout)] == BUGS
    assert all(b["fixed_in"] and b["introduced"] and b["title"] for b in json.loads(listed.stdout))
    arches = {b["name"]: b["arch"] for b in json.loads(listed.stdout)}
    assert arches["radix-table-free-no-invalidate"] == "ppc64-radix" and arches["fast-mode-3.0"] == "x86"


def test_a_bug_whose_fixed_variant_fails_makes_bugs_run_fail():
    """run_bug's verdict needs both halves: the buggy variant as the fixed one fails the check."""
    bug = get_bug("fast-mode-3.0")
    from dataclasses import replace
    both_buggy = replace(bug, fixed_without=bug.buggy_without)
    out = run_bug(both_buggy, max_preemptions=1)
    assert out["fixed"]["violation"] is not None and not out["ok"]


# ------------------------------------------------------------------ the mechanisms new entries brought
def _sim(scenario: dict, policy: str, without=()):
    from mmugather.policies import get_policy
    from mmugather.sim.simulation import Simulation
    from mmugather.workloads.scenario import parse_scenario
    sim = Simulation(parse_scenario(scenario, "test"), get_policy(policy), without_fixes=without)
    return sim, sim.run()


def _munmap_3_0(mib: int, softlockup_ns):
    return {"name": "t", "machine": {"cpus": 2, "preempt": "none", "policy": "3.0", "latency_task": False,
                                     "softlockup_ns": softlockup_ns},
            "process": [{"name": "p", "vma": [{"name": "a", "size": f"{mib}MiB", "populate": True}],
                         "thread": [{"cpu": 0, "program": [{"op": "munmap", "vma": "a"}]}]}]}


def test_the_watchdog_is_off_unless_a_threshold_is_set():
    _, m = _sim(_munmap_3_0(64, None), "3.0")
    assert not [v for v in m["violations"] if v["kind"] == "soft-lockup"]


def test_the_watchdog_measures_the_stretch_between_scheduling_points():
    """3.0 frees all 16k pages of a 64 MiB munmap in its one flush (150 ns each, ~2.5 ms with no scheduling
    point): a 2 ms threshold catches it, a 3 ms one does not; capped batches (53a59fc67f97) free ~10k at most
    between cond_resched() calls, ~1.5 ms."""
    def lockups(ns, without=()):
        return [v for v in _sim(_munmap_3_0(64, ns), "3.0", without)[1]["violations"] if v["kind"] == "soft-lockup"]
    assert lockups(2_000_000) and not lockups(3_000_000)
    assert not lockups(2_000_000, ("unlimited_batching",)) and lockups(1_000_000, ("unlimited_batching",))


def test_the_watchdog_watches_the_engine_only_when_a_threshold_is_set():
    """Off: no observer, so the engine's step loop is the unobserved one (and the fast path stays on)."""
    off, _ = _sim(_munmap_3_0(1, None), "3.0")
    on, _ = _sim(_munmap_3_0(1, 2_000_000), "3.0")
    assert off.watchdog is None and off.engine.observers == []
    assert on.engine.observers == [on.watchdog]


def test_the_watchdog_counts_only_the_points_the_preemption_model_honours():
    """might_sleep() is a scheduling point under voluntary (and full) preemption, not under none;
    preempt_count back to 0 only under full; cond_resched() under all three."""
    from types import SimpleNamespace

    from mmugather.kernel.sched import P_COND_RESCHED, P_MIGHT_SLEEP
    from mmugather.machine.engine import Engine
    from mmugather.sim.invariants import Invariants
    from mmugather.sim.watchdog import SoftLockupWatchdog

    def stuck_after(preempt, hook, point=None):
        inv = Invariants(SimpleNamespace())
        w = SoftLockupWatchdog(100, inv)
        w.attached(Engine(1, SimpleNamespace(), preempt, None, inv))
        c = SimpleNamespace(id=0, clock=90, point=point, curr="t", irqs_off=0)
        getattr(w, hook)(c)               # a point at 90 ns (or none, if the model does not honour it)
        c.clock = 150
        w.switching(c)                    # the stretch ends at 150 ns: 150 or 60 ns long
        return [v["kind"] for v in inv.violations]
    assert stuck_after("none", "resched_point", P_COND_RESCHED) == []
    assert stuck_after("none", "resched_point", P_MIGHT_SLEEP) == ["soft-lockup"]
    assert stuck_after("voluntary", "resched_point", P_MIGHT_SLEEP) == []
    assert stuck_after("voluntary", "preempt_on") == ["soft-lockup"]
    assert stuck_after("full", "preempt_on") == []


def test_exit_thread_leaves_the_process_running():
    """A thread that exits alone leaves the other threads running (exit, exit_group, would end the sleeper
    at its next op): the survivor still munmaps, then tears the mm down when its program ends."""
    sc = {"name": "t", "machine": {"cpus": 2, "policy": "6.18", "latency_task": False},
          "process": [{"name": "p", "vma": [{"name": "a", "size": "8KiB", "populate": True}],
                       "thread": [{"cpu": 0, "program": [{"op": "sleep", "ns": 100_000},
                                                          {"op": "munmap", "vma": "a"}]},
                                  {"cpu": 1, "program": [{"op": "touch", "vma": "a"}, {"op": "exit_thread"}]}]}]}
    sim, m = _sim(sc, "6.18")
    assert m["violations"] == [] and len(sim.metrics.syscall_ns) == 1 and sim.processes[0].mm.exited
    sc["process"][0]["thread"][1]["program"][1] = {"op": "exit"}
    sim, _ = _sim(sc, "6.18")
    assert len(sim.metrics.syscall_ns) == 0


@pytest.mark.slow
def test_the_writeback_entries_lose_a_write_only_through_writeback():
    """rmap-removed-before-flush (5df397dec7c4) and dirty-pte-flush-after-unlock (1cf35d47712d): the stale
    store alone is no lost write (the page is still PG_dirty); without the fsync the buggy variants are
    clean at the entry's bound, with it they lose the store."""
    from dataclasses import replace
    for name in ("rmap-removed-before-flush", "dirty-pte-flush-after-unlock"):
        bug = get_bug(name)
        assert bug.expect == "lost-write" and bug.policy == "6.18"
        sc = json.loads(json.dumps(bug.scenario))
        sc["process"][1]["thread"][0]["program"] = [{"op": "compute", "ns": 1000}]
        res = search.exhaustive(replace(bug, scenario=sc).variant(fixed=False), max_preemptions=bug.max_preemptions,
                                max_depth=bug.max_depth)
        assert res.violation is None and res.covered
