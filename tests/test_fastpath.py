"""The fast path (src/mmugather/fastpath/) is exact: whatever the workload, running teardown in bulk gives the
same metrics and the same violations as running it one step at a time (`Simulation(fast=False)`); the
bulk backends are chosen once, from what a policy overrides; the step path never enters the package."""
import json
import sys
from array import array
from pathlib import Path

import numpy as np
import pytest
from helpers import munmap_while_others_run, scenario
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from plugins.gathers import FreeBeforeFlush, LeakBatchPages, LocalFlushOnly, SleepUnderPteLock

import mmugather.fastpath as fastpath
from mmugather.fastpath import core as bulk
from mmugather.fastpath.v2_6_39 import Bulk2639
from mmugather.fastpath.v3_0 import BatchRecord, Bulk30
from mmugather.fastpath.v6_18 import Bulk618
from mmugather.machine.costs import Costs
from mmugather.machine.engine import LimitExceeded
from mmugather.mm.mmu_gather import PAGE_SIZE
from mmugather.mm.mmu_gather.v3_0 import Batch
from mmugather.mm.mmu_gather.v6_18 import Gather618
from mmugather.mm.page_alloc import ANON, BATCH, GFP_KERNEL, PGTABLE, FrameSpan, PageAlloc, _gaps
from mmugather.mm.pfn_runs import PfnRuns, run_gaps, runs_of
from mmugather.mm.pgtable import PAGE_SHIFT, DirTable, PteTable
from mmugather.mm.protocols import STEP_BY_STEP
from mmugather.policies import POLICIES, Linux30
from mmugather.sim.simulation import Simulation
from mmugather.workloads.scenario import parse_scenario

PAGE = 4096
MiB = 1 << 20
GiB = 1 << 30
BROKEN = [FreeBeforeFlush, LocalFlushOnly, SleepUnderPteLock, LeakBatchPages]


def machine_state(sim) -> dict:
    """What a run leaves behind beyond its summary: every frame, the free list in order, each CPU's clock,
    preemption point, caches, TLB generation, lazy TLB state and loaded mm, each mm's counters, the raw
    interval lists in the order recorded."""
    a = sim.alloc
    m = sim.metrics
    return {
        "frames": (bytes(a.refcount), bytes(a.mapcount), bytes(a.kind)), "free_list": a.free_list.tolist(),
        "nr_used": list(a.nr_used),
        "cpus": [(c.clock, c.point, c.preempt_count, sorted(c.dangling), sorted(c.tlb.items()), sorted(c.pwc),
                  c.per_cpu.get("tlb_gen"), c.tlbstate, [mm is c.loaded_mm for mm in sim.mms])
                 for c in sim.engine.cpus],
        "mms": [(mm.rss, mm.nr_ptes, sorted(mm.pte_tables), mm.exited, mm.tlb_gen) for mm in sim.mms],
        "intervals": [list(getattr(m, k)) for k in ("pte_lock_hold", "preempt_off", "sched_latency",
                                                     "pages_per_flush")],
    }


def assert_same(sc, cls, **kw) -> dict:
    """Run both paths; their metrics, violations and final machine states must be identical. A run that
    passes a limit (max_sim_ns, max_steps: a random workload may not end in time, e.g. a teardown starved
    behind a churning thread) must pass the same one on both, leaving the same machine state."""
    runs = []
    for fast in (False, True):
        sim = Simulation(sc, cls, fast=fast, **kw)
        try:
            out = sim.run()
        except LimitExceeded as e:
            out = {"limit": str(e)}
        runs.append((out, machine_state(sim)))
    (step, step_state), (fast, fast_state) = runs
    assert json.dumps(fast, sort_keys=True) == json.dumps(step, sort_keys=True), \
        {k: (step[k], fast[k]) for k in step if step[k] != fast[k]}
    assert fast_state == step_state, [k for k in step_state if step_state[k] != fast_state[k]]
    return step


# ------------------------------------------------------------------ random workloads
@st.composite
def layouts(draw, max_pages: int):
    """1-4 VMAs placed one after another from a base that may sit just below a PUD or PGD boundary, with
    gaps of pages or of whole PMDs; anonymous, or mapping one file (shared or private, possibly the same
    pages twice, side by side); populated whole, not at all, or in ranges."""
    base = 0x7E00_0000_0000 - draw(st.sampled_from([0, GiB - 3 * MiB, (512 * GiB) - 2 * MiB]))
    addr = base
    vmas = []
    for k in range(draw(st.integers(1, 4))):
        pages = draw(st.integers(1, max_pages))
        addr += draw(st.sampled_from([0, PAGE, 7 * PAGE, 2 * MiB, 3 * MiB + 5 * PAGE]))
        v = {"name": f"v{k}", "size": pages * PAGE, "start": addr}
        kind = draw(st.sampled_from(["anon", "anon", "anon", "file"]))
        if kind == "file":
            v.update(kind="file", file="f", shared=draw(st.booleans()), offset=draw(st.sampled_from([0, 8 * PAGE])))
        how = draw(st.sampled_from(["all", "all", "none", "ranges"]))
        if how == "all":
            v["populate"] = True
        elif how == "ranges":
            ranges, off = [], 0
            while off < pages:
                gap = draw(st.integers(0, 600))
                length = draw(st.integers(1, 700))
                if off + gap >= pages:
                    break
                length = min(length, pages - off - gap)
                ranges.append([(off + gap) * PAGE, length * PAGE])
                off += gap + length
            v["populate"] = ranges or False
        vmas.append(v)
        addr += pages * PAGE
    return vmas


def teardown_ops(draw, pages: dict):
    """Thread 0's program: maybe touch, then munmap / MADV_DONTNEED of whole VMAs or parts, then exit."""
    names = sorted(pages)
    prog = []
    if draw(st.booleans()):
        name = draw(st.sampled_from(names))
        prog.append({"op": "touch", "vma": name, "size": min(16, pages[name]) * PAGE, "write": False})
    for _ in range(draw(st.integers(0, 3))):
        name = draw(st.sampled_from(names))
        op = {"op": draw(st.sampled_from(["munmap", "madvise"])), "vma": name}
        if draw(st.booleans()):
            first = draw(st.integers(0, pages[name] - 1))
            op["offset"] = first * PAGE
            op["size"] = draw(st.integers(1, pages[name] - first)) * PAGE
        prog.append(op)
    prog.append({"op": "exit"})
    return prog


@st.composite
def workloads(draw, max_pages: int = 2500):
    cpus = draw(st.integers(1, 4))
    vmas = draw(layouts(max_pages))
    names = [v["name"] for v in vmas]
    threads = [{"cpu": 0, "program": teardown_ops(draw, {v["name"]: v["size"] // PAGE for v in vmas})}]
    for _ in range(draw(st.integers(0, 2))):
        kind = draw(st.sampled_from(["churn", "touch"]))
        op = {"op": kind, "vma": draw(st.sampled_from(names)), "gap_ns": draw(st.integers(1, 400)) * 10,
              "write": draw(st.booleans())}
        threads.append({"cpu": draw(st.integers(0, cpus - 1)), "program": [op]})
    sc = {"seed": draw(st.integers(0, 10_000)),
          "machine": {"cpus": cpus, "preempt": draw(st.sampled_from(["none", "voluntary", "full"])),
                      "fail_nowait": draw(st.sampled_from([0.0, 0.0, 0.3, 1.0])),
                      "latency_task": draw(st.booleans())},
          "files": [{"name": "f"}],
          "process": [{"name": "p", "vma": vmas, "thread": threads}]}
    policy = draw(st.sampled_from(list(POLICIES.values()) * 2 + BROKEN))
    arch = draw(st.sampled_from(sorted(policy.arches)))
    return parse_scenario(sc, "fastpath"), policy, draw(cost_models()), arch


@st.composite
def cost_models(draw):
    """The default costs, or round ones (zeros included): ties between a step's end and the next event,
    and steps that cost nothing, are where a bulk step could differ from single steps."""
    if draw(st.booleans()):
        return Costs()
    # multiples of 10 everywhere: clocks of different CPUs meet exactly; long last steps (unlock,
    # cond_resched, pmd_none, a release chunk) make the next event fall inside them
    pick = {"pte_zap": [0, 10, 120], "pte_none": [0, 10], "pmd_none": [0, 10, 20_000], "page_free": [0, 10, 2000],
            "page_alloc": [0, 200], "lock": [0, 20], "unlock": [0, 20, 20_000], "cond_resched": [0, 10, 20_000],
            "flush_call": [0, 300], "flush_full": [0, 40], "pgtable_free": [0, 150], "user_access": [10],
            "tlb_miss_walk": [0, 30], "latency_period": [10_000, 200_000], "ipi_delivery": [0, 300]}
    return Costs(**{k: draw(st.sampled_from(v)) for k, v in pick.items()})


@settings(max_examples=250, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(workloads())
def test_fast_and_step_paths_agree(case):
    """Random VMA layouts, populated ranges, file pages mapped twice, threads racing the teardown, one or
    more CPUs, every policy on every arch it runs on, every preemption model, GFP_NOWAIT failing or not,
    broken gathers, cost models with ties and zeros: identical metrics, violations and final state."""
    sc, cls, costs, arch = case
    assert_same(sc, cls, costs=costs, arch=arch)


@pytest.mark.slow
@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(workloads(max_pages=6000))
def test_fast_and_step_paths_agree_at_length(case):
    """The same property over more and larger workloads (random seeds each run)."""
    sc, cls, costs, arch = case
    assert_same(sc, cls, costs=costs, arch=arch)


# ------------------------------------------------------------------ stories
def _exit_of(size: str, cpus: int = 2, latency: bool = False, preempt: str = "voluntary", fail_nowait=0.0):
    return scenario([{"name": "a", "size": size, "populate": True}],
                    [{"cpu": 0, "program": [{"op": "exit"}]}], cpus=cpus, latency=latency, preempt=preempt,
                    fail_nowait=fail_nowait)


@pytest.mark.parametrize("policy", ["2.6.39", "3.0", "6.18"])
@pytest.mark.parametrize("preempt", ["none", "voluntary", "full"])
def test_an_idle_machine_tears_down_in_bulk(policy, preempt, monkeypatch):
    """exit_mmap of 48 MiB with nothing else running (past 6.18's MAX_GATHER_BATCH_COUNT of batches): the
    emulators and bulk frees take most of it, and every metric is the step path's."""
    calls = {"tables": 0}
    for backend in (Bulk2639, Bulk30, Bulk618):
        def counted(self, *a, real=backend.pmd_run, **k):
            r = real(self, *a, **k)
            calls["tables"] += r is not None
            return r
        monkeypatch.setattr(backend, "pmd_run", counted)
    m = assert_same(_exit_of("48MiB", preempt=preempt), POLICIES[policy])
    assert m["pages_unmapped"] == 12288 and m["pages_freed"] == 12288
    assert calls["tables"] >= 1


@pytest.mark.parametrize("op", ["exit", "munmap"])
def test_a_chain_ending_with_its_page_tables_releases_its_pages_whole(op, monkeypatch):
    """3.0 gathers the page tables behind the pages (pte_free_tlb() -> tlb_remove_page()), so a teardown
    that fits one gather ends with one release of its batch chain whose last frames lie below its pages,
    the PMD's and PUD's going down: the pages' stretch is released whole (release_span), the tables after
    it, and every metric and the final state (free list order included) are the step path's. A release
    that took the stretches out of order, lost the runs between them or released a frame twice fails."""
    spans, stretches = [], []
    real_span, real_stretches = PageAlloc.release_span, bulk._release_stretches

    def span(self, cpu, fs, starts, lens, expand):
        spans.append(int(lens.sum()))
        return real_span(self, cpu, fs, starts, lens, expand)

    def split(*a, **k):
        stretches.append(1)
        return real_stretches(*a, **k)
    monkeypatch.setattr(PageAlloc, "release_span", span)
    monkeypatch.setattr(bulk, "_release_stretches", split)
    prog = [{"op": "exit"}] if op == "exit" else [{"op": "munmap", "vma": "a"}, {"op": "exit"}]
    sc = scenario([{"name": "a", "size": "24MiB", "populate": True}, {"name": "b", "size": "3MiB",
                   "populate": True}], [{"cpu": 0, "program": prog}], cpus=2, latency=False)
    m = assert_same(sc, POLICIES["3.0"])
    assert stretches and max(spans) >= 6144 and m["pages_freed"] == 6912


@pytest.mark.parametrize("policy", ["2.6.39", "3.0", "6.18"])
def test_sizes_around_every_batch_and_flush_boundary(policy):
    """Regions ending just before, at and after a full gather (506 pages in 2.6.39, 8 + 510k in 3.0), a
    ZAP_BLOCK (1024 pages) or a PTE table, starting mid-table: the arithmetic of the emulators at its
    edges."""
    for pages in (505, 506, 507, 517, 518, 1011, 1012, 1013, 1023, 1024, 1025, 1028, 1536, 2048, 2049):
        for skew in (0, 3):
            for first in ([], [{"op": "madvise", "vma": "a"}]):     # MADV_DONTNEED: no free_pgtables after
                sc = scenario([{"name": "a", "size": pages * PAGE, "start": 0x7E00_0000_0000 + skew * PAGE,
                                "populate": True}], [{"cpu": 0, "program": first + [{"op": "exit"}]}], cpus=2,
                              latency=False)
                for preempt in ("voluntary", "full"):
                    assert_same(sc, POLICIES[policy], preempt=preempt)


# 6.18's gather holds MMU_GATHER_BUNDLE - 1 + MAX_GATHER_BATCH_COUNT * (MAX_GATHER_BATCH - 1) pages (9678;
# test_linux618.py checks these constants against the kernel's)
CYCLE_618 = (Gather618.MMU_GATHER_BUNDLE - 1) + Gather618.MAX_GATHER_BATCH_COUNT * (Gather618.MAX_GATHER_BATCH - 1)


@pytest.fixture
def bulk_flushes(monkeypatch) -> list:
    """The forced flushes of 6.18 that the emulator runs in bulk (Bulk618.tables_flushes), one entry (how
    many flushes) per pass."""
    seen = []
    real = Bulk618.tables_flushes

    def counted(self, kernel, c, tlb, pfns, fs, limit, nflush):
        seen.append(nflush)
        return real(self, kernel, c, tlb, pfns, fs, limit, nflush)
    monkeypatch.setattr(Bulk618, "tables_flushes", counted)
    return seen


@pytest.mark.parametrize("op", ["exit", "munmap"])
@pytest.mark.parametrize("arch", ["x86", "x86-kvm"])
def test_6_18_full_gathers_flush_in_bulk_at_every_boundary(op, arch, bulk_flushes):
    """Regions of one to three full 6.18 gathers, give or take a page, starting where the page that fills
    the gather is the last of its PTE table (skew 50) or not: the table split around the flush under
    the PTE lock, the frees and the cond_resched() calls are the step path's, down to each lock hold, and
    so is exit_mmap()'s first flush, which finds the CPU in lazy TLB mode and switches it to init_mm."""
    for pages in (CYCLE_618 - 1, CYCLE_618, CYCLE_618 + 1, 2 * CYCLE_618, 3 * CYCLE_618 + 1):
        for skew in (0, 50):
            prog = ([{"op": "munmap", "vma": "a"}] if op == "munmap" else []) + [{"op": "exit"}]
            sc = scenario([{"name": "a", "size": pages * PAGE, "start": 0x7E00_0000_0000 + skew * PAGE,
                            "populate": True}], [{"cpu": 0, "program": prog}], cpus=2, latency=False)
            m = assert_same(sc, POLICIES["6.18"], arch=arch)
            assert pages < CYCLE_618 or m["pages_per_flush"]["max"] == CYCLE_618
    assert max(bulk_flushes) == 3


def test_6_18_bulk_flush_resets_the_range_an_earlier_pass_left(bulk_flushes):
    """truncate() zaps a private file mapping that starts 1283 pages below a PUD boundary: the first
    zap_pmd_range() leaves a range in the gather, the second fills it, and the forced flush resets the
    range (__tlb_reset_range()), so tlb_finish_mmu() flushes only the 1 or 20 pages zapped after it (page
    by page: no table is freed). Same times as the step path."""
    for extra in (1, 20):
        sc = parse_scenario({"seed": 1, "machine": {"cpus": 2, "latency_task": False}, "files": [{"name": "f"}],
                             "process": [{"name": "p", "vma": [
                                 {"name": "f", "size": (CYCLE_618 + extra) * PAGE, "kind": "file", "file": "f",
                                  "start": 0x7E00_0000_0000 - 1283 * PAGE, "populate": True}],
                                 "thread": [{"cpu": 0, "program": [{"op": "truncate", "file": "f"},
                                                                    {"op": "exit"}]}]}]}, "fastpath")
        before = len(bulk_flushes)
        assert_same(sc, POLICIES["6.18"])
        assert bulk_flushes[before:] == [1]


@pytest.mark.parametrize("preempt", ["none", "voluntary", "full"])
def test_6_18_bulk_flush_cycles_end_where_latency_tasks_wake(preempt, bulk_flushes):
    """120 MiB torn down while a latency task wakes every few ms: wake-ups land before, inside and after
    the tables where the gather fills (in the flush, the frees, the second zap_pte_range()); a warm TLB
    makes the first flush go step by step; zero costs make ties. Same metrics and latencies."""
    for touch in ([], [{"op": "touch", "vma": "a", "size": "64KiB", "write": False}]):
        sc = scenario([{"name": "a", "size": "120MiB", "populate": True}],
                      [{"cpu": 0, "program": touch + [{"op": "munmap", "vma": "a"}, {"op": "exit"}]}], cpus=2,
                      latency=True, preempt=preempt)
        for period in (1_300_000, 2_900_000, 6_100_000):
            for costs in (Costs(latency_period=period),
                          Costs(latency_period=period, pte_zap=200, pte_none=0, lock=0, unlock=0, cond_resched=0,
                                page_free=0, flush_call=0, flush_full=0)):
                m = assert_same(sc, POLICIES["6.18"], costs=costs)
                assert m["sched_latency_ns"]["max"] > 0
    assert sum(bulk_flushes) >= 1


def test_6_18_flushes_that_send_ipis_or_meet_dirty_file_pages_go_step_by_step(bulk_flushes):
    """A thread on another CPU keeps the mm in mm_cpumask (each forced flush sends an IPI), or a dirty
    shared file page sits between two full gathers (its rmap removal waits for a flush): the emulator
    leaves those flushes to the step path, and both paths agree."""
    m = assert_same(munmap_while_others_run(size="80MiB", cpus=2), POLICIES["6.18"])
    assert m["ipis_sent"] > 0 and not bulk_flushes
    base = 0x7E00_0000_0000
    sc = parse_scenario({"seed": 1, "machine": {"cpus": 2, "latency_task": False}, "files": [{"name": "f"}],
                         "process": [{"name": "p", "vma": [
                             {"name": "a", "size": "50MiB", "start": base, "populate": True},
                             {"name": "f", "size": "64KiB", "start": base + 50 * MiB, "kind": "file", "file": "f",
                              "shared": True, "populate": True},
                             {"name": "b", "size": "50MiB", "start": base + 51 * MiB, "populate": True}],
                             "thread": [{"cpu": 0, "program": [{"op": "exit"}]}]}]}, "fastpath")
    before = len(bulk_flushes)
    for preempt in ("voluntary", "full"):
        m = assert_same(sc, POLICIES["6.18"], preempt=preempt)
        assert m["tlb_flushes"] >= 3
    assert len(bulk_flushes) > before


@pytest.mark.parametrize("policy", ["2.6.39", "3.0", "6.18"])
@pytest.mark.parametrize("preempt", ["none", "voluntary", "full"])
def test_latency_tasks_cut_bulk_runs_where_they_preempt(policy, preempt):
    """A latency task wakes every 10 to 400 us on each CPU while 32 MiB are torn down: bulk runs end at
    every wake-up, on a cond_resched() or in the middle of a table, and the wake-up latencies (which
    depend on the preemption point the run ends on) are the step path's."""
    sc = scenario([{"name": "a", "size": "32MiB", "populate": True}],
                  [{"cpu": 0, "program": [{"op": "munmap", "vma": "a"}, {"op": "exit"}]}], cpus=2, latency=True,
                  preempt=preempt)
    for period in (10_000, 150_000, 400_000):
        for costs in (Costs(latency_period=period),
                      Costs(latency_period=period, pte_zap=100, lock=0, unlock=0, cond_resched=0, pte_none=0),
                      Costs(latency_period=period, cond_resched=20_000, unlock=20_000, page_free=2_000)):
            m = assert_same(sc, POLICIES[policy], costs=costs)
            assert m["sched_latency_ns"]["max"] > 0


def test_a_busy_machine_cuts_bulk_runs_at_every_event():
    """Seven CPUs touching memory and a latency task on each: the horizon is never far, runs are cut
    short, and still nothing differs, IPIs and preemption-off intervals included."""
    for policy in POLICIES:
        m = assert_same(munmap_while_others_run(size="8MiB", cpus=8), POLICIES[policy])
        assert m["ipis_sent"] > 0


@pytest.mark.parametrize("cls", BROKEN, ids=lambda c: c.__name__)
def test_broken_gathers_report_the_same_violations(cls):
    """A broken policy's violations, found on the fast path, are the step path's, word for word."""
    m = assert_same(munmap_while_others_run(size="4MiB"), cls)
    assert m["violations"]


def test_release_of_frames_lazy_tlbs_still_map():
    """The default workload scaled down, under 6.18: at exit, lazy CPUs' TLBs still map frames the release
    frees (each such chunk released on its own at its step's clock, fastpath/core.py _release_stretch);
    the fast path leaves the step path's metrics and machine state."""
    from mmugather.workloads.builtin import BUILTIN
    d = BUILTIN["default"]()
    for v in d["process"][0]["vma"]:
        v["size"] = "4MiB" if v["name"].startswith("ws") else "16MiB"
    reached = [0]
    orig = bulk._release_stretch

    def counting(kernel, c, part, *a):
        reached[0] += kernel.invariants.reached(part) is not None
        return orig(kernel, c, part, *a)
    bulk._release_stretch = counting
    try:
        assert_same(parse_scenario(d, "default, scaled"), POLICIES["6.18"])
    finally:
        bulk._release_stretch = orig
    assert reached[0] > 10


def test_one_cpu_fast_mode_bug_is_found_on_both_paths():
    """The real 3.0 fast-mode bug (one CPU, preemption in zap_pmd_range) is reported identically."""
    sc = scenario([{"name": "a", "size": "64MiB", "populate": True},
                   {"name": "w", "size": "64KiB", "populate": True}],
                  [{"cpu": 0, "program": [{"op": "touch", "vma": "a", "offset": "4MiB", "size": "16KiB"},
                                          {"op": "munmap", "vma": "a"}, {"op": "exit"}]},
                   {"cpu": 0, "program": [{"op": "touch", "vma": "a", "offset": "4MiB", "size": "16KiB"},
                                          {"op": "churn", "vma": "w", "gap_ns": 500}]}],
                  cpus=1, preempt="voluntary")
    m = assert_same(sc, POLICIES["3.0"])
    assert any(v["kind"] == "stale-tlb-use-after-free" for v in m["violations"])


def _fastpath_calls(sim) -> int:
    """Run sim, counting the Python calls into functions of src/mmugather/fastpath/ (wherever their names
    were imported to)."""
    package = str(Path(fastpath.__file__).parent)
    count = [0]

    def profile(frame, event, arg):
        if event == "call" and frame.f_code.co_filename.startswith(package):
            count[0] += 1
    sys.setprofile(profile)
    try:
        sim.run()
    finally:
        sys.setprofile(None)
    return count[0]


@pytest.mark.parametrize("policy,arch", [("2.6.39", "x86"), ("3.0", "x86"), ("3.0", "ppc64"), ("6.18", "x86"),
                                         ("6.18", "arm64")])
def test_the_step_path_never_enters_the_bulk_module(policy, arch):
    """Simulation(fast=False), what the explorer uses, runs every step itself: no function of the fastpath
    package runs, while the same teardown with fast=True runs many (so the probe sees them)."""
    sc = _exit_of("8MiB")
    assert _fastpath_calls(Simulation(sc, POLICIES[policy], arch=arch, fast=False)) == 0
    assert _fastpath_calls(Simulation(sc, POLICIES[policy], arch=arch, fast=True)) > 10


# ------------------------------------------------------------------ 3.0's batch records
def _walk(batch) -> list:
    """The kernel's walk over a batch chain (batch->next): each batch's frame, max and pages."""
    got = []
    while batch is not None:
        got.append((batch.pfn, batch.max, list(batch.pages)))
        batch = batch.next
    return got


def test_a_batch_record_is_the_batches_it_stands_for():
    """A BatchRecord (fastpath/v3_0.py) holds n full batches at once: Bulk30 reads their frames without
    making them; any other reader of pages or next gets the n Batch objects, each its frame and its max
    pages in order (ascending, descending and scattered runs cut at batch edges), the last linked to the
    batch after them; a record whose pages were freed gives n empty batches."""
    bulk30 = Bulk30(_arch(POLICIES["3.0"], "x86"))
    nmax = Gather618.MAX_GATHER_BATCH
    rng = np.random.default_rng(3)
    pfns = np.concatenate([np.arange(1000, 1700), np.arange(5000, 4400, -1),
                           9000 + rng.permutation(230)])          # 1530 pages: 3 batches
    for freed in (False, True):
        held = PfnRuns()
        held.extend(pfns)
        if freed:
            held.clear()
        tail = Batch(77, nmax, PfnRuns())
        rec = BatchRecord([11, 12, 13], nmax, held, tail)
        assert bulk30.batch_frames(rec) == [11, 12, 13, 77] and rec.n == 3      # (still one record)
        want = [(f, nmax, [] if freed else pfns[i * nmax:(i + 1) * nmax].tolist()) for i, f in enumerate((11, 12, 13))]
        assert _walk(rec) == want + [(77, nmax, [])]
        assert rec.n == 0 and bulk30.batch_frames(rec) == [11, 12, 13, 77]


class WalkingFinish(Linux30):
    """3.0's tlb_finish_mmu() written out as the kernel's loop over the chain (a plugin's own code: the zap
    hook stays bulk, so the chain it walks holds batch records)."""

    def tlb_finish_mmu(self, c, tlb, start, end):
        yield self.tlb_flush_mmu(c, tlb)
        batch, n = tlb.local.next, 0
        while batch is not None:
            nxt = batch.next
            self.alloc.free_page(c, batch.pfn)
            n += 1
            batch = nxt
        self.metrics.gather_memory(-PAGE_SIZE * n)
        tlb.local.next = None
        self.metrics.gather_memory(-self.sizeof_mmu_gather())


@pytest.mark.parametrize("cls", [POLICIES["3.0"], WalkingFinish], ids=lambda c: c.__name__)
def test_batch_records_are_made_into_batches_only_for_a_reader_that_walks_them(cls, monkeypatch):
    """exit_mmap of 48 MiB under 3.0 (24 batches): the pass holds its full batches as records, and both
    paths agree whether the records are released and freed as records (stock 3.0) or made into batches
    by a plugin's loop over the chain."""
    made = {"records": 0, "materialized": 0}
    real_init, real_mat = BatchRecord.__init__, BatchRecord.materialize

    def init(self, *a):
        made["records"] += 1
        real_init(self, *a)

    def materialize(self):
        made["materialized"] += 1
        real_mat(self)
    monkeypatch.setattr(BatchRecord, "__init__", init)
    monkeypatch.setattr(BatchRecord, "materialize", materialize)
    assert_same(_exit_of("48MiB"), cls)
    assert made["records"] >= 1
    assert (made["materialized"] > 0) == (cls is WalkingFinish)


# ------------------------------------------------------------------ choosing the backends
def _arch(policy_cls, name: str):
    return Simulation(_exit_of("4KiB"), policy_cls, arch=name).arch


@pytest.mark.parametrize("bulk_cls", fastpath.BULK_BACKENDS, ids=lambda b: b.__name__)
def test_a_hook_goes_step_by_step_exactly_when_a_method_it_reproduces_is_overridden(bulk_cls):
    """backends(): the stock policy gets every bulk hook; a plugin overriding any one kernel method that a
    hook declares it reproduces gets that hook step by step, and keeps the other hooks that do not
    declare it."""
    ref = bulk_cls.reference
    arch = _arch(ref, "x86")
    stock = fastpath.backends(ref, arch)
    assert all(isinstance(h, bulk_cls) for h in (stock.zap, stock.tables, stock.release))
    hooks = {"zap": bulk_cls.zap_reproduces, "tables": bulk_cls.tables_reproduces,
             "release": bulk_cls.release_reproduces}
    for method in set().union(*hooks.values()):
        plugin = type("Plugin", (ref,), {method: lambda self, *a: None})
        got = fastpath.backends(plugin, arch)
        for hook, methods in hooks.items():
            assert (getattr(got, hook) is STEP_BY_STEP) == (method in methods), (method, hook)
    untouched = type("Plugin", (ref,), {"gather_static_bytes": lambda self, n: 0})
    got = fastpath.backends(untouched, arch)
    assert all(isinstance(getattr(got, hook), bulk_cls) for hook in hooks)


def test_arch_decides_which_hooks_apply_once():
    """On ppc64 (HAVE_RCU_TABLE_FREE) 3.0's pte_free_tlb() is tlb_remove_table(): free_pmd_range() goes step
    by step; 6.18's forced-flush cycles are x86's flush_tlb_mm_range(): on arm64 the pass never runs one;
    a class that is no built-in policy's subclass gets no bulk hook."""
    assert fastpath.backends(POLICIES["3.0"], _arch(POLICIES["3.0"], "ppc64")).tables is STEP_BY_STEP
    assert isinstance(fastpath.backends(POLICIES["3.0"], _arch(POLICIES["3.0"], "x86")).tables, Bulk30)
    assert not fastpath.backends(POLICIES["6.18"], _arch(POLICIES["6.18"], "arm64")).zap.cycle_on
    assert fastpath.backends(POLICIES["6.18"], _arch(POLICIES["6.18"], "x86-kvm")).zap.cycle_on
    assert fastpath.backends(object, None) == fastpath.STEP


# ------------------------------------------------------------------ the cut rules, against the engine's
def _engine_cut(clock: int, costs: list[int], horizon) -> int:
    """How many of these steps the engine runs from `clock`: each one, then stop once clock >= horizon."""
    for n, cost in enumerate(costs, 1):
        clock += cost
        if clock >= horizon:
            return n
    return len(costs)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.lists(st.booleans(), min_size=1, max_size=40), st.integers(0, 5), st.sampled_from([0, 1, 10]),
       st.sampled_from([0, 10, 120]), st.integers(0, 45), st.integers(0, 2000), st.data())
def test_zap_steps_stops_where_the_engine_would(present, none, c_none, c_zap, quiet, clock, data):
    """zap_steps() covers exactly the zap steps the engine would run before stopping at the horizon (ties
    and zero-cost steps included) and no more than the gather takes quietly. (The horizon here is set by
    hand, with no event behind it: no lookahead, whose run_ahead() would run the events up to it.)"""
    sim = Simulation(_exit_of("4KiB"), POLICIES["3.0"], costs=Costs(pte_none=c_none, pte_zap=c_zap),
                     lookahead=False)
    kernel, alloc, c = sim.kernel, sim.alloc, sim.engine.cpus[0]
    from mmugather.mm.pgtable import PteTable, mk_pte
    pt = PteTable(alloc.alloc_page(3), 0)
    idx = [i for i, p in enumerate(present) if p]
    for i, pfn in zip(idx, alloc.alloc_bulk(1, len(idx))):
        pt.ptes[i] = mk_pte(pfn, True)
        alloc.mapcount[pfn] = 1
    steps, prev = [], -1
    for i in idx:                                    # the loop's steps: pte_zap + the empties before it
        steps.append(c_zap + c_none * (i - prev - 1) + (none * c_none if not steps else 0))
        prev = i
    ends = [clock + sum(steps[:j + 1]) for j in range(len(steps))]
    horizon = data.draw(st.sampled_from([e for e in ends if e > clock] + [clock + 1, clock + 10_000]))
    c.clock, c.horizon = clock, horizon                # called only with the horizon ahead (may_bulk)
    z = bulk.zap_steps(kernel, c, pt, 0, len(present), none * c_none, quiet)
    n, j, cost, anon = z.n, z.last, z.ns, z.anon
    if not idx:
        assert n == 0 and cost == c_none * len(present)
        return
    want = min(_engine_cut(clock, steps, horizon), quiet + 1)
    assert n == want and j == idx[want - 1] and cost == sum(steps[:want]) and anon == want
    assert [i for i in range(len(present)) if pt.ptes[i]] == idx[want:]


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.integers(1, 100), st.integers(0, 99), st.sampled_from([0, 10, 150]), st.sampled_from([1, 14]),
       st.integers(0, 5000), st.data())
def test_release_steps_stop_where_the_engine_would(npages, start, cost, chunk, clock, data):
    """release_steps() releases exactly the chunks whose steps the engine would run."""
    start = min(start, npages - 1)
    sim = Simulation(_exit_of("4KiB"), POLICIES["3.0"], costs=Costs(page_free=cost))
    kernel, alloc, c = sim.kernel, sim.alloc, sim.engine.cpus[0]
    import numpy as np
    pfns = np.array(alloc.alloc_bulk(1, npages), dtype=np.int64)
    steps = [cost * len(range(i, min(npages, i + chunk))) for i in range(start, npages, chunk)]
    ends = [clock + sum(steps[:j + 1]) for j in range(len(steps))]
    c.clock, c.horizon = clock, data.draw(st.sampled_from([e for e in ends if e > clock] + [clock + 1, clock + 10**9]))
    done = bulk.release_steps(kernel, c, pfns, start, chunk)
    want = _engine_cut(clock, steps, c.horizon)
    assert done == min(npages - start, want * chunk)
    assert [alloc.kind[p] for p in pfns.tolist()] == [1] * start + [0] * done + [1] * (npages - start - done)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3)), min_size=1, max_size=12), st.data())
def test_first_crossing_counts_whole_units_the_engine_would_run(units, data):
    """first_crossing(): units of steps (a unit = some steps, its last one `last`) taken whole while each of
    their steps starts before the horizon, the one that crosses included."""
    import numpy as np
    costs = [[10] * a + [10 * b] for a, b in units]          # each unit: a steps of 10, then its last step
    flat = [x for u in costs for x in u]
    ends = np.cumsum([sum(u) for u in costs])
    lasts = np.array([u[-1] for u in costs])
    horizon = data.draw(st.integers(1, int(ends[-1]) + 20))
    k = bulk.first_crossing(0, ends, lasts, horizon)
    ran = _engine_cut(0, flat, horizon)                        # steps the engine runs
    whole = 0
    for u in costs:
        if ran >= len(u):
            ran -= len(u)
            whole += 1
        else:
            break
    assert k == whole


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 3000), min_size=1, max_size=400), st.sampled_from(["sorted", "holes", "any"]),
       st.sampled_from([np.int64, np.int32]))
def test_frame_span_marks_exactly_the_frames(pfns, shape, dtype):
    """FrameSpan.of (of int64 or int32 pfns, as a pass reads them): None exactly when a frame repeats;
    else lo/hi bound the frames, `increasing` says whether the array is sorted, the holes (when listed)
    are exactly the span's other frames, the mask (when there is one) marks exactly the frames; its runs
    are runs_of()'s whenever it gives them."""
    a = np.array(pfns, dtype=dtype)
    if shape != "any":
        a = np.unique(a)
    if shape == "holes":                                # a long run of frames with a few missing
        span = np.arange(1000, 1000 + 20 * len(a))
        a = np.delete(span, np.unique(a % len(span))[:len(span) // 20])
    fs = FrameSpan.of(a)
    if fs is None:
        assert len(np.unique(a)) < len(a)
        return
    assert len(np.unique(a)) == len(a)
    assert (fs.lo, fs.hi) == (int(a.min()), int(a.max()) + 1)
    assert fs.increasing == bool((np.diff(a) > 0).all())
    assert fs.spanned == (fs.holes is not None or fs.mask is not None)
    if fs.mask is not None:
        assert np.array_equal(np.flatnonzero(fs.mask) + fs.lo, np.sort(a))
    if fs.holes is not None:                            # the frames of the span not in the set
        assert np.array_equal(fs.holes + fs.lo, np.setdiff1d(np.arange(fs.lo, fs.hi), a))
    gaps = np.flatnonzero(np.diff(a) != 1)
    assert np.array_equal(_gaps(a, chunk=7), gaps)      # (found a chunk at a time)
    if not fs.increasing:                               # gaps and runs only when every run goes up
        assert fs.prefix(a, 1) is None
        if (np.diff(a) == -1).any():
            assert fs.gaps is None and fs.runs(a) is None
        else:
            assert np.array_equal(fs.gaps, gaps)
            assert all(np.array_equal(x, y) for x, y in zip(fs.runs(a), runs_of(a), strict=True))
        return
    assert np.array_equal(fs.gaps, gaps)
    assert all(np.array_equal(x, y) for x, y in zip(fs.runs(a), runs_of(a, increasing=True)))
    assert np.array_equal(run_gaps(*runs_of(a)), gaps)  # the same gaps from the runs alone
    n = len(a) // 2 + 1
    pre = fs.prefix(a, n)
    assert pre is not None and np.array_equal(pre.gaps, np.flatnonzero(np.diff(a[:n]) != 1))
    assert (pre.lo, pre.hi) == (int(a[0]), int(a[n - 1]) + 1)
    if pre.holes is not None:
        assert np.array_equal(pre.holes + pre.lo, np.setdiff1d(np.arange(pre.lo, pre.hi), a[:n]))
    if fs.spanned:
        kinds = np.zeros(fs.hi, dtype=np.int8)
        kinds[a[::3]] = 1
        assert fs.count_kind(kinds, 1) == len(a[::3]) and fs.count_kind(kinds, 0) == len(a) - len(a[::3])


@pytest.mark.parametrize("seed", range(6))
def test_table_run_pages_as_one_read_gives_them(seed):
    """TableRun.pages(): the pfns of the present entries of the first k units (in order, of the dtype
    asked) and which entries are present (None: all), as one read of every entry gives them, across
    READ_TABLES chunks, missing tables and partial first and last tables."""
    rng = np.random.default_rng(seed)
    pmd = DirTable(0)
    for i in range(150):
        if rng.random() < 0.1:                          # no table there
            continue
        pt = PteTable(1000 + i, i << 21)
        vals = (rng.integers(1, 1 << 30, 512) << PAGE_SHIFT) | 0x67
        if seed % 2:                                    # odd seeds: some entries empty
            vals[rng.random(512) < 0.2] = 0
        pt.ptes[:] = array("q", vals.tolist())
        pmd.entries[i] = pt
    run = bulk.TableRun(pmd, (5 << 21) + (3 << PAGE_SHIFT), (140 << 21) - (7 << PAGE_SHIFT), 512)
    for k, dtype in ((len(run.tables), np.int32), (len(run.tables) - 1, np.int64)):
        flat = run.entries(k)
        pfns, pres = run.pages(k, dtype)
        assert pfns.dtype == dtype
        if seed % 2:
            assert pres is not None and np.array_equal(pres, flat != 0)
        else:
            assert pres is None
        assert np.array_equal(pfns, flat[flat != 0] >> PAGE_SHIFT)


def _runs_by_rule(p: list[int]) -> list[tuple[int, int, int]]:
    """runs_of()'s rule, one pfn at a time: a run starts where the step before is not +-1, or is one but
    differs from the step before it; (first pfn, length, descending)."""
    runs: list[list[int]] = []
    for i, x in enumerate(p):
        g = x - p[i - 1] if i else 0
        if not i or abs(g) != 1 or (i >= 2 and abs(p[i - 1] - p[i - 2]) == 1 and g != p[i - 1] - p[i - 2]):
            runs.append([x, 1, 0])
        else:
            runs[-1][1] += 1
            runs[-1][2] = int(g < 0)
    return [tuple(r) for r in runs]  # type: ignore[misc]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 3), max_size=3), st.sampled_from(["run", "spaced", "walk", "any"]),
       st.integers(0, 60), st.data())
def test_runs_and_their_encoding_follow_the_rule(before, shape, n, data):
    """runs_of() cuts any pfn sequence (one run, spaced frames, a walk of +-1 steps, anything) by its
    rule, and PfnRuns.extend() of it, after pfns appended before, writes the encoding extend_runs() writes
    of those runs (append() of each below _SMALL pfns): the bulk forms take shortcuts for one run and for
    runs of one."""
    if shape == "run":
        p = list(range(500, 500 + n))
    elif shape == "spaced":
        p = [1000 + 513 * i for i in range(n)]
    elif shape == "walk":
        p = [600]
        for step in data.draw(st.lists(st.sampled_from([1, 1, -1, 2]), min_size=n, max_size=n)):
            p.append(p[-1] + step)
    else:
        p = data.draw(st.lists(st.integers(0, 40), min_size=n, max_size=n))
    a = np.array(p, dtype=np.int64)
    assert list(zip(*[x.tolist() for x in runs_of(a)])) == _runs_by_rule(p)
    got, want = PfnRuns(), PfnRuns()
    for x in before:                                    # (a run of its own, or joined by an ascending first run)
        got.append(495 + 2 * x)
        want.append(495 + 2 * x)
    got.extend(a)
    if len(p) < 16:
        for x in p:
            want.append(x)
    else:
        want.extend_runs(*(np.array(c, dtype=np.int64) for c in zip(*_runs_by_rule(p))))
    assert (got.a.tobytes(), len(got), got.tolist()) == (want.a.tobytes(), len(want),
                                                          [495 + 2 * x for x in before] + p)


def _frames_to_release(alloc: PageAlloc, n: int, missing: set, shared: set, every: int) -> list[int]:
    """After one page-table frame (frame 0, below the span), n ANON frames from alloc_bulk(): those at the
    indices in `shared` get a second reference (not freed by a release), every `every`-th from 3 on is
    made a page table (other kinds; none when 0); returns the frames but those at the indices in
    `missing` (holes in the span)."""
    assert alloc.alloc_page(PGTABLE) == 0
    frames = list(alloc.alloc_bulk(ANON, n))
    for i in shared & set(range(n)):
        alloc.refcount[frames[i]] += 1
    for i in range(3, n, every) if every else ():
        alloc.kind[frames[i]] = PGTABLE
        alloc.nr_used[PGTABLE] += 1
        alloc.nr_used[ANON] -= 1
    return [f for i, f in enumerate(frames) if i not in missing]


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 300), st.sets(st.integers(0, 299), max_size=40), st.sets(st.integers(0, 299), max_size=20),
       st.sampled_from(["sorted", "shuffled"]), st.sampled_from([0, 7, 2, 1000]), st.randoms(use_true_random=False))
def test_release_array_frees_as_release_pages_does(n, missing, shared, order, every, rnd):
    """PageAlloc.release_array() (a run, a run with holes, frames still referenced, any order, frames of
    one kind or mixed) leaves the frame arrays, free list and counters as release_pages() one frame at a
    time does, and reports the same frames with their kinds."""
    def run(bulk_release: bool):
        freed: list = []
        alloc = PageAlloc(None, 0.0, None, lambda c, p, k: freed.extend(zip(p, k)),
                          lambda c, p, k, *rest: freed.extend(zip(p.tolist(), k.tolist())), None)
        pfns = _frames_to_release(alloc, n, missing, shared, every)
        if order == "shuffled":
            rnd.shuffle(pfns)
        if bulk_release:
            alloc.release_array(None, np.array(pfns, dtype=np.int64))
        else:
            alloc.release_pages(None, pfns)
        return (bytes(alloc.refcount), bytes(alloc.kind), alloc.nr_used, sorted(alloc.free_list.tolist()),
                sorted(freed))

    assert run(True) == run(False)


def _cut_runs(a: np.ndarray, cuts: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """The ascending runs of sorted pfns `a`, also cut before each index of `cuts` (as joined batch
    encodings leave them): (first pfns, lengths)."""
    starts, lens, _ = runs_of(a, increasing=True)
    first = np.union1d(np.cumsum(lens) - lens, np.array([c for c in cuts if 0 < c < len(a)], dtype=np.int64))
    return a[first].astype(np.int64), np.diff(np.append(first, len(a)))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 3000), min_size=1, max_size=400), st.sampled_from([0, 5, 12, 16, 17, 40]),
       st.lists(st.integers(0, 400)))
def test_frame_span_of_runs_is_frame_span_of_the_pfns(pfns, holes, cuts):
    """FrameSpan.of_runs() (the span of a released record's pages, from their runs alone, cut anywhere)
    is FrameSpan.of() of the pfns whenever that lists its holes, and None exactly otherwise."""
    a = np.unique(np.array(pfns, dtype=np.int64))
    if holes:                                           # a long run of frames with 1 in `holes` missing
        span = np.arange(1000, 1000 + 20 * len(a))
        a = np.delete(span, np.arange(3, len(span), holes))
    fs, got = FrameSpan.of(a), FrameSpan.of_runs(*_cut_runs(a, cuts))
    assert fs is not None and (got is None) == (fs.holes is None)
    if got is not None:
        assert (got.lo, got.hi, got.increasing, got.mask) == (fs.lo, fs.hi, fs.increasing, None)
        assert np.array_equal(got.gaps, fs.gaps) and np.array_equal(got.holes, fs.holes)


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 300), st.sets(st.integers(0, 299), max_size=40), st.sets(st.integers(0, 299), max_size=4),
       st.sampled_from([0, 7, 1000]), st.lists(st.integers(0, 300), max_size=6), st.booleans())
def test_release_span_frees_as_release_array_does(n, missing, shared, every, cuts, freed_before):
    """PageAlloc.release_span() of ascending runs (a run with holes, frames of one kind or mixed, frames
    still referenced or already free: release_array() then) leaves the frame arrays, the free list (its
    encoding too), the counters and the kinds reported as release_array() of the pfns does."""
    assume(set(range(n)) - missing)                     # (a release of no frame makes no runs)
    def run(span: bool):
        kinds: list = []
        alloc = PageAlloc(None, 0.0, None, None, lambda c, p, k, *rest: kinds.append(k.tolist()), None)
        a = np.array(_frames_to_release(alloc, n, missing, shared, every), dtype=np.int64)
        if freed_before and len(a) > 1:                     # a frame freed twice
            alloc.release_array(None, a[1:2])
        fs = FrameSpan.of_runs(*_cut_runs(a, cuts))
        try:
            if span and fs is not None:
                alloc.release_span(None, fs, *_cut_runs(a, cuts), lambda: a.copy())
            else:
                alloc.release_array(None, a, fs=fs)
        except AssertionError as e:
            kinds.append(str(e))
        return (bytes(alloc.refcount), bytes(alloc.kind), alloc.nr_used, alloc.free_list.tobytes(), kinds)

    assert run(True) == run(False)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.lists(st.tuples(st.sampled_from(["page", "bulk", "many", "free"]), st.integers(1, 40)), max_size=30),
       st.integers(0, 300))
def test_reserved_frames_are_the_frames_allocation_would_hand_out(ops, reserve):
    """PageAlloc.reserve() only changes how the frame arrays grow: any mix of allocations and frees after
    it hands out the same frames, in the same order, with the same refcount, mapcount and kind, as without
    it, and unreserve() leaves the arrays ending at the last frame handed out."""
    def run(reserved: bool):
        alloc = PageAlloc(None, 0.0, None, None, lambda *a: None, lambda *a: None)
        out = []
        if reserved:
            alloc.reserve(reserve)
        for op, n in ops:
            if op == "page":
                out.append(alloc.alloc_page(ANON if n % 2 else PGTABLE))
            elif op == "bulk":
                out += list(alloc.alloc_bulk(ANON, n))
            elif op == "many":
                out += alloc.alloc_many(BATCH, n, GFP_KERNEL)
            elif out:
                alloc.free_array(None, np.array(sorted(set(out[-n:])), dtype=np.int64))
                out = out[:-n]
        alloc.unreserve()
        return out, bytes(alloc.refcount), bytes(alloc.mapcount), bytes(alloc.kind), alloc.free_list.tolist()

    assert run(True) == run(False)


def test_a_file_page_two_vmas_map_is_released_twice_with_each_flush_lock_state():
    """2.6.39 bulk pass over two shared VMAs of one file at the same offset: a page is in the gather twice
    (one reference per mapping). The bulk release frees it at its second occurrence with that flush's PTE
    lock state, exactly as the step path does (the differential test's falsifying example, kept: before,
    release_array refused a frame twice with per-page lock flags)."""
    base = 138538465099776
    vmas = [{"name": "v0", "size": 4096, "start": base, "populate": True},
            {"name": "v1", "size": 4096, "start": base + 4096, "kind": "file", "file": "f", "shared": True,
             "populate": True},
            {"name": "v2", "size": 585728, "start": base + 8192, "kind": "file", "file": "f", "shared": True,
             "populate": True},
            {"name": "v3", "size": 1478656, "start": base + 622592, "populate": True}]
    sc = parse_scenario({"machine": {"cpus": 2, "preempt": "none", "latency_task": False}, "files": [{"name": "f"}],
                         "process": [{"name": "p", "vma": vmas, "thread": [{"cpu": 0, "program": [{"op": "exit"}]}]}]},
                        "two mappings of one file page")
    costs = Costs(pte_zap=0, pte_set=50, pte_none=0, pmd_none=0, page_free=0, page_alloc=0, page_zero=400,
                  pgtable_free=0, flush_one=100, flush_full=0, flush_call=0, tlbi=20, dsb_ish=500, tlb_miss_walk=0,
                  user_access=10, ipi_send=250, ipi_delivery=0, ipi_handler=200, ipi_ack=100, lock=0, unlock=0,
                  context_switch=1500, syscall=100, fault_entry=800, cond_resched=0, latency_period=10000,
                  latency_run=2000)
    m = assert_same(sc, POLICIES["2.6.39"], costs=costs, arch="x86")
    assert m["violations"] == [] and m["pages_unmapped"] > m["pages_freed"]


@pytest.mark.parametrize("policy", ["2.6.39", "3.0", "6.18"])
def test_many_small_vmas_tear_down_as_the_step_path(policy, monkeypatch):
    """exit_mmap of many small VMAs: 1 MiB ones side by side, 4 MiB ones two PMD entries long (below
    tables.MIN_PASS: zap_pte_range()'s runs, not a pass), ones starting at an odd page, one populated in
    ranges, one shared file mapping (its frames go up, but are not anonymous): the runs of consecutive frames
    (core._dense) take most of them and every metric and the final state are the step path's."""
    dense = [0]
    real = bulk._clear_dense

    def counted(*a, **k):
        dense[0] += 1
        return real(*a, **k)
    monkeypatch.setattr(bulk, "_clear_dense", counted)
    base = 0x7E00_0000_0000
    vmas = [{"name": f"s{i}", "size": "1MiB", "start": base + i * MiB, "populate": True} for i in range(6)]
    vmas += [{"name": f"g{i}", "size": "4MiB", "start": base + (8 + 6 * i) * MiB, "populate": True} for i in range(3)]
    vmas += [{"name": f"u{i}", "size": 300 * PAGE, "start": base + (28 + 2 * i) * MiB + 7 * PAGE, "populate": True}
             for i in range(3)]
    vmas.append({"name": "r", "size": "1MiB", "start": base + 36 * MiB,
                 "populate": [[0, 40 * PAGE], [41 * PAGE, 100 * PAGE], [200 * PAGE, 20 * PAGE]]})
    vmas.append({"name": "f", "size": "1MiB", "start": base + 38 * MiB, "kind": "file", "file": "f", "shared": True,
                 "populate": True})
    sc = parse_scenario({"seed": 1, "machine": {"cpus": 2, "latency_task": False}, "files": [{"name": "f"}],
                         "process": [{"name": "p", "vma": vmas, "thread": [{"cpu": 0, "program": [{"op": "exit"}]}]}]},
                        "test")
    m = assert_same(sc, POLICIES[policy])
    assert m["pages_unmapped"] == 6 * 256 + 3 * 1024 + 3 * 300 + 160 + 256
    assert dense[0] >= 12
