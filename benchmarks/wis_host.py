"""will-it-scale's tlb_flush tests on this host next to the model's `wis:TEST:MODE:N` prediction.

Builds benchmarks/wis_tlb_flush.c with the C compiler (cc), runs every test, mode and task count for a few
seconds, simulates the matching built-in workload under the 6.18 policy, and prints host and model
iterations per second and their ratio, with the host's own spread: each host case runs --repeats times
(interleaved: every case once, then again, so a burst of load does not land on one case alone) and the
median is compared, the range of the repeats shown as (max - min) / median. Not a test: the rates depend on
the machine and its load. Twelve cases x 3 repeats x (1 s warm-up + 2 s) plus the model: about 2 minutes,
plus ~1 minute per tlb_flush3 case: the model runs tlb_flush3 over --flush3-passes whole passes (default 1)
rather than MS ms, because its file is in 1-page folios for its first 40 MiB and in PMD-mapped 2 MiB folios
after (as the host's page cache is, workloads/wis.py): MS ms from the start would see only the first part,
while the host counts 2 s of passes after a 1 s warm-up.

    python benchmarks/wis_host.py [--costs FILE] [--seconds S] [--repeats R] [--tests T,..] [--modes M,..]
                                  [--tasks 1,2] [--ms MS] [--flush3-passes P] [--aligned]

--tests, --modes and --tasks pick a subset while iterating (e.g. `--modes threads --tasks 2`: the threads:2
cases alone); the validation of issue 22 is all twelve. For tlb_flush1 threads:N the model's rate is taken
over the 16 phases of its threads' fault-around windows (task i starting i * K pages in, K = 0..15): the
host's threads drift through all of them, each about equally often per iteration (the phase log of
wis_flush1_t2_probe.c, docs/host.md), while the model's keep the phase they start with. So the model's
time per iteration is the mean over the phases (its rate their harmonic mean), and its range is shown;
--aligned gives phase 0 alone (the threads in step, the model's fastest case).
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from mmugather.errors import InputError
from mmugather.machine.costs import Costs, load_costs
from mmugather.policies import POLICIES
from mmugather.sim.simulation import Simulation
from mmugather.workloads.scenario import parse_scenario
from mmugather.workloads.wis import MODES, TESTS, ops_per_s, ops_per_s_over_run, wis_workload

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


def model_rate(test: str, mode: str, tasks: int, ms: int, costs, passes: int = 0, phase: int = 0) -> float:
    """The model's iterations per second: over `passes` whole passes when given (tlb_flush3), else MS ms;
    task i walks its mapping from page i * phase on (wis_workload())."""
    name = f"wis:{test}:{mode}:{tasks}:{f'{passes}p' if passes else ms}"
    scenario = parse_scenario(wis_workload(name, phase), f"built-in workload '{name}'")
    metrics = Simulation(scenario, POLICIES["6.18"], arch="x86", costs=costs).run()
    rate = ops_per_s_over_run(metrics) if passes else ops_per_s(scenario, metrics)
    if rate is None:
        raise SystemExit(f"wis:{test}:{mode}:{tasks}: the model counted no iterations")
    return rate


def costs_or_exit(path: str | None, prog: str) -> Costs:
    """The cost file at `path` (None: the defaults), or one line naming what is wrong and exit 2, before
    any host run."""
    try:
        return load_costs(path)
    except InputError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def phased(test: str, mode: str, tasks: int) -> bool:
    """Whether the case's rate depends on its threads' phase: tlb_flush1 threads (fault-around windows
    whose first page sends no shootdown; tlb_flush2 has none, tlb_flush3 runs whole passes: too long)."""
    return test == "tlb_flush1" and mode == "threads" and tasks > 1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--costs", default=None, help="cost file from `mmugather calibrate -o FILE`")
    ap.add_argument("--seconds", type=int, default=2, help="counted host seconds per run (after 1 s warm-up)")
    ap.add_argument("--repeats", type=int, default=3, help="host runs per case (median compared)")
    ap.add_argument("--tests", default=",".join(TESTS), help="comma-separated tests (default: all)")
    ap.add_argument("--modes", default=",".join(MODES), help="comma-separated modes (default: threads,processes)")
    ap.add_argument("--tasks", default="1,2")
    ap.add_argument("--ms", type=int, default=20, help="simulated run time of the model's workload")
    ap.add_argument("--flush3-passes", type=int, default=1,
                    help="whole passes the model runs tlb_flush3 for (0: --ms like the others)")
    ap.add_argument("--aligned", action="store_true",
                    help="tlb_flush1 threads:N: the model at phase 0 only (threads in step), not over the 16 phases "
                         "of its threads' fault-around windows that the host's threads drift through")
    args = ap.parse_args()
    costs = costs_or_exit(args.costs, "wis_host.py")
    tests, modes = args.tests.split(","), args.modes.split(",")
    for name, got, known in (("--tests", tests, TESTS), ("--modes", modes, MODES)):
        bad = [x for x in got if x not in known]
        if bad:
            ap.error(f"{name}: unknown {', '.join(bad)} (expected some of {', '.join(known)})")
    cases = [(t, m, n) for t in tests for m in modes for n in map(int, args.tasks.split(","))]
    with tempfile.TemporaryDirectory() as tmp:
        exe = build(tmp)
        runs: dict[tuple, list[float]] = {c: [] for c in cases}
        for _ in range(args.repeats):
            for c in cases:
                runs[c].append(host_rate(exe, *c, args.seconds))
    print(f"costs: {args.costs or 'defaults'}; host {args.repeats} x {args.seconds} s per case, "
          f"model {args.ms} ms simulated" + (f" (tlb_flush3: {args.flush3_passes} whole pass(es))"
                                             if args.flush3_passes else ""))
    print(f"{'workload':28s} {'host ops/s':>12s} {'host range':>10s} {'model ops/s':>12s} {'model/host':>10s}")
    inside = 0
    for c in cases:
        h = statistics.median(runs[c])
        passes = args.flush3_passes if c[0] == "tlb_flush3" else 0
        rates = [model_rate(*c, args.ms, costs, passes, k) for k in (range(16) if phased(*c) and not args.aligned
                                                                      else [0])]
        m = statistics.harmonic_mean(rates)
        spread = (max(runs[c]) - min(runs[c])) / h
        inside += 0.85 <= m / h <= 1.15
        print(f"{'wis:' + ':'.join(map(str, c)):28s} {h:12,.0f} {spread:10.0%} {m:12,.0f} {m / h:10.2f}"
              + (f"  (16 phases, {min(rates):,.0f} to {max(rates):,.0f})" if len(rates) > 1 else ""),
              flush=True)
    print(f"{inside}/{len(cases)} within 15% (model/host 0.85-1.15)")
    busy = sum((max(r) - min(r)) / statistics.median(r) > 0.15 for r in runs.values())
    if busy:
        print(f"warning: the host's own range exceeds 15% in {busy} of {len(cases)} cases: the machine was busy, "
              "so those ratios measure its load as much as the model; rerun on a quiet machine")


if __name__ == "__main__":
    main()
