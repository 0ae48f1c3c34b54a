"""Self-contained HTML reports: the comparison table and plots of a compare, or plots of a sweep.

Plots are matplotlib figures rendered to SVG text (no GUI backend is involved) and inlined, and the style
sheet is inline too, so a report is one file that opens offline. SVG ids are salted per figure, so the
same input gives the same bytes.
"""
from __future__ import annotations

import html
import io
import os
from pathlib import Path
from statistics import mean

from typing import TYPE_CHECKING

import numpy as np

from mmugather.errors import InputError
from mmugather.report.table import ROWS, _fmt, _violations, run_labels

if TYPE_CHECKING:                      # matplotlib is imported when a figure is drawn (it costs ~1 s)
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

# key of a raw distribution -> (Metrics attribute holding it, title, x-axis label, what the CDF counts)
DISTRIBUTIONS = {
    "pte_lock_hold_ns": ("pte_lock_hold", "PTE-lock hold time", "hold time (ns)", "lock holds"),
    "preempt_off_ns": ("preempt_off", "preemption-off intervals", "interval (ns)", "intervals"),
    "sched_latency_ns": ("sched_latency", "scheduling latency", "wake-up to running (ns)", "wake-ups"),
    "pages_per_flush": ("pages_per_flush", "pages freed per TLB flush", "pages", "flushes"),
}
COUNTERS = [("tlb_flushes", "TLB flushes"), ("ipis_sent", "shootdown IPIs sent")]
SWEEP_METRICS = [
    ("ipis_sent", "shootdown IPIs sent (count)"),
    ("tlb_flushes", "TLB flushes (count)"),
    ("pte_lock_hold_ns.max", "PTE-lock hold max (ns)"),
    ("preempt_off_ns.max", "preemption off max (ns)"),
    ("sched_latency_ns.p99", "wake-up latency p99 (ns)"),
]
SWEEP_AXES = {"cpus": "CPUs", "fail_nowait": "GFP_NOWAIT failure probability"}
SWEEP_PARAMS = ("workload", "policy", "preempt", "cpus", "fail_nowait", "seed", "arch")

CSS = """body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:80em}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:2em}
table{border-collapse:collapse;font-size:.9em}td,th{border:1px solid #ccc;padding:.25em .6em}
td.n{text-align:right;font-variant-numeric:tabular-nums}th{background:#f3f3f3}
.plots{display:flex;flex-wrap:wrap;gap:1em}.plots svg{max-width:100%;height:auto}.note{color:#666}"""


def raw_distributions(metrics) -> dict[str, list[int]]:
    """The raw interval lists of a run's `Metrics` (`Simulation.metrics` after `run()`), for `write_html`."""
    return {key: list(getattr(metrics, spec[0])) for key, spec in DISTRIBUTIONS.items()}


def _svg(fig: Figure, salt: str) -> str:
    """The figure as an inline <svg> element, with deterministic ids unique to `salt`."""
    import matplotlib
    buf = io.StringIO()
    with matplotlib.rc_context({"svg.hashsalt": salt, "svg.fonttype": "path"}):
        fig.savefig(buf, format="svg", bbox_inches="tight",
                    metadata={"Creator": None, "Date": None, "Format": None, "Type": None})
    text = buf.getvalue()
    return text[text.index("<svg"):]


def _figure(title: str, xlabel: str, ylabel: str) -> tuple[Figure, Axes]:
    from matplotlib.figure import Figure
    fig = Figure(figsize=(5.6, 3.6))
    ax = fig.add_subplot()
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3)
    return fig, ax


def _bars(runs: list[dict], key: str, label: str) -> str:
    fig, ax = _figure(f"{label} per policy", "policy", f"{label} (count)")
    ax.bar_label(ax.bar(run_labels(runs), [r["metrics"][key] for r in runs], color="C0"))
    ax.margins(y=0.12)
    return _svg(fig, key)


def _cdf(distributions: dict, key: str) -> str:
    _, title, xlabel, what = DISTRIBUTIONS[key]
    fig, ax = _figure(f"CDF of {title}", f"{xlabel}, log scale", f"fraction of {what} <= x")
    for policy, dists in distributions.items():
        values = np.sort(np.asarray(dists[key], dtype=np.int64))
        if len(values):
            ax.step(values, np.arange(1, len(values) + 1) / len(values), where="post",
                    label=f"{policy} (n={len(values):,})")
        else:
            ax.plot([], [], label=f"{policy} (no samples)")
    ax.set_xscale("symlog", linthresh=1)
    ax.set_ylim(0, 1.02)
    ax.legend(loc="lower right")
    return _svg(fig, key)


def _design_events_section(runs: list[dict], events: list[str]) -> list[str]:
    """The design's own events (Engine.note: broadcast INVLPGB/TLBSYNC, LATR's lazy shootdowns and
    invalidations, ...) per run, as a chart beside the IPIs; nothing when no run noted any."""
    if not events:
        return []
    fig, ax = _figure("design events per run", "event", "events (count)")
    width = 0.8 / len(runs)
    for n, (run, label) in enumerate(zip(runs, run_labels(runs))):
        counts = run["metrics"].get("design_events", {})
        xs = np.arange(len(events)) + n * width
        ax.bar_label(ax.bar(xs, [counts.get(name, 0) for name in events], width, label=label, color=f"C{n}"))
    ax.set_xticks(np.arange(len(events)) + 0.4 - width / 2, events)
    ax.legend()
    ax.margins(y=0.12)
    return ["<h2>Design events</h2>",
            '<p class="note">Events a design names itself (Engine.note): invalidations that are not shootdown '
            "IPIs, such as INVLPGB broadcasts and their TLBSYNC, or LATR's lazy invalidations. The Perfetto "
            "trace (--trace) shows each as an instant on its CPU's track.</p>",
            '<div class="plots">' + _svg(fig, "design_events") + "</div>"]


def design_event_names(runs: list[dict]) -> list[str]:
    """Every design event some run noted, sorted (the rows the tables add after the kernel's metrics)."""
    return sorted({name for run in runs for name in run["metrics"].get("design_events", {})})


def _page(title: str, body: list[str]) -> str:
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{CSS}</style></head>\n<body>\n<h1>{html.escape(title)}</h1>\n" + "\n".join(body)
            + "\n</body></html>\n")


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr><th>" + html.escape(r[0]) + "</th>" + "".join(f'<td class="n">{html.escape(c)}</td>'
                                                                        for c in r[1:]) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def write_html(result: dict, path: str | os.PathLike[str],
               distributions: dict[str, dict[str, list[int]]] | None = None) -> None:
    """Write the report of a compare result (the object `mmugather compare --json` prints): the table, bar
    charts of TLB flushes and IPIs, and, given `distributions` (policy -> `raw_distributions(...)`), CDFs of
    PTE-lock hold, preemption-off, scheduling latency and pages per flush."""
    runs = result["runs"]
    labels = run_labels(runs)
    if distributions is not None and set(distributions) != set(labels):
        raise ValueError(f"distributions are for {sorted(distributions)}, the runs for {labels}")
    m = result["machine"]
    rows = [[label, *(_fmt(r["metrics"][key]) for r in runs)] for key, label in ROWS]
    events = design_event_names(runs)
    rows += [[f"design event: {name}", *(_fmt(r["metrics"].get("design_events", {}).get(name, 0)) for r in runs)]
             for name in events]
    rows.append(["violations", *(_violations(r["metrics"]["violations"]) for r in runs)])
    body = [(f"<p>{m['cpus']} CPUs ({html.escape(m['arch'])}), preempt={html.escape(m['preempt'])}, "
             f"fail-nowait={m['fail_nowait']}, seed {result['seed']}</p>"),
            "<h2>Comparison</h2>", _table(["metric", *labels], rows),
            "<h2>TLB flushes and shootdown IPIs</h2>",
            '<div class="plots">' + "".join(_bars(runs, key, label) for key, label in COUNTERS) + "</div>",
            *_design_events_section(runs, events),
            "<h2>Distributions</h2>"]
    if distributions is None:
        body.append('<p class="note">No raw distributions were given, so no CDFs (the table has the '
                    "summaries).</p>")
    else:
        ordered = {label: distributions[label] for label in labels}
        body.append('<div class="plots">' + "".join(_cdf(ordered, key) for key in DISTRIBUTIONS) + "</div>")
    Path(path).write_text(_page(f"mmugather: workload {result['workload']}", body))


def _sweep_plot(rows: list[dict], param: str, key: str, label: str) -> str:
    """Mean of a metric against one parameter, a line per policy, shaded from min to max."""
    fig, ax = _figure(f"{label} vs {SWEEP_AXES[param]}", SWEEP_AXES[param], label)
    for n, policy in enumerate(dict.fromkeys(r["policy"] for r in rows)):
        by_x: dict[float, list[float]] = {}
        for r in rows:
            if r["policy"] == policy:
                by_x.setdefault(r[param], []).append(r["metrics"][key])
        xs = sorted(by_x)
        ax.plot(xs, [mean(by_x[x]) for x in xs], marker="o", color=f"C{n}", label=policy)
        ax.fill_between(xs, [min(by_x[x]) for x in xs], [max(by_x[x]) for x in xs], color=f"C{n}", alpha=0.15)
    ax.set_xticks(sorted({r[param] for r in rows}))
    ax.legend()
    return _svg(fig, f"{param}/{key}")


def write_sweep_html(rows: list[dict], path: str | os.PathLike[str]) -> None:
    """Write the report of a sweep (rows as `mmugather.sweep.load_results` returns them): the grid, each
    policy's mean metrics, and every metric against every numeric parameter that varies."""
    if not rows:
        raise InputError("the sweep has no results to report")
    values = {p: list(dict.fromkeys(r[p] for r in rows)) for p in SWEEP_PARAMS}
    varying = [p for p in SWEEP_AXES if len(values[p]) > 1]
    grid = [[p, ", ".join(str(v) for v in vs)] for p, vs in values.items()]
    means = [[label, *(f"{mean(r['metrics'][key] for r in rows if r['policy'] == p):,.1f}" for p in values["policy"])]
             for key, label in SWEEP_METRICS]
    body = [f"<p>{len(rows)} points</p>", "<h2>Grid</h2>", _table(["parameter", "values"], grid),
            "<h2>Mean over all points</h2>", _table(["metric", *values["policy"]], means)]
    for param in varying:
        body.append(f"<h2>Against {html.escape(SWEEP_AXES[param])}</h2><p class='note'>Mean over seeds and the "
                    "other parameters; the band spans min to max.</p>")
        body.append('<div class="plots">' + "".join(_sweep_plot(rows, param, key, label)
                                                    for key, label in SWEEP_METRICS) + "</div>")
    if not varying:
        body.append(f'<p class="note">No numeric parameter ({", ".join(SWEEP_AXES)}) varies, so there is '
                    "nothing to plot against.</p>")
    Path(path).write_text(_page("mmugather sweep", body))
