"""The explorer's transitions per second, this tree beside others (older checkouts), interleaved so that
every tree sees the same machine load: explore_rate.py --quick's rows (an exhaustive search of at most
1,000 executions, three preemptions, with and without state hashing), CPU time (steadier than wall time
on a shared machine), the best of three searches per process; each tree runs in its own subprocess of
this interpreter with PYTHONPATH at its src/, `--rounds` times in rotated order; medians are printed.

Usage: python benchmarks/explore_rate_ab.py --old /path/to/old/checkout [--rounds N]
Prints one line per row (rates per tree, and each tree's transitions/executions, which must not differ
where the trees' searches agree) and, last, one JSON object with every figure.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

NEW = Path(__file__).resolve().parents[1]


def child() -> None:
    """In the subprocess: {row: [bare/s, hashed/s, transitions bare, hashed, executions bare, hashed]}."""
    from mmugather.explore import search
    from mmugather.explore.bugs import available

    def rate(target, hash_states: bool) -> tuple[float, int, int]:
        best = 0.0
        for _ in range(3):
            t = time.process_time()
            res = search.exhaustive(target, max_preemptions=3, budget=1000, hash_states=hash_states)
            best = max(best, res.transitions / max(time.process_time() - t, 1e-9))
        return best, res.transitions, res.executions
    out = {}
    for bug in available():
        for fixed in (False, True):
            target = bug.variant(fixed)
            b, h = rate(target, False), rate(target, True)
            out[f"{bug.name}/{'fixed' if fixed else 'buggy'}"] = [round(b[0]), round(h[0]), b[1], h[1], b[2], h[2]]
    print(json.dumps(out))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old", required=True, type=Path, action="append", help="an older checkout (repeatable)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        child()
        return
    for p in a.old:
        if not (p / "src" / "mmugather").is_dir():
            print(f"explore_rate_ab.py: --old {p}: no src/mmugather there", file=sys.stderr)
            raise SystemExit(2)
    trees = {str(p): p for p in a.old} | {"new": NEW}
    names = list(trees)
    runs: dict[str, list[dict]] = {k: [] for k in names}
    for i in range(a.rounds):
        for k in names[i % len(names):] + names[:i % len(names)]:
            env = dict(os.environ, PYTHONPATH=str(trees[k] / "src"))
            p = subprocess.run([sys.executable, __file__, "--old", ".", "--child"], env=env, capture_output=True,
                               text=True, check=True)
            runs[k].append(json.loads(p.stdout))
    report: dict = {}
    for row in runs["new"][0]:
        have = [k for k in names if row in runs[k][0]]
        report[row] = {k: {"bare": statistics.median(r[row][0] for r in runs[k]),
                           "hashed": statistics.median(r[row][1] for r in runs[k]), "work": runs[k][0][row][2:]}
                       for k in have}
        print(f"{row:36s} " + "  ".join(f"{k}: {v['bare']:>9,.0f} bare {v['hashed']:>9,.0f} hashed {v['work']}"
                                         for k, v in report[row].items()), flush=True)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
