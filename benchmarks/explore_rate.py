"""The race explorer's speed: transitions per second on the catalogue scenarios, and the time to find each
catalogued bug (and to prove its fixed variant clean at the catalogue bound).

Usage: python benchmarks/explore_rate.py [--quick]   (--quick: rates only, no fixed-variant proofs)
Prints one line per measurement and, last, one JSON object with every figure.
Targets (issue 5): >= 100,000 transitions per second; every bug found in <= 5 s.
"""
import json
import sys
import time

from mmugather.explore import search
from mmugather.explore.bugs import available


def rate(target, hash_states: bool, budget: int) -> tuple[float, int, float]:
    """(transitions per second, transitions, seconds) of an exhaustive search of `budget` executions at
    most (three preemptions: enough work to measure); the best of three runs (the machine is shared)."""
    best = None
    for _ in range(3):
        t = time.perf_counter()
        res = search.exhaustive(target, max_preemptions=3, budget=budget, hash_states=hash_states)
        dt = time.perf_counter() - t
        if best is None or res.transitions / dt > best[0]:
            best = (res.transitions / dt, res.transitions, dt)
    return best


def main(quick: bool) -> None:
    out: dict = {"rates": {}, "bugs": {}}
    for bug in available():
        for fixed in (False, True):
            label = f"{bug.name}/{'fixed' if fixed else 'buggy'}"
            target = bug.variant(fixed)
            bare, n, dt = rate(target, False, 1000)
            hashed, _, _ = rate(target, True, 1000)
            out["rates"][label] = {"bare": round(bare), "hashed": round(hashed)}
            print(f"{label:36s} {bare:>9,.0f} transitions/s without state hashing ({n:,} in {dt:.2f} s), "
                  f"{hashed:>9,.0f}/s with it", flush=True)
    for bug in available():
        t = time.perf_counter()
        res = search.exhaustive(bug.variant(False), max_preemptions=bug.max_preemptions, budget=bug.budget)
        found = time.perf_counter() - t
        entry = {"seconds_to_find": round(found, 3), "executions": res.executions, "transitions": res.transitions,
                 "found": res.violation is not None and res.violation["kind"] == bug.expect}
        line = (f"{bug.name:28s} found in {found:6.2f} s ({res.executions:,} executions, "
                f"{res.transitions:,} transitions){'' if entry['found'] else '  NOT FOUND'}")
        if not quick:
            t = time.perf_counter()
            clean = search.exhaustive(bug.variant(True), max_preemptions=bug.max_preemptions, budget=bug.budget)
            proof = time.perf_counter() - t
            entry.update(seconds_fixed_clean=round(proof, 3), fixed_clean=clean.violation is None and clean.covered,
                         fixed_executions=clean.executions)
            line += (f"; fixed clean at {bug.max_preemptions} preemptions in {proof:.2f} s "
                     f"({clean.executions:,} executions)")
        out["bugs"][bug.name] = entry
        print(line, flush=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main("--quick" in sys.argv[1:])
