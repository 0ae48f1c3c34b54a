"""The invariant checker: silent on the kernel's designs, loud on a broken one."""
import pytest

from conftest import munmap_while_others_run, run, scenario
from mmugather.mm.swap_state import free_pages_and_swap_cache
from mmugather.policies import Linux30
from mmugather.workloads.builtin import resolve_workload


@pytest.mark.parametrize("policy", ["2.6.39", "3.0"])
@pytest.mark.parametrize("preempt", ["none", "voluntary", "full"])
def test_invariants_hold_over_many_seeds(policy, preempt):
    """Hundreds of seeds of a multi-CPU workload whose threads race the teardown: no violation."""
    sc = resolve_workload("small")
    for seed in range(40):
        m = run(sc, policy, seed=seed, preempt=preempt, fail_nowait=(seed % 4) / 4)
        assert m["violations"] == [], (seed, m["violations"])
        assert m["pages_unmapped"] > 0


class FreeBeforeFlush(Linux30):
    """A broken gather: frees the batched pages, then flushes (invariant #1 upside down)."""

    def tlb_flush_mmu(self, c, tlb):
        if not tlb.need_flush:
            return
        tlb.need_flush = False
        batch = tlb.local
        while batch is not None:
            pages, batch.pages = batch.pages, []
            yield from free_pages_and_swap_cache(self, c, pages)
            batch = batch.next
        tlb.active = tlb.local
        yield from self.tlb_flush(c, tlb)


def test_free_before_flush_is_caught():
    sc = resolve_workload("small")
    m = run(sc, FreeBeforeFlush)
    kinds = {v["kind"] for v in m["violations"]}
    assert "stale-tlb-use-after-free" in kinds
    assert all(v["cpu"] != -1 for v in m["violations"])


class NoRemoteFlush(Linux30):
    """A broken arch flush: only the local TLB is flushed, no shootdown."""

    def tlb_flush(self, c, tlb):
        self.machine.tlb.flush_all(c)
        yield self.costs.flush_full


def test_missing_shootdown_is_caught_as_page_and_table_use_after_free():
    m = run(munmap_while_others_run(size="4MiB"), NoRemoteFlush)
    kinds = {v["kind"] for v in m["violations"]}
    assert "page-table-use-after-free" in kinds


class SleepUnderPteLock(Linux30):
    """A broken zap: takes a sleeping lock while holding the PTE lock."""

    def zap_pte_range(self, c, tlb, vma, pt, addr, end, details):
        from mmugather.kernel.locking import MIGHT_SLEEP, SpinLock, SpinUnlock
        yield SpinLock(pt.ptl)
        yield MIGHT_SLEEP
        yield SpinUnlock(pt.ptl)
        return (yield from super().zap_pte_range(c, tlb, vma, pt, addr, end, details))


def test_sleep_in_atomic_is_caught():
    m = run(munmap_while_others_run(), SleepUnderPteLock)
    assert any(v["kind"] == "sleep-in-atomic" for v in m["violations"])


class LeakBatchPages(Linux30):
    """A broken finish: forgets to free the batch pages."""

    def tlb_finish_mmu(self, c, tlb, start, end):
        yield from self.tlb_flush_mmu(c, tlb)


def test_leaked_batch_pages_are_caught():
    m = run(munmap_while_others_run(), LeakBatchPages)
    assert any(v["kind"] == "leak" and "gather-batch" in v["detail"] for v in m["violations"])


def test_fast_mode_under_preemption_is_the_real_3_0_bug():
    """Linux 3.0 with one CPU: fast mode frees pages before the flush, and cond_resched() in zap_pmd_range
    lets another thread of the same mm run with the stale TLB entries (fixed by 29eb77825cc7 "arch, mm:
    Remove tlb_fast_mode()", 2013). 2.6.39 kept preemption off across the gather, so it was safe."""
    sc = scenario([{"name": "a", "size": "64MiB", "populate": True},
                   {"name": "w", "size": "64KiB", "populate": True}],
                  [{"cpu": 0, "program": [{"op": "touch", "vma": "a", "offset": "4MiB", "size": "16KiB"},
                                          {"op": "munmap", "vma": "a"}, {"op": "exit"}]},
                   {"cpu": 0, "program": [{"op": "touch", "vma": "a", "offset": "4MiB", "size": "16KiB"},
                                          {"op": "churn", "vma": "w", "gap_ns": 500}]}],
                  cpus=1, preempt="voluntary")
    bug = run(sc, "3.0")
    assert any(v["kind"] == "stale-tlb-use-after-free" for v in bug["violations"])
    assert run(sc, "2.6.39")["violations"] == []


def test_a_lock_holder_is_never_switched_out(monkeypatch):
    """should_resched() is false with preempt_count raised: a cond_resched() point left over from the step
    before a spin_lock() must not preempt the new lock holder (found by the scenario fuzzer: the 6.18 zap
    was switched out holding the PTE lock and its CPU's latency thread then spun forever)."""
    from mmugather.machine.engine import Engine
    from mmugather.workloads.scenario import parse_scenario
    orig = Engine._schedule

    def schedule(self, c):
        if c.curr is not None and c.curr.alive and c.preempt_count:
            raise AssertionError(f"{c.curr} switched out of CPU {c.id} at {c.clock} ns with preempt_count "
                                 f"{c.preempt_count}")
        return orig(self, c)
    monkeypatch.setattr(Engine, "_schedule", schedule)
    v1 = {"op": "touch", "vma": "v1", "write": False}
    sc = parse_scenario({
        "seed": 782, "machine": {"cpus": 4, "preempt": "full", "fail_nowait": 1.0},
        "process": [{"name": "p", "vma": [{"name": "v0", "size": 1100 * 4096, "populate": True},
                                          {"name": "v1", "size": 133 * 4096}],
                     "thread": [{"cpu": 2, "program": [{"op": "churn", "vma": "v0", "write": True, "gap_ns": 389},
                                                       {"op": "munmap", "vma": "v0"}, {"op": "munmap", "vma": "v0"},
                                                       dict(v1, gap_ns=138)]},
                                {"cpu": 3, "program": [dict(v1, gap_ns=1847)]},
                                {"cpu": 1, "program": [{"op": "touch", "vma": "v0", "write": True, "gap_ns": 214},
                                                       {"op": "compute", "ns": 1019},
                                                       {"op": "mmap", "vma": {"name": "m2", "size": 72 * 4096}}]}]}]},
        "fuzz")
    assert run(sc, "6.18")["violations"] == []
