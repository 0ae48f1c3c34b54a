"""Simulated PTEs zapped per host second, step by step, for exit_mmap of N GiB resident, per policy.

Usage: python benchmarks/teardown_rate.py [GIB ...]   (default: 1 8)
Prints one line per (size, policy) and, last, one JSON object with every rate.
"""
import json
import sys
import time

from mmugather.policies import POLICIES
from mmugather.sim.machine import Simulation
from mmugather.workloads.scenario import parse_scenario


def exit_scenario(gib: int):
    return parse_scenario({"name": f"exit-{gib}g", "machine": {"cpus": 2, "latency_task": False},
                           "process": [{"name": "app", "vma": [{"name": "a", "size": f"{gib}GiB", "populate": True}],
                                        "thread": [{"cpu": 0, "program": [{"op": "exit"}]}]}]}, "benchmark")


def main(sizes: list[int]) -> None:
    out = {}
    for gib in sizes:
        sc = exit_scenario(gib)
        for name, cls in POLICIES.items():
            sim = Simulation(sc, cls)
            t = time.perf_counter()
            m = sim.run()
            dt = time.perf_counter() - t
            rate = m["pages_unmapped"] / dt
            out[f"{name}/{gib}GiB"] = round(rate)
            print(f"exit_mmap {gib:3d} GiB  {name:7s} {m['pages_unmapped']:>10,} PTEs in {dt:6.2f} s = "
                  f"{rate / 1e6:5.2f} M PTEs/s", flush=True)
    print(json.dumps({"pte_per_s": out}))


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [1, 8])
