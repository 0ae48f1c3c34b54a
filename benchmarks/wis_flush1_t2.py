"""tlb_flush1 threads:2 taken apart: host and model, step by step (docs/host.md, issue 22).

Host: benchmarks/wis_flush1_t2_probe.c (tlb_flush1's loop with its steps timed apart; both threads
SCHED_FIFO so that other jobs do not deschedule them) in three variants, 1 and 2 threads each:
`loop` (write, MADV_DONTNEED, read: tlb_flush1), `noread` (write, MADV_DONTNEED: only madvise's
shootdown) and `nodn` (read, write: only wp_page_copy()'s shootdown, sent under the PTE lock), beside
shootdown_probe.c `mutual` (the host's shootdown level, which switches within seconds), interleaved over
--rounds; then full_flush_probe.c (what a full flush costs the CPU that takes it, against a 2-page one).
Model: the same variants under 6.18 x86 with --costs, each step's time from the --trace timeline, for
threads:2 also with thread 1 starting K pages into its mapping (K = 0..15): the model's two threads
otherwise start together and stay in phase, their 16-page fault-around windows aligned, which the host's
do not (its threads start apart and drift at every pass).

    python benchmarks/wis_flush1_t2.py [--costs FILE] [--rounds R] [--ms MS] [--no-host] [--no-model]

Per step: us per iteration (the step's total time over the iterations, so the steps add up to the
iteration less user-mode work); per-thread iteration time = threads / ops_per_s. Not a test.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import tempfile
from collections import defaultdict
from pathlib import Path

from mmugather import api
from mmugather.machine.costs import Costs
from mmugather.policies import POLICIES
from mmugather.workloads.scenario import parse_scenario
from mmugather.workloads.wis import wis_workload
from wis_host import costs_or_exit  # this directory's (the script's own: sys.path[0])

HERE = Path(__file__).parent
SOURCES = {"wis_flush1_t2_probe": HERE / "wis_flush1_t2_probe.c", "full_flush_probe": HERE / "full_flush_probe.c",
           "shootdown_probe": HERE.parent / "src" / "mmugather" / "host" / "shootdown_probe.c"}
VARIANTS = ("loop", "noread", "nodn")
STEPS = ("write", "madvise", "read")


def build(out_dir: str) -> dict[str, str]:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise SystemExit("no C compiler (cc) on this host")
    exes = {}
    for name, src in SOURCES.items():
        exes[name] = os.path.join(out_dir, name)
        subprocess.run([cc, "-O2", "-pthread", "-o", exes[name], str(src)], check=True)
    return exes


def run_json(cmd: list[str]) -> dict:
    return json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=60).stdout)


def host_steps(probe: dict) -> dict[str, float]:
    """us per iteration in each step, thread 0 (both kinds of page together), and the first-of-window write."""
    t = probe["steps"][0]
    out = {}
    for step in STEPS:
        if step in t:
            n = sum(t[step][k][0] for k in t[step])
            out[step] = sum(t[step][k][0] * t[step][k][1] for k in t[step]) / 1000 / max(n, 1)
    out["write first"] = t["write"]["first"][1] / 1000
    return out


def host_round(exes: dict[str, str]) -> dict:
    """One round: the mutual probe, every variant with 1 and 2 threads, the mutual probe again."""
    level = [statistics.median(run_json([exes["shootdown_probe"], "mutual", "3000"])["a_ns"]) / 1000]
    out: dict = {}
    for v in VARIANTS:
        for n, secs in ((1, "1"), (2, "2")):
            p = run_json([exes["wis_flush1_t2_probe"], v, str(n), secs, "fifo"])
            out[(v, n)] = {"ops": p["ops_per_s"], "ipis": sum(p["tlb"]) / max(p["iterations"], 1), **host_steps(p)}
    level.append(statistics.median(run_json([exes["shootdown_probe"], "mutual", "3000"])["a_ns"]) / 1000)
    out["level"] = level
    return out


def full_flush(exes: dict[str, str], rounds: int) -> dict[tuple[str, int], list[float]]:
    """B's loss per IPI (us), full flush and 2-page flush paired, working sets of 0, 8 and 32 pages; only
    the runs in which CPU 1 took an IPI for every call (not descheduled)."""
    out: dict[tuple[str, int], list[float]] = defaultdict(list)
    for _ in range(rounds * 3):
        for w in (0, 8, 32):
            for mode in ("one", "full"):
                p = run_json([exes["full_flush_probe"], mode, str(w), "5000"])
                if p["tlb"][1] == p["calls"]:
                    out[(mode, w)].append(p["b_loss_per_ipi_ns"] / 1000)
    return out


def model_scenario(variant: str, n: int, ms: int, phase: int):
    """wis:tlb_flush1:threads:N:MS with the variant's loop body; thread 1 starts `phase` pages in."""
    d = wis_workload(f"wis:tlb_flush1:threads:{n}:{ms}", phase)
    for th in d["process"][0]["thread"]:
        inner = th["program"][0]["body"][1]
        w, m, r = inner["body"]
        inner["body"] = {"loop": [w, m, r], "noread": [w, m], "nodn": [r, w]}[variant]
    return parse_scenario(d, f"tlb_flush1 {variant} threads:{n}")


def trace_steps(path: str, iterations: float) -> dict[str, float]:
    """us per iteration in each step of CPU 0's task, from a --trace timeline: its fault and madvise spans
    (a write fault holds do_wp_page or no do_fault_around; a read fault holds do_fault_around)."""
    total: dict[str, float] = defaultdict(float)
    first: list[float] = []
    stack: list[tuple[str, float, set[str]]] = []
    for e in json.loads(Path(path).read_text())["traceEvents"]:
        if e.get("tid") != 10000 or e.get("ph") not in ("B", "E") or e["name"].startswith("wis/"):
            continue
        if e["ph"] == "B":
            stack.append((e["name"], e["ts"], set()))
            continue
        name, t0, kids = stack.pop()
        if stack:
            stack[-1][2].update(kids | {name})
            continue
        us = e["ts"] - t0
        if name == "sys_madvise_dontneed":
            total["madvise"] += us
        elif name == "do_page_fault":
            step = "read" if "do_fault_around" in kids else "write"
            total[step] += us
            if step == "write" and "do_wp_page" not in kids:
                first.append(us)
    out = {k: v / iterations for k, v in total.items()}
    out["write first"] = statistics.mean(first) if first else 0.0
    return out


def model_case(variant: str, n: int, ms: int, phase: int, costs: Costs, tmp: str) -> dict:
    path = os.path.join(tmp, "trace.json")
    res = api.run(model_scenario(variant, n, ms, phase), POLICIES["6.18"], costs=costs, arch="x86", trace=path)
    m = res.to_dict()["metrics"]
    it = m["loop_iterations"]
    return {"ops": it * 1e9 / (ms * 1e6), "ipis": m["ipis_sent"] / max(it, 1), **trace_steps(path, it / n)}


def row(name: str, r: dict, n: int) -> str:
    steps = "".join(f" {r.get(s, 0):8.2f}" for s in (*STEPS, "write first"))
    return f"{name:34s} {r['ops']:10,.0f} {n * 1e6 / r['ops']:8.2f} {r['ipis']:6.2f}{steps}"


HEADER = (f"{'case':34s} {'ops/s':>10s} {'us/iter':>8s} {'IPI/it':>6s} {'write':>8s} {'madvise':>8s} {'read':>8s}"
          f" {'wr first':>8s}")


def mean_of(rows: list[dict]) -> dict:
    return {k: statistics.mean(r.get(k, 0.0) for r in rows) for k in rows[0]}


def report_model(costs: Costs, ms: int) -> None:
    print(f"model (6.18 x86, {ms} ms each; per step: us per iteration of thread 0)\n{HEADER}")
    with tempfile.TemporaryDirectory() as tmp:
        for v in VARIANTS:
            for n in (1, 2):
                print(row(f"model {v}:{n}", model_case(v, n, ms, 0, costs, tmp), n), flush=True)
        phases = [model_case("loop", 2, ms, k, costs, tmp) for k in range(16)]
    for k in (1, 8, 15):
        print(row(f"model loop:2 thread 1 from page {k}", phases[k], 2))
    print(row("model loop:2, mean over pages 0-15", mean_of(phases), 2))
    print(f"  (ops/s over the 16 phases: {min(p['ops'] for p in phases):,.0f} to {max(p['ops'] for p in phases):,.0f})")


def report_host(rounds: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        exes = build(tmp)
        for i in range(rounds):
            r = host_round(exes)
            lv = r.pop("level")
            print(f"host round {i + 1} (mutual probe before/after: {lv[0]:.1f} / {lv[1]:.1f} us; "
                  f"load {os.getloadavg()[0]:.1f})\n{HEADER}", flush=True)
            for (v, n), res in r.items():
                print(row(f"host {v}:{n}", res, n), flush=True)
        ff = full_flush(exes, rounds)
    print("full_flush_probe: B's loss per IPI, us (median, runs with an IPI for every call)")
    for w in (0, 8, 32):
        one, full = ff.get(("one", w), []), ff.get(("full", w), [])
        if one and full:
            print(f"  working set {w:2d} pages: 2-page flush {statistics.median(one):5.2f} ({len(one)} runs), "
                  f"full flush {statistics.median(full):5.2f} ({len(full)} runs)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--costs", default=None, help="cost file from `mmugather calibrate -o FILE`")
    ap.add_argument("--rounds", type=int, default=3, help="host rounds (each ~15 s)")
    ap.add_argument("--ms", type=int, default=10, help="simulated ms per model case")
    ap.add_argument("--no-host", action="store_true")
    ap.add_argument("--no-model", action="store_true")
    args = ap.parse_args()
    costs = costs_or_exit(args.costs, "wis_flush1_t2.py")
    if not args.no_host:
        report_host(args.rounds)
    if not args.no_model:
        report_model(costs, args.ms)


if __name__ == "__main__":
    main()
