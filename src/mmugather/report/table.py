"""The side-by-side table `mmugather compare` prints (rich, imported when a table is printed: a compare's
runs read ROWS and run_labels through report/html.py, in each worker)."""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console

ROWS = [
    ("tlb_flushes", "TLB flushes"),
    ("ipis_sent", "shootdown IPIs sent"),
    ("ipis_by_cpu", "IPIs received by CPU"),
    ("pages_unmapped", "pages unmapped"),
    ("pages_freed", "pages freed"),
    ("page_tables_freed", "page tables freed"),
    ("flushes_under_pte_lock", "flushes under PTE lock"),
    ("frees_under_pte_lock", "frees under PTE lock"),
    ("pte_lock_hold_ns", "PTE lock hold max/p50/p99 (ns)"),
    ("preempt_off_ns", "preemption off max/p99 (ns)"),
    ("sched_latency_ns", "wake-up latency max/p99 (ns)"),
    ("pages_per_flush", "pages freed per flush max/p50"),
    ("batch_alloc_attempts", "batch page allocations"),
    ("batch_alloc_failures", "  of which failed"),
    ("gather_memory_bytes", "gather memory, peak (B)"),
    ("sim_time_ns", "simulated time (ns)"),
]


def _fmt(v) -> str:
    if isinstance(v, dict):
        return " / ".join(f"{x:,}" for x in v.values())
    if isinstance(v, list):
        return " ".join(str(x) for x in v)
    return f"{v:,}"


def run_labels(runs: list[dict]) -> list[str]:
    """Column labels of a compare result's runs: the policy, and its arch when the runs span several."""
    if len({r.get("arch") for r in runs}) < 2:
        return [r["policy"] for r in runs]
    return [f"{r['policy']} {r['arch']}" for r in runs]


def print_compare(result: dict, console: Console | None = None) -> None:
    from rich.console import Console
    from rich.table import Table
    console = console or Console()
    m = result["machine"]
    table = Table(title=f"workload {result['workload']} on {m['cpus']} CPUs ({m['arch']}), preempt={m['preempt']}, "
                        f"fail-nowait={m['fail_nowait']}, seed {result['seed']}")
    table.add_column("metric")
    labels = run_labels(result["runs"])
    for label in labels:
        table.add_column(label, justify="right")
    for key, label in ROWS:
        table.add_row(label, *(_fmt(run["metrics"][key]) for run in result["runs"]))
    events = sorted({name for run in result["runs"] for name in run["metrics"].get("design_events", {})})
    for name in events:
        table.add_row(f"design event: {name}",
                      *(_fmt(run["metrics"].get("design_events", {}).get(name, 0)) for run in result["runs"]))
    table.add_row("violations", *(_violations(run["metrics"]["violations"]) for run in result["runs"]))
    console.print(table)
    for run, label in zip(result["runs"], labels):
        if run.get("known_bug"):
            console.print(f"[red]{label}: known bug[/red]: {run['known_bug']}", highlight=False)
        for v in run["metrics"]["violations"][:5]:
            console.print(f"[red]{label}: {v['kind']}[/red] (CPU {v['cpu']}): {v['detail']}", highlight=False)


def _violations(vs: list) -> str:
    if not vs:
        return "none"
    kinds: dict[str, int] = {}
    for v in vs:
        kinds[v["kind"]] = kinds.get(v["kind"], 0) + 1
    return ", ".join(f"{k} x{n}" for k, n in kinds.items())
