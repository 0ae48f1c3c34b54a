"""Teardown rate of the simulator against this host's kernel, and host memory per resident simulated page.

Usage: python benchmarks/teardown_rate.py [GIB ...] [--policies P,Q] [--runs N] [--kernel-runs N] [--steps]
                                         [--vmas N]
       (default: 1 8 64 GiB, every built-in policy, 7 runs per case below 64 GiB and 1 at 64 GiB, 5 kernel runs,
       one VMA)

Measures, in one run on this machine:
- the host kernel: munmap(2) of a touched 1 GiB region of 4 KiB pages (THP off) in a fresh child pinned
  to CPU 0, pages per second, median of --kernel-runs runs (host/calibrate.py);
- the simulator, for each size and policy: exit_mmap of a process exiting with N GiB resident and munmap of
  an N GiB resident VMA (2 CPUs, nothing else running), simulated PTEs zapped per host second of
  Simulation.run() (wall clock, set-up excluded; CPU time printed too), median of the runs, each case in a
  fresh child process; the ratio simulator / kernel;
- with --steps, the same step by step (the reference path the explorer uses; issue 2's target: >= 1 M
  PTEs per second);
- with --vmas N, the same resident size cut into N VMAs side by side (GIB / N each; munmap then unmaps them
  one by one): the cost of many small VMAs (issue 19);
- host memory per resident simulated page: (peak RSS of the child - its RSS once imports are done) /
  resident pages; the figure with the interpreter counted is printed too.
The last line is one JSON object: {"kernel_pages_per_s", "sim": {POLICY: {"pages_per_s", "ratio"}},
"bytes_per_resident_page"}: a policy's rate is the slowest of all its runs (every size, exit and munmap),
bytes_per_resident_page the largest of the runs at the largest size.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time


def _scenario(op: str, gib: int, vmas: int) -> dict:
    """The case's scenario: the built-in exit or munmap of `gib` GiB, its VMA cut into `vmas` side by side."""
    from mmugather.workloads.builtin import _exit, _munmap
    d = (_exit if op == "exit" else _munmap)(gib)
    if vmas > 1:
        proc = d["process"][0]
        proc["vma"] = [{"name": f"v{i}", "size": (gib << 30) // vmas, "populate": True} for i in range(vmas)]
        if op == "munmap":
            proc["thread"][0]["program"] = [{"op": "munmap", "vma": f"v{i}"} for i in range(vmas)] + [{"op": "exit"}]
    return d


def _case(op: str, gib: int, policy: str, runs: int, fast: bool, vmas: int) -> dict:
    """In a child: run one case `runs` times (on the fast path, or step by step); rates and peak memory."""
    import gc

    from mmugather.policies import POLICIES
    from mmugather.sim.simulation import Simulation
    from mmugather.workloads.scenario import parse_scenario
    sc = parse_scenario(_scenario(op, gib, vmas), "benchmark")
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    wall, cpu = [], []
    for _ in range(runs):
        sim = Simulation(sc, POLICIES[policy], fast=fast)
        t, p = time.perf_counter(), time.process_time()
        m = sim.run()
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - p)
        if m["violations"]:
            raise SystemExit(f"{op} {gib} GiB {policy}: violations {m['violations'][:3]}")
        del sim
        gc.collect()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    ptes = m["pages_unmapped"]
    return {"ptes": ptes, "pages_per_s": ptes / statistics.median(wall),
            "cpu_pages_per_s": ptes / statistics.median(cpu), "resident_pages": gib << 18, "rss0": rss0,
            "peak_rss": peak}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("sizes", nargs="*", type=int, default=[1, 8, 64], help="GiB resident")
    ap.add_argument("--policies", default=None, help="comma-separated (default: every built-in policy)")
    ap.add_argument("--runs", type=int, default=7, help="runs per case below 64 GiB (one at 64 GiB and above)")
    ap.add_argument("--kernel-runs", type=int, default=5)
    ap.add_argument("--steps", action="store_true",
                    help="step by step (Simulation(fast=False), the explorer's reference path) "
                         "instead of the fast path")
    ap.add_argument("--vmas", type=int, default=1,
                    help="cut the resident size into this many VMAs side by side (default: one)")
    ap.add_argument("--case", nargs=6, metavar=("OP", "GIB", "POLICY", "RUNS", "FAST", "VMAS"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.case:
        op, gib, policy, runs, fast, vmas = a.case
        print(json.dumps(_case(op, int(gib), policy, int(runs), fast == "fast", int(vmas))))
        return

    from mmugather.host.calibrate import host_kernel_pages_per_s
    from mmugather.policies import POLICIES
    policies = a.policies.split(",") if a.policies else list(POLICIES)
    unknown = [p for p in policies if p not in POLICIES]
    if unknown:
        print(f"teardown_rate.py: --policies: unknown {', '.join(unknown)} (built-in: {', '.join(POLICIES)})",
              file=sys.stderr)
        raise SystemExit(2)
    if a.vmas < 1:
        print(f"teardown_rate.py: --vmas: expected a number >= 1, got {a.vmas}", file=sys.stderr)
        raise SystemExit(2)
    uneven = [gib for gib in a.sizes if (gib << 18) % a.vmas]
    if uneven:
        print(f"teardown_rate.py: --vmas {a.vmas}: {uneven[0]} GiB is not a whole number of 4 KiB pages per VMA",
              file=sys.stderr)
        raise SystemExit(2)
    kernel = host_kernel_pages_per_s(runs=a.kernel_runs)
    print(f"host kernel munmap of touched 4 KiB pages (1 GiB, median of {a.kernel_runs}): "
          f"{kernel / 1e6:.2f} M pages/s", flush=True)
    slowest: dict[str, tuple[float, str]] = {}
    mem: list[tuple[float, float, str]] = []
    top = max(a.sizes)
    for gib in a.sizes:
        for policy in policies:
            for op in ("exit", "munmap"):
                runs = a.runs if gib < 64 else 1
                out = subprocess.run([sys.executable, __file__, "--case", op, str(gib), policy, str(runs),
                                      "steps" if a.steps else "fast", str(a.vmas)],
                                     capture_output=True, text=True)
                if out.returncode:
                    raise SystemExit(f"{op} {gib} GiB {policy}: {out.stderr.strip().splitlines()[-1:]}")
                r = json.loads(out.stdout.strip().splitlines()[-1])
                rate = r["pages_per_s"]
                per_page = (r["peak_rss"] - r["rss0"]) / r["resident_pages"]
                total_per_page = r["peak_rss"] / r["resident_pages"]
                name = "exit_mmap" if op == "exit" else "munmap   "
                shape = f" in {a.vmas} VMAs" if a.vmas > 1 else ""
                print(f"{name} {gib:3d} GiB{shape}  {policy:7s} {r['ptes']:>11,} PTEs  {rate / 1e6:6.1f} M PTEs/s "
                      f"(CPU {r['cpu_pages_per_s'] / 1e6:5.1f})  ratio {rate / kernel:5.1f}  "
                      f"{per_page:5.1f} B/page ({total_per_page:5.1f} with the interpreter)", flush=True)
                if policy not in slowest or rate < slowest[policy][0]:
                    slowest[policy] = (rate, f"{op} {gib} GiB{shape}")
                if gib == top:
                    mem.append((per_page, total_per_page, f"{policy} {op}"))
    for policy, (rate, where) in slowest.items():
        print(f"{policy}: slowest run {where}: {rate / 1e6:.1f} M PTEs/s, ratio {rate / kernel:.1f}")
    worst = max(mem)
    print(f"host memory per resident page at {top} GiB: {worst[0]:.1f} B ({worst[1]:.1f} B with the interpreter), "
          f"worst run {worst[2]}")
    print(json.dumps({"kernel_pages_per_s": round(kernel),
                      "sim": {p: {"pages_per_s": round(r), "ratio": round(r / kernel, 2)}
                              for p, (r, _) in slowest.items()},
                      "bytes_per_resident_page": round(worst[0], 2)}))


if __name__ == "__main__":
    main()
