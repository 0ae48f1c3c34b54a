"""What a timeline costs: simulated PTEs zapped per host second for exit_mmap of N GiB, untraced and with
sim/tracing.py's attach_trace, per policy, best of R runs each (interleaved, so load drifts hit both).

Usage: python benchmarks/trace_overhead.py [GIB [R]]   (default: 1 3)
Prints one line per policy and, last, one JSON object with every rate and the trace's event count.
"""
import json
import sys
import time

from mmugather.policies import POLICIES
from mmugather.sim.simulation import Simulation
from mmugather.sim.tracing import attach_trace
from mmugather.workloads.scenario import parse_scenario


def exit_scenario(gib: int):
    return parse_scenario({"name": f"exit-{gib}g", "machine": {"cpus": 2, "latency_task": False},
                           "process": [{"name": "app", "vma": [{"name": "a", "size": f"{gib}GiB", "populate": True}],
                                        "thread": [{"cpu": 0, "program": [{"op": "exit"}]}]}]}, "benchmark")


def rate(sc, cls, traced: bool) -> tuple[float, int]:
    """(PTEs per host second of sim.run(), events in the trace or 0)."""
    sim = Simulation(sc, cls)
    trace = attach_trace(sim) if traced else None
    t = time.perf_counter()
    m = sim.run()
    dt = time.perf_counter() - t
    return m["pages_unmapped"] / dt, len(trace.events) if trace else 0


def main(gib: int, repeat: int) -> None:
    sc = exit_scenario(gib)
    out = {}
    for name, cls in POLICIES.items():
        best = {False: 0.0, True: 0.0}
        events = 0
        for _ in range(repeat):
            for traced in (False, True):
                r, n = rate(sc, cls, traced)
                best[traced] = max(best[traced], r)
                events = max(events, n)
        out[name] = {"untraced": round(best[False]), "traced": round(best[True]), "trace_events": events}
        print(f"exit_mmap {gib} GiB {name:7s} untraced {best[False] / 1e6:5.2f} M PTEs/s, traced "
              f"{best[True] / 1e6:5.2f} M PTEs/s ({events:,} events)", flush=True)
    print(json.dumps({"pte_per_s": out}))


if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:]]
    main(args[0] if args else 1, args[1] if len(args) > 1 else 3)
