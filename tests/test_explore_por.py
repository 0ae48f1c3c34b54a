"""Partial-order reduction (sleep sets over measured step footprints) against the unpruned search: on small
kernel scenarios, buggy and fixed, both find the same verdict and the same violation kind; the reduction
only ever explores fewer executions, and on a scenario with independent user steps it explores strictly
fewer."""
import json

import pytest
from helpers import cli_here, scenario

from mmugather.explore import search
from mmugather.explore.bugs import get_bug
from mmugather.explore.target import KernelTarget
from mmugather.policies import get_policy


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
