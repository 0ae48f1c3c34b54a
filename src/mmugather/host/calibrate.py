"""Host timings for calibrating and benchmarking the simulator against the real kernel.

Each measurement runs in a fresh child pinned to CPU 0 (see worker.py), so "single-threaded" really means
no other CPU is in the mm's cpumask. Timings are time.perf_counter_ns around the one syscall.
"""
from __future__ import annotations

import statistics
import time

from mmugather.host import syscalls as sc
from mmugather.host.worker import SecondThread, run_worker

_MUNMAP_BYTES = 256 << 20
_RATE_BYTES = 1 << 30
_ONE_PAGE_SAMPLES = 201


def _touched(size: int) -> int:
    addr = sc.mmap(size)
    sc.madvise(addr, size, sc.MADV_NOHUGEPAGE)
    sc.touch(addr, size)
    return addr


def _timed_munmap(addr: int, size: int) -> int:
    t0 = time.perf_counter_ns()
    sc.munmap(addr, size)
    return time.perf_counter_ns() - t0


def _munmap_ns(job: dict) -> dict:
    """Worker job: ns of munmap of `bytes` of touched 4 KiB pages, per run."""
    sc.pin(0)
    return {"ns": [_timed_munmap(_touched(job["bytes"]), job["bytes"]) for _ in range(job["runs"])]}


def _one_page(job: dict) -> dict:
    """Worker job: ns of 1-page munmaps with no other thread, then with thread B running on CPU 1."""
    sc.pin(0)
    alone = [_timed_munmap(_touched(sc.PAGE), sc.PAGE) for _ in range(job["samples"])]
    b = SecondThread("running")
    try:
        running: list[int] = []
        while len(running) < job["samples"]:
            pages = [_touched(sc.PAGE) for _ in range(job["samples"] - len(running))]
            b.enter()
            got = []
            for addr in pages:
                if not b.inside():
                    break
                got.append(_timed_munmap(addr, sc.PAGE))
            valid = b.inside()
            b.leave()
            for addr in pages[len(got):]:
                sc.munmap(addr, sc.PAGE)
            running += got if valid else got[:-1]
    finally:
        b.stop()
    return {"alone": alone, "running": running}


JOBS = {"munmap_ns": _munmap_ns, "one_page": _one_page}


def calibrate(runs: int = 5, timeout: float = 120.0) -> dict:
    """Measure on this host: `munmap_ns_per_page` (zap + free of touched 4 KiB pages, 256 MiB region,
    single-threaded, median of `runs`), `munmap_1page_alone_ns`, `munmap_1page_running_ns` (medians, B
    running on CPU 1) and their difference `shootdown_round_trip_ns` (one-target IPI estimate).
    Raises WorkerError if a child fails or times out."""
    big = run_worker({"kind": "munmap_ns", "bytes": _MUNMAP_BYTES, "runs": runs}, timeout)
    one = run_worker({"kind": "one_page", "samples": _ONE_PAGE_SAMPLES}, timeout)
    alone, running = statistics.median(one["alone"]), statistics.median(one["running"])
    return {"munmap_ns_per_page": statistics.median(big["ns"]) / (_MUNMAP_BYTES // sc.PAGE),
            "munmap_1page_alone_ns": alone, "munmap_1page_running_ns": running,
            "shootdown_round_trip_ns": running - alone}


def host_kernel_pages_per_s(runs: int = 3, timeout: float = 120.0) -> float:
    """4 KiB pages per second that this host's kernel munmaps (touched, THP off, 1 GiB, median of `runs`)."""
    out = run_worker({"kind": "munmap_ns", "bytes": _RATE_BYTES, "runs": runs}, timeout)
    return (_RATE_BYTES // sc.PAGE) * 1e9 / statistics.median(out["ns"])


# The cost fields each measurement sets, split in the proportions of the defaults (machine/costs.py).
PER_PAGE_FIELDS = ("pte_zap", "page_free")
ROUND_TRIP_FIELDS = ("ipi_send", "ipi_delivery", "ipi_handler", "ipi_ack")


def _split(total: float, fields: tuple[str, ...], base) -> dict:
    """`total` ns shared among `fields` in the proportions they have in `base` (integers summing to it)."""
    weights = [getattr(base, f) for f in fields]
    out, given = {}, 0
    for f, w in zip(fields, weights):
        out[f] = max(0, round(total * w / sum(weights)))
        given += out[f]
    out[fields[-1]] = max(0, out[fields[-1]] + round(total) - given)
    return out


def fit_costs(measured: dict, model_ns=None, base=None) -> dict:
    """Cost overrides from `measured` (see `calibrate`). Without a model, zap + free of a page is set to the
    per-page munmap time and the four IPI stages to the shootdown round trip. With `model_ns(workload,
    costs) -> simulated syscall ns`, the same quantities are matched on the model's own munmap workloads
    instead (munmap:65536:alone and munmap:1:alone for the per-page slope, munmap:1:running minus
    munmap:1:alone for the round trip), and `syscall` absorbs the host's fixed cost of a 1-page munmap."""
    from dataclasses import replace

    from mmugather.machine.costs import Costs
    base = base or Costs()
    per_page, trip = measured["munmap_ns_per_page"], measured["shootdown_round_trip_ns"]
    out = {**_split(per_page, PER_PAGE_FIELDS, base), **_split(max(trip, 0), ROUND_TRIP_FIELDS, base)}
    if model_ns is None:
        return out
    n = _MUNMAP_BYTES // sc.PAGE
    for _ in range(2):                        # per-page slope, then the round trip, then the fixed cost
        costs = replace(base, **out)
        one = model_ns("munmap:1:alone", costs)
        slope = (model_ns(f"munmap:{n}:alone", costs) - one) / (n - 1)
        scale = per_page / slope if slope > 0 else 1.0
        out.update(_split(sum(out[f] for f in PER_PAGE_FIELDS) * scale, PER_PAGE_FIELDS, base))
        costs = replace(base, **out)
        model_trip = model_ns("munmap:1:running", costs) - model_ns("munmap:1:alone", costs)
        if model_trip > 0 and trip > 0:
            out.update(_split(sum(out[f] for f in ROUND_TRIP_FIELDS) * trip / model_trip, ROUND_TRIP_FIELDS, base))
    costs = replace(base, **out)
    fixed = measured["munmap_1page_alone_ns"] - model_ns("munmap:1:alone", costs)
    out["syscall"] = max(0, round(costs.syscall + fixed))
    return out


def cost_file_text(measured: dict, costs: dict, fmt: str, note: str) -> str:
    """The cost file: `costs` (what --costs reads) and `measured` (the raw host figures), TOML or JSON."""
    import json
    if fmt == "json":
        return json.dumps({"costs": costs, "measured": measured, "note": note}, indent=2) + "\n"
    lines = [f"# {line}" for line in note.splitlines()] + ["", "[costs]"]
    lines += [f"{k} = {v}" for k, v in costs.items()]
    lines += ["", "[measured]"] + [f"{k} = {float(v):.1f}" for k, v in measured.items()]
    return "\n".join(lines) + "\n"
