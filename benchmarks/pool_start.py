"""How long a pool of worker processes takes to start, per start method (pool.py chose between them).

Usage: python benchmarks/pool_start.py [--workers N] [--runs N]

For each of fork, forkserver (preloading mmugather.api, as sweeps do) and spawn, in a fresh interpreter
that has imported mmugather.api (as the CLI has when it runs a compare): the seconds from making a
ProcessPoolExecutor of N workers to the first result of each worker (a task that imports mmugather.api),
the median of --runs. compare forks (parallel.py); sweeps use the fork server.
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"
CHILD = """
import multiprocessing, sys, time
from concurrent.futures import ProcessPoolExecutor
import mmugather.api
from mmugather.pool import context

def task(x):
    import mmugather.api
    return x

if __name__ == "__main__":
    method, n = sys.argv[1], int(sys.argv[2])
    t = time.perf_counter()
    with ProcessPoolExecutor(n, mp_context=context(method)) as pool:
        list(pool.map(task, range(n)))
        print(time.perf_counter() - t)
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    env = {"PYTHONPATH": str(SRC)}
    with tempfile.TemporaryDirectory() as d:
        child = Path(d) / "pool_start_child.py"        # a file: spawned workers import their task from it
        child.write_text(CHILD)
        for method in ("fork", "forkserver", "spawn"):
            times = [float(subprocess.run([sys.executable, str(child), method, str(a.workers)], env=env,
                                          check=True, capture_output=True, text=True).stdout)
                     for _ in range(a.runs)]
            print(f"{method:10} {statistics.median(times):6.3f} s to {a.workers} workers' first results "
                  f"(median of {a.runs})", flush=True)


if __name__ == "__main__":
    main()
