"""will-it-scale's tlb_flush tests on this host next to the model's `wis:TEST:MODE:N` prediction.

Builds benchmarks/wis_tlb_flush.c with the C compiler (cc), runs every test, mode and task count for a few
seconds, simulates the matching built-in workload under the 6.18 policy, and prints host and model
iterations per second and their ratio. Not a test: the rates depend on the machine and its load.

    python benchmarks/wis_host.py [--costs FILE] [--seconds S] [--tasks 1,2] [--ms MS]
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from mmugather.machine.costs import load_costs
from mmugather.policies import POLICIES
from mmugather.sim.simulation import Simulation
from mmugather.workloads.builtin import resolve_workload
from mmugather.workloads.wis import MODES, TESTS, ops_per_s

SOURCE = Path(__file__).with_name("wis_tlb_flush.c")


def build(out_dir: str) -> str:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise SystemExit("no C compiler (cc) on this host")
    exe = os.path.join(out_dir, "wis_tlb_flush")
    subprocess.run([cc, "-O2", "-pthread", "-o", exe, str(SOURCE)], check=True)
    return exe


def host_rate(exe: str, test: str, mode: str, tasks: int, seconds: int) -> float:
    out = subprocess.run([exe, test[-1], mode, str(tasks), str(seconds)], capture_output=True, text=True,
                         check=True, timeout=seconds + 30).stdout
    return float(out.strip().split("=", 1)[1])


def model_rate(test: str, mode: str, tasks: int, ms: int, costs) -> float:
    scenario = resolve_workload(f"wis:{test}:{mode}:{tasks}:{ms}")
    metrics = Simulation(scenario, POLICIES["6.18"], arch="x86", costs=costs).run()
    return ops_per_s(scenario, metrics)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--costs", default=None, help="cost file from `mmugather calibrate -o FILE`")
    ap.add_argument("--seconds", type=int, default=3)
    ap.add_argument("--tasks", default="1,2")
    ap.add_argument("--ms", type=int, default=20, help="simulated run time of the model's workload")
    args = ap.parse_args()
    costs = load_costs(args.costs)
    with tempfile.TemporaryDirectory() as tmp:
        exe = build(tmp)
        print(f"costs: {args.costs or 'defaults'}; host {args.seconds} s per run, model {args.ms} ms simulated")
        print(f"{'workload':28s} {'host ops/s':>12s} {'model ops/s':>12s} {'model/host':>10s}")
        for test in TESTS:
            for mode in MODES:
                for tasks in map(int, args.tasks.split(",")):
                    h = host_rate(exe, test, mode, tasks, args.seconds)
                    m = model_rate(test, mode, tasks, args.ms, costs)
                    print(f"{f'wis:{test}:{mode}:{tasks}':28s} {h:12,.0f} {m:12,.0f} {m / h:10.2f}", flush=True)


if __name__ == "__main__":
    main()
