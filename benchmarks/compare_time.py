"""The default compare's time per kernel: this tree beside an older one (a5dff87 by default), and the ratio.

Usage: python benchmarks/compare_time.py [--old PATH] [--policies P,Q] [--workload W] [--runs N]
       (default: --old /work/wt/base if it exists, the three kernels 2.6.39,3.0,6.18, the default workload,
       1 run each)

Runs `python -m mmugather compare --workload W --policies P --json` once per kernel and tree in child
processes, interleaved (old, new, old, new, ...) so that a busy machine slows both alike, and prints per
kernel the wall-clock and CPU seconds of each (the median of --runs) and old / new: the speed-up. CPU
time (the child's user + system) is the steadier figure on a shared machine. Also says whether both
trees printed the same JSON (they need not: the model changed since a5dff87; the goldens are the check
that this tree's results equal the step-by-step model's).
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

NEW = Path(__file__).resolve().parent.parent / "src"
DEFAULT_OLD = Path("/work/wt/base")


def _run(src: Path, workload: str, policy: str) -> tuple[float, float, bytes]:
    """(wall s, CPU s, stdout) of one compare in a child process with `src` on its PYTHONPATH."""
    env = dict(os.environ, PYTHONPATH=str(src))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "mmugather", "compare", "--workload", workload, "--policies", policy,
                          "--json"], env=env, capture_output=True, check=True).stdout
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--old", type=Path, default=None,
                    help=f"the older tree's root (its src/ goes on PYTHONPATH); default {DEFAULT_OLD} if present")
    ap.add_argument("--policies", default="2.6.39,3.0,6.18")
    ap.add_argument("--workload", default="default")
    ap.add_argument("--runs", type=int, default=1)
    a = ap.parse_args()
    old = a.old if a.old is not None else (DEFAULT_OLD if DEFAULT_OLD.is_dir() else None)
    if old is None:
        raise SystemExit(f"compare_time: no old tree: {DEFAULT_OLD} does not exist; give --old PATH "
                         "(a checkout of a5dff87, e.g. `git worktree add /tmp/base a5dff87`)")
    if not (old / "src" / "mmugather").is_dir():
        raise SystemExit(f"compare_time: --old {old}: no src/mmugather there")
    print(f"default compare time per kernel ({a.workload}, median of {a.runs}); old = {old}, new = {NEW.parent}")
    print(f"{'kernel':8} {'old wall':>9} {'new wall':>9} {'ratio':>6}   {'old cpu':>8} {'new cpu':>8} {'ratio':>6}  "
          "same")
    tot = {"ow": 0.0, "nw": 0.0, "oc": 0.0, "nc": 0.0}
    for policy in a.policies.split(","):
        ow, oc, nw, nc = [], [], [], []
        same = True
        for _ in range(a.runs):
            w, c, out_old = _run(old / "src", a.workload, policy)
            ow.append(w)
            oc.append(c)
            w, c, out_new = _run(NEW, a.workload, policy)
            nw.append(w)
            nc.append(c)
            same = same and out_old == out_new
        mow, mnw, moc, mnc = (statistics.median(x) for x in (ow, nw, oc, nc))
        for k, v in zip(("ow", "nw", "oc", "nc"), (mow, mnw, moc, mnc)):
            tot[k] += v
        print(f"{policy:8} {mow:8.2f}s {mnw:8.2f}s {mow / mnw:5.1f}x   {moc:7.2f}s {mnc:7.2f}s {moc / mnc:5.1f}x  "
              f"{'yes' if same else 'no'}", flush=True)
    print(f"{'all':8} {tot['ow']:8.2f}s {tot['nw']:8.2f}s {tot['ow'] / tot['nw']:5.1f}x   {tot['oc']:7.2f}s "
          f"{tot['nc']:7.2f}s {tot['oc'] / tot['nc']:5.1f}x")


if __name__ == "__main__":
    main()
