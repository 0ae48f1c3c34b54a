"""Where the explorer's time goes, and how much partial-order reduction could save at most: each catalogued
bug's fixed-variant proof (the exhaustive search at the catalogue bound, as `bugs run NAME` runs it), timed by
part:
- build: making a fresh machine for each execution (`target.build()`);
- replay: re-running each execution's prefix up to its branch point (the search is stateless: a task is a
  Python generator, which cannot be copied, so every execution starts from the initial state);
- fingerprints: hashing states near each branch point (explore/state.py);
- rest: the steps after the branch point and the search's own bookkeeping.
`ceiling` is the proof's time over its replay time: how many times faster the proof could get, at the same
executions, if building, hashing and every new step were free.

With --private-kernel-steps the proof runs again with a deliberately unsound independence relation for the
sleep sets: a task step that does no TLB operation, sends no IPI and frees nothing is taken to touch nothing
shared. That is finer than any sound relation on the catalogue's races (they are races on the same PTEs,
locks and pages), so its executions bound what a finer footprint could prune. Its verdict means nothing.

Usage: python benchmarks/explore_split.py [--bugs NAME,...] [--private-kernel-steps] [--hash-window N|all]
Prints one line per proof and, last, one JSON object with every figure.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

from mmugather.errors import InputError
from mmugather.explore import search
from mmugather.explore.bugs import available, get_bug
from mmugather.explore.controlled import MEM, RESCHED

DEFAULT_BUGS = ("madv-dontneed-flush-miss", "mremap-flush-after-unlock", "nested-flush-reset-range")


class TimedTarget:
    """`target`, its builds, prefix replays and fingerprints timed (into `t`); with `private`, the sleep sets
    see the unsound relation of --private-kernel-steps."""

    def __init__(self, target, private: bool) -> None:
        self.target = target
        self.private = private
        self.t = {"build": 0.0, "replay": 0.0, "fingerprints": 0.0, "replay_steps": 0, "fingerprint_calls": 0}

    def build(self):
        t, clock = self.t, time.perf_counter
        t0 = clock()
        m = self.target.build()
        t["build"] += clock() - t0
        ctl, fingerprint = m.engine.scheduler, m.fingerprint

        def timed_fingerprint() -> int:
            t1 = clock()
            h = fingerprint()
            t["fingerprints"] += clock() - t1
            t["fingerprint_calls"] += 1
            return h

        def timed_run(engine, run=ctl.run):
            chooser, start = ctl.chooser, clock()
            replayed = [False]

            def first_choice(enabled):         # the prefix is replayed before the first choice
                if not replayed[0]:
                    replayed[0] = True
                    t["replay"] += clock() - start
                    t["replay_steps"] += len(ctl.prefix)
                return chooser(enabled)
            ctl.chooser = first_choice
            return run(engine)
        m.fingerprint, ctl.run = timed_fingerprint, timed_run
        if self.private:
            ctl._tracked = _private_kernel_steps(ctl)
        return m


def _private_kernel_steps(ctl):
    """ctl's _tracked, but a task step with no TLB operation, no IPI sent and no free reads and writes no
    shared memory (unsound: see the module docstring)."""
    tracked, fp = ctl._tracked, ctl.footprint

    def private(a: int) -> None:
        frees = fp.frees
        tracked(a)
        if a > RESCHED and a >= 0 and not fp.touched and not fp.sent and fp.frees == frees:
            ctl.fp_read &= ~MEM
            ctl.fp_write &= ~MEM
    return private


def proof(name: str, private: bool, window: int | None) -> dict:
    bug = get_bug(name)
    timed = TimedTarget(bug.variant(True), private)
    t0 = time.perf_counter()
    res = search.exhaustive(timed, max_preemptions=bug.max_preemptions, budget=bug.budget,
                            max_depth=bug.max_depth, hash_window=window)
    total = time.perf_counter() - t0
    t = timed.t
    rest = total - t["build"] - t["replay"] - t["fingerprints"]
    return {"executions": res.executions, "pruned": res.pruned, "slept": res.slept, "covered": res.covered,
            "violation": (res.violation or {}).get("kind"), "seconds": round(total, 3),
            "build": round(t["build"] / total, 3), "replay": round(t["replay"] / total, 3),
            "fingerprints": round(t["fingerprints"] / total, 3), "rest": round(rest / total, 3),
            "replay_steps": t["replay_steps"],
            "replay_us_per_step": round(1e6 * t["replay"] / max(t["replay_steps"], 1), 2),
            "fingerprint_calls": t["fingerprint_calls"],
            "us_per_fingerprint": round(1e6 * t["fingerprints"] / max(t["fingerprint_calls"], 1), 1),
            "ceiling": round(total / max(t["replay"], 1e-9), 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bugs", default=",".join(DEFAULT_BUGS), help="comma-separated catalogue names")
    ap.add_argument("--private-kernel-steps", action="store_true",
                    help="also run each proof with the unsound relation (a bound on partial-order reduction)")
    ap.add_argument("--hash-window", default=str(search.HASH_WINDOW),
                    help=f"steps after each branch point within which states are hashed, or 'all' "
                         f"(default {search.HASH_WINDOW}, the explorer's)")
    a = ap.parse_args()
    if a.hash_window != "all" and not (a.hash_window.isdigit() and int(a.hash_window) >= 1):
        print(f"explore_split.py: --hash-window: expected a number >= 1 or 'all', got {a.hash_window!r}",
              file=sys.stderr)
        raise SystemExit(2)
    window = None if a.hash_window == "all" else int(a.hash_window)
    names = [n for n in a.bugs.split(",") if n]
    try:
        for n in names:
            get_bug(n)
    except InputError as e:
        print(f"explore_split.py: --bugs: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    out: dict = {}
    for n in names:
        r = out[n] = {"sound": proof(n, False, window)}
        s = r["sound"]
        print(f"{n:28s} {s['seconds']:7.2f} s  {s['executions']:>7,} executions ({s['pruned']:,} pruned, "
              f"{s['slept']:,} slept)  build {s['build']:.0%}  replay {s['replay']:.0%} "
              f"({s['replay_steps']:,} steps, {s['replay_us_per_step']} us)  fingerprints {s['fingerprints']:.0%} "
              f"({s['fingerprint_calls']:,}, {s['us_per_fingerprint']} us)  rest {s['rest']:.0%}  "
              f"ceiling x{s['ceiling']}", flush=True)
        if a.private_kernel_steps:
            p = r["private_kernel_steps"] = proof(n, True, window)
            print(f"{'':28s} private kernel steps (unsound bound): {p['executions']:,} executions "
                  f"(x{s['executions'] / p['executions']:.2f} fewer, {p['slept']:,} slept), {p['seconds']:.2f} s "
                  f"(x{s['seconds'] / p['seconds']:.2f})", flush=True)
    print(json.dumps({"available": [b.name for b in available()], "proofs": out}))


if __name__ == "__main__":
    main()
