"""Sweep throughput: points per second with 1 and 2 local worker processes, and the speedup.

Usage: python benchmarks/sweep_throughput.py [SEEDS]   (default 150: 300 points, workload 'small', 2 policies)
Each timing is a whole `run_sweep` (executor start-up included) into a fresh directory, after one small
warm-up sweep that starts the fork server. Prints one line per worker count and, last, one JSON object.
"""
import json
import sys
import tempfile
import time
from pathlib import Path

from mmugather.sweep import run_sweep

SWEEP = """[grid]
policies = ["2.6.39", "3.0"]
workloads = ["small"]
cpus = [4]
preempt = ["voluntary"]
fail_nowait = [0.0]
seeds = {{from = 1, to = {seeds}}}
"""


def timed_sweep(tmp: Path, name: str, seeds: int, workers: int) -> tuple[int, float]:
    sweep_file = tmp / f"{name}.toml"
    sweep_file.write_text(SWEEP.format(seeds=seeds))
    t = time.perf_counter()
    summary = run_sweep(sweep_file, tmp / name, workers=workers, progress=False)
    return summary["ran"], time.perf_counter() - t


def main(seeds: int) -> None:
    rates = {}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        timed_sweep(tmp, "warm-up", 2, 2)
        for workers in (1, 2):
            points, dt = timed_sweep(tmp, f"w{workers}", seeds, workers)
            rates[workers] = points / dt
            print(f"{workers} worker(s): {points} points in {dt:5.2f} s = {rates[workers]:6.1f} points/s", flush=True)
    speedup = rates[2] / rates[1]
    print(f"speedup with 2 workers: {speedup:.2f}x")
    print(json.dumps({"points_per_s": {str(w): round(r, 1) for w, r in rates.items()}, "speedup": round(speedup, 2)}))


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 150)
