"""Partial-order reduction (sleep sets over measured step footprints) against the unpruned search: on small
kernel scenarios, buggy and fixed, both find the same verdict and the same violation kind; the reduction
only ever explores fewer executions, and on a scenario with independent user steps it explores strictly
fewer."""
import json

import pytest
from helpers import cli_here, scenario

from mmugather.explore import search
from mmugather.explore.bugs import get_bug
from mmugather.explore.controlled import RESCHED
from mmugather.explore.target import KernelTarget
from mmugather.policies import get_policy
from mmugather.workloads.scenario import parse_scenario


def munmap_beside_user_work():
    """CPU 0 munmaps what it read; CPU 1 writes and reads its own VMA (user steps that commute with CPU
    0's kernel steps unless a flush reaches CPU 1)."""
    return scenario([{"name": "a", "size": "8KiB", "populate": True},
                     {"name": "b", "size": "16KiB", "populate": True}],
                    [{"cpu": 0, "program": [{"op": "touch", "vma": "a", "write": False}, {"op": "munmap", "vma": "a"},
                                            {"op": "exit"}]},
                     {"cpu": 1, "program": [{"op": "touch", "vma": "b", "write": True},
                                            {"op": "touch", "vma": "b", "write": False}]}], cpus=2, latency=False)


def both(target, **kw):
    """(with POR, without) exhaustive results of `target`."""
    return (search.exhaustive(target, sleep_sets=True, **kw), search.exhaustive(target, sleep_sets=False, **kw))


def verdict(res) -> tuple:
    return (res.violation or {}).get("kind"), res.covered


@pytest.mark.parametrize("policy", [pytest.param("2.6.39", marks=pytest.mark.slow),
                                    pytest.param("3.0", marks=pytest.mark.slow), "6.18"])
def test_sleep_sets_prune_independent_user_steps_and_keep_the_verdict(policy):
    target = KernelTarget(munmap_beside_user_work(), get_policy(policy))
    por, every = both(target, max_preemptions=2, hash_states=False)
    assert verdict(por) == verdict(every) == (None, True)
    assert por.slept > 0 and every.slept == 0
    assert por.executions < every.executions


CASES = [(name, fixed, hashed) for name, fixed in [("fast-mode-3.0", False), ("fast-mode-3.0", True),
                                                    ("madv-dontneed-flush-miss", False),
                                                    ("forced-flush-wrong-range", False),
                                                    ("lazy-mm-users-shortcut", False)]
         for hashed in (False, True)]


@pytest.mark.parametrize("name,fixed,hash_states",
                         [pytest.param(*c, marks=pytest.mark.slow) if c == ("madv-dontneed-flush-miss", False, False)
                          else c for c in CASES])
def test_catalogue_verdicts_are_the_same_with_and_without_por(name, fixed, hash_states):
    bug = get_bug(name)
    por, every = both(bug.variant(fixed), max_preemptions=bug.max_preemptions, budget=bug.budget,
                      hash_states=hash_states)
    assert verdict(por) == verdict(every)
    assert verdict(por)[0] == (None if fixed else bug.expect)
    assert por.executions <= every.executions


def test_no_por_on_the_command_line_reports_the_unpruned_work():
    """`bugs run --no-por` says so in their JSON; the verdict stays."""
    on = json.loads(cli_here("bugs", "run", "fast-mode-3.0", "--json").stdout)
    off = json.loads(cli_here("bugs", "run", "fast-mode-3.0", "--no-por", "--json").stdout)
    assert on["ok"] and off["ok"]
    assert on["fixed"]["por"] and not off["fixed"]["por"] and off["fixed"]["slept"] == 0
    assert on["buggy"]["violation"]["kind"] == off["buggy"]["violation"]["kind"]


# ------------------------------------------------------------------ need_resched as a scheduler tick
def two_tasks_on_cpu0():
    """6.18, voluntary: on CPU 0 one thread munmaps what it read while another thread waits for the CPU;
    CPU 1 reads the same VMA."""
    return scenario([{"name": "a", "size": "16KiB", "populate": True},
                     {"name": "b", "size": "8KiB", "populate": True}],
                    [{"cpu": 0, "program": [{"op": "touch", "vma": "a", "write": False}, {"op": "munmap", "vma": "a"},
                                            {"op": "exit"}]},
                     {"cpu": 0, "program": [{"op": "touch", "vma": "b", "write": True}]},
                     {"cpu": 1, "program": [{"op": "touch", "vma": "a", "write": False}]}], cpus=2, latency=False)


def test_a_waiting_task_no_longer_breaks_every_zap_pass():
    """need_resched is set by a tick the explorer chooses, not whenever a task waits: 6.18's zap_pte_range()
    breaks when the tick came, and the CPU then switches at cond_resched(); before, every pass broke before
    its first entry and an execution that kept the munmap going ran to the step cap."""
    res = search.exhaustive(KernelTarget(two_tasks_on_cpu0(), get_policy("6.18")), max_preemptions=1)
    assert res.violation is None and res.covered
    assert res.cut == 0 and res.max_depth_seen < 200


def test_the_tick_is_offered_inside_the_kernel_and_forces_the_switch():
    """Choosing the tick while the munmap is in the kernel: the kernel sees need_resched, and at the next
    preemption point the munmap task is not offered, only the waiting one (a switch that costs nothing)."""
    target = KernelTarget(two_tasks_on_cpu0(), get_policy("6.18"))
    m = target.build()
    ctl = m.engine.scheduler
    cpu0 = m.engine.cpus[0]
    seen = {"tick": None, "forced": False}

    def choose(enabled):
        tick = RESCHED - 0
        if seen["tick"] is None and tick in enabled:
            seen["tick"] = len(enabled)
            return tick
        curr = cpu0.curr
        if cpu0.need_resched and curr is not None and cpu0.runqueue and m.engine.preemptible(cpu0, curr):
            assert curr.tid not in enabled and cpu0.runqueue[0].tid in enabled
            assert search.preemption_cost(cpu0.runqueue[0].tid, enabled, ctl.last_task, ctl.yielded) == 0
            seen["forced"] = True
        return search.default_choice(enabled, ctl.last_task, ctl.yielded)
    violation, finished = search.run_machine(m, choose)
    assert violation is None and finished
    assert seen["tick"] is not None and seen["forced"]
    assert search.preemption_cost(RESCHED, [0, RESCHED], 0, False) == 1


def table_batch_fails():
    """The catalogue's table-free-no-invalidate scenario (d86564a2f085; 6.18 on x86, every GFP_NOWAIT
    allocation failing): MADV_DONTNEED on CPU 0 empties a PTE table and frees it through
    tlb_remove_table_one() (call_rcu) while another thread waits for CPU 0; CPU 1 reads the VMA before and
    after some user work."""
    return parse_scenario(get_bug("table-free-no-invalidate").scenario, "test")


def test_the_tick_lets_a_waiting_thread_end_the_grace_period_after_the_table_is_freed():
    """The madvise zaps while the other thread of CPU 0 waits (no tick yet), and switches to it at
    zap_pmd_range()'s cond_resched() after the table went to RCU: the quiescent state that ends the grace
    period. Without d86564a2f085's invalidation the table is freed under CPU 1's paging-structure cache;
    with it the bound is covered clean. (With need_resched set whenever a task waited, no zap could run.)"""
    buggy = search.exhaustive(KernelTarget(table_batch_fails(), get_policy("6.18"),
                                           without_fixes=("table_invalidate",)), max_preemptions=1)
    assert (buggy.violation or {}).get("kind") == "page-table-use-after-free"
    fixed = search.exhaustive(KernelTarget(table_batch_fails(), get_policy("6.18")), max_preemptions=1)
    assert fixed.violation is None and fixed.covered and fixed.cut == 0


class CountTicks:
    """A target whose machines count the ticks their scheduler steps."""

    def __init__(self, target) -> None:
        self.target = target
        self.ticks = 0

    def build(self):
        sim = self.target.build()
        ctl = sim.engine.scheduler
        step = ctl._step

        def counted(a):
            if a <= RESCHED:
                self.ticks += 1
            step(a)
        ctl._step = counted
        return sim


def test_a_tick_is_explored_only_before_a_step_that_reads_need_resched():
    """3.0's fast-mode munmap never reads need_resched: its proof takes no tick although one is enabled at
    every kernel step of the munmap (the other thread waits); 6.18's zap reads it, so ticks are taken."""
    bug = get_bug("fast-mode-3.0")
    fast_mode = CountTicks(bug.variant(True))
    res = search.exhaustive(fast_mode, max_preemptions=bug.max_preemptions)
    assert res.covered and res.violation is None and fast_mode.ticks == 0
    zap = CountTicks(KernelTarget(two_tasks_on_cpu0(), get_policy("6.18")))
    res = search.exhaustive(zap, max_preemptions=1)
    assert res.covered and res.violation is None and zap.ticks > 0
