"""The default compare's time: per kernel, and the whole command; this tree beside an older one (a5dff87 by
default), and the ratio.

Usage: python benchmarks/compare_time.py [--old PATH] [--policies P,Q] [--workload W] [--runs N] [--one-only]
       (default: --old /work/wt/base if it exists, the three kernels 2.6.39,3.0,6.18, the default workload,
       1 run each)

Runs `python -m mmugather compare --workload W --policies P --json` once per kernel and tree in child
processes, interleaved (old, new, old, new, ...) so that a busy machine slows both alike, and prints per
kernel the wall-clock and CPU seconds of each (the median of --runs) and old / new: the speed-up. Then
the row `one cmd`: ONE `compare --policies P,Q,...` per tree, the command a user runs (this tree runs the
kernels in parallel worker processes, one per usable core: --jobs), its wall and CPU seconds. CPU time
is the process tree's user + system (the workers included: this script is their subreaper and reaps
them); it is the steadier figure on a shared machine, and the parallel run's wall / CPU shows how many
cores it used. The load average before and after is printed: other users of the cores slow the wall
time. Also says whether both trees printed the same JSON (they need not: the model changed since
a5dff87; the goldens are the check that this tree's results equal the step-by-step model's).
"""
from __future__ import annotations

import argparse
import ctypes
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

NEW = Path(__file__).resolve().parent.parent / "src"
DEFAULT_OLD = Path("/work/wt/base")
PR_SET_CHILD_SUBREAPER = 36


def _reap_orphans() -> None:
    """Wait for the descendants a run left (reparented here): their CPU time counts in RUSAGE_CHILDREN."""
    while True:
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            return


def _run(src: Path, workload: str, policy: str) -> tuple[float, float, bytes]:
    """(wall s, CPU s, stdout) of one compare in a child process with `src` on its PYTHONPATH."""
    env = dict(os.environ, PYTHONPATH=str(src))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "mmugather", "compare", "--workload", workload, "--policies", policy,
                          "--json"], env=env, capture_output=True, check=True).stdout
    _reap_orphans()
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, out


def _timed(old: Path, workload: str, policy: str, runs: int) -> tuple[float, float, float, float, bool]:
    """Medians of --runs of old and new, interleaved: old wall, new wall, old CPU, new CPU; same JSON."""
    ow, oc, nw, nc = [], [], [], []
    same = True
    for _ in range(runs):
        w, c, out_old = _run(old / "src", workload, policy)
        ow.append(w)
        oc.append(c)
        w, c, out_new = _run(NEW, workload, policy)
        nw.append(w)
        nc.append(c)
        same = same and out_old == out_new
    mow, mnw, moc, mnc = (statistics.median(x) for x in (ow, nw, oc, nc))
    return mow, mnw, moc, mnc, same


def _row(name: str, ow: float, nw: float, oc: float, nc: float, same: bool | None) -> str:
    flag = "" if same is None else ("yes" if same else "no")
    return f"{name:8} {ow:8.2f}s {nw:8.2f}s {ow / nw:5.1f}x   {oc:7.2f}s {nc:7.2f}s {oc / nc:5.1f}x  {flag}"


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--old", type=Path, default=None,
                    help=f"the older tree's root (its src/ goes on PYTHONPATH); default {DEFAULT_OLD} if present")
    ap.add_argument("--policies", default="2.6.39,3.0,6.18")
    ap.add_argument("--workload", default="default")
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--one-only", action="store_true", help="only the row of the one whole command")
    a = ap.parse_args()
    old = a.old if a.old is not None else (DEFAULT_OLD if DEFAULT_OLD.is_dir() else None)
    if old is None:
        raise SystemExit(f"compare_time: no old tree: {DEFAULT_OLD} does not exist; give --old PATH "
                         "(a checkout of a5dff87, e.g. `git worktree add /tmp/base a5dff87`)")
    if not (old / "src" / "mmugather").is_dir():
        raise SystemExit(f"compare_time: --old {old}: no src/mmugather there")
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    print(f"default compare time ({a.workload}, median of {a.runs}); old = {old}, new = {NEW.parent}; "
          f"{len(os.sched_getaffinity(0))} usable cores, load average {_load()}")
    print(f"{'kernel':8} {'old wall':>9} {'new wall':>9} {'ratio':>6}   {'old cpu':>8} {'new cpu':>8} {'ratio':>6}  "
          "same")
    if not a.one_only:
        tot = [0.0] * 4
        for policy in a.policies.split(","):
            *times, same = _timed(old, a.workload, policy, a.runs)
            tot = [t + x for t, x in zip(tot, times)]
            print(_row(policy, *times, same), flush=True)
        print(_row("all", *tot, None), flush=True)
    print(_row("one cmd", *_timed(old, a.workload, a.policies, a.runs)), flush=True)
    print(f"load average after: {_load()}")


if __name__ == "__main__":
    main()
