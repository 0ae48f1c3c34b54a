"""The bug catalogue: every entry's buggy variant shows its violation, its fixed variant none.

CI runs each buggy variant at the entry's bound and each fixed variant at a bound of one preemption; the
slow tests prove the fixed variants clean at the entry's bound and one more."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from mmugather.explore import search
from mmugather.explore.bugs import CATALOGUE, available, get_bug, run_bug

ROOT = Path(__file__).resolve().parent.parent
BUGS = [b.name for b in available()]


def test_the_catalogue_has_the_issue_entries_and_they_run_with_this_build():
    assert {"fast-mode-3.0", "madv-dontneed-flush-miss", "mremap-flush-after-unlock",
            "nested-flush-reset-range"} <= set(BUGS)
    assert len({b.name for b in CATALOGUE}) == len(CATALOGUE)
    for bug in available():
        assert bug.commits and 2000 < bug.year < 2030 and bug.buggy_without != bug.fixed_without


@pytest.mark.parametrize("name", BUGS)
def test_buggy_variant_fails_with_the_expected_violation(name):
    bug = get_bug(name)
    res = search.exhaustive(bug.variant(fixed=False), max_preemptions=bug.max_preemptions, budget=bug.budget)
    assert res.violation is not None and res.violation["kind"] == bug.expect


@pytest.mark.parametrize("name", BUGS)
def test_fixed_variant_passes_with_one_preemption(name):
    res = search.exhaustive(get_bug(name).variant(fixed=True), max_preemptions=1)
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
    res = search.exhaustive(bug.variant(fixed=True), max_preemptions=bug.slow_max_preemptions, budget=10**7)
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


def test_a_bug_whose_fixed_variant_fails_makes_bugs_run_fail():
    """run_bug's verdict needs both halves: the buggy variant as the fixed one fails the check."""
    bug = get_bug("fast-mode-3.0")
    from dataclasses import replace
    both_buggy = replace(bug, fixed_without=bug.buggy_without)
    out = run_bug(both_buggy, max_preemptions=1)
    assert out["fixed"]["violation"] is not None and not out["ok"]
