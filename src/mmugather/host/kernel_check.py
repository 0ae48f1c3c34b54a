"""`mmugather kernel-check`: the host kernel as oracle for the model's shootdown counts.

One catalogue names each check `OP:N:B` (OP one of probe.OPS, N pages, B what the second thread does:
running, blocked or alone). The same name is measured on the host (probe.run_script: real syscalls,
"TLB shootdowns" row of /proc/interrupts, per-CPU median over repeats) and resolved as the built-in
parametric workload of that name, simulated under the policy matching the host (Linux 6.18 gather, the
host's CPU count, and the arch whose remote flush the host's kernel uses: `x86-kvm` on a KVM guest with
PV TLB flush, else `x86`; host/hypervisor.py detects it). A check matches when the host's per-CPU medians
equal the model's `ipis_by_cpu`. The host places its mappings as the model's scenario does (`layout_of`), so
both free the same page tables. Syscall times are reported side by side (host median, model `syscall_ns.max`) but are
not part of the match.
"""
from __future__ import annotations

import os
import platform
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmugather.host.hypervisor import detect_arch
from mmugather.host.interrupts import read_tlb
from mmugather.host.probe import ProbeResult, Script, default_layout, host_supported, run_script

MODEL_POLICY = "6.18"
MODEL_ARCH = "x86"          # when the host does not tell (host/hypervisor.py detect_arch())
THP_FILE = "/sys/kernel/mm/transparent_hugepage/enabled"


@dataclass(frozen=True)
class Check:
    """One catalogue entry; `quick` marks the subset that `--quick` (and CI) runs."""
    op: str
    pages: int
    second: str
    quick: bool = False

    @property
    def name(self) -> str:
        return f"{self.op}:{self.pages}:{self.second}"


def _checks(op: str, sizes: dict[int, str], quick: AbstractSet[tuple[int, str]] = frozenset()) -> list[Check]:
    """`sizes` maps a page count to the second-thread states to run it with (letters r, b, a)."""
    states = {"r": "running", "b": "blocked", "a": "alone"}
    return [Check(op, n, states[x], (n, states[x]) in quick) for n, xs in sizes.items() for x in xs]


# N is the region's pages (for munmap-sparse: its touched pages, one per 2 MiB, so N page tables). In
# the model's layout the region ends 4 KiB below a 2 MiB boundary, under a VMA that shares that last page
# table. Sizes straddle: the region's first page table of its own (511 -> 512 pages), the first whole
# page table MADV_DONTNEED can reclaim (1022 -> 1023), the 6.18 gather's page capacity before a forced
# flush (7 in the on-stack batch + 19 batches of 509 = 9678, twice that 19356), the flush_tlb_range
# ceiling of 33 pages (mprotect), 1 GiB (262144 pages), the table batch of 509 page tables (sparse 508 ->
# 510) and regions of 1,000,000 pages (sparse 1954 tables: 1,000,448 pages).
CATALOGUE: list[Check] = (
    _checks("munmap", {1: "rba", 511: "b", 512: "rb", 9677: "r", 9678: "rb", 19356: "r", 20000: "rba",
                       262144: "r", 1_000_000: "rba"},
            {(1, "running"), (1, "blocked"), (1, "alone"), (512, "blocked"), (9677, "running"),
             (9678, "running")})
    + _checks("dontneed", {1: "rba", 1022: "b", 1023: "b", 9677: "r", 9678: "rb", 20000: "rb"},
              {(1, "running"), (1023, "blocked")})
    + _checks("mprotect", {1: "rba", 33: "r", 34: "r", 20000: "rb"}, {(1, "running"), (1, "blocked")})
    + _checks("mremap", {1: "rba", 512: "rb", 20000: "rb"}, {(1, "running"), (512, "running")})
    + _checks("munmap-untouched", {1: "rb", 1_000_000: "rb"}, {(1, "running")})
    + _checks("munmap-sparse", {40: "rb", 508: "rb", 510: "rb", 1954: "rb"}, {(40, "running"), (40, "blocked")})
)


def select(quick: bool = False, names: list[str] | None = None) -> list[Check]:
    """The catalogue, its quick subset, or the named entries (ValueError naming an unknown one)."""
    if names:
        by_name = {c.name: c for c in CATALOGUE}
        unknown = [n for n in names if n not in by_name]
        if unknown:
            raise ValueError(f"unknown check {unknown[0]!r} (see `mmugather kernel-check --list`)")
        return [by_name[n] for n in names]
    return [c for c in CATALOGUE if c.quick or not quick]


def host_info() -> dict:
    """What the model is matched against: kernel release, machine, online CPUs of the TLB row, THP mode."""
    tlb = read_tlb()
    try:
        thp = Path(THP_FILE).read_text().split("[", 1)[1].split("]", 1)[0]
    except (OSError, IndexError):
        thp = "unknown"
    return {"kernel": platform.release(), "machine": platform.machine(), "cpus": sorted(tlb) if tlb else [],
            "cpu_count": os.cpu_count() or 1, "thp": thp}


def model_unavailable() -> str:
    """"" if the model side can run (the 6.18 policy and the OP:N:B workloads exist), else why not."""
    from mmugather.errors import InputError
    from mmugather.policies import POLICIES
    from mmugather.workloads.builtin import resolve_workload
    if MODEL_POLICY not in POLICIES:
        return f"no policy '{MODEL_POLICY}' in this build"
    try:
        resolve_workload(CATALOGUE[0].name)
    except InputError as e:
        return f"no built-in workload '{CATALOGUE[0].name}': {e}"
    return ""


_CALLS = ("munmap", "madvise", "mprotect", "mremap")


def model_simulation(check: Check, cpus: int, costs=None, arch: str = MODEL_ARCH):
    """The model's simulation of `check` on `arch`, set up (its VMAs placed and populated) but not yet run."""
    from mmugather.policies import POLICIES
    from mmugather.sim.simulation import Simulation
    from mmugather.workloads.builtin import resolve_workload
    return Simulation(resolve_workload(check.name), POLICIES[MODEL_POLICY], cpus=cpus, arch=arch, costs=costs)


def layout_of(sim) -> list[dict]:
    """The mappings of the simulation's process as the host probe must place them (probe.default_layout
    describes the form): each VMA's distance below the model's mmap_base, size, populate and write
    permission; "region" is the VMA thread 0's call operates on and "dest" an mremap's target."""
    from mmugather.mm.mmap import MMAP_BASE
    spec = sim.scenario.process[0]
    call = next(op for op in spec.thread[0].program if op.op in _CALLS)
    roles = {call.vma: "region", getattr(call, "to", None): "dest"}
    out = []
    for v in spec.vma:
        start, end = sim.processes[0].ranges[v.name]
        populate = v.populate if isinstance(v.populate, bool) else [list(r) for r in v.populate]
        out.append({"below_top": MMAP_BASE - start, "size": end - start, "populate": populate,
                    "writable": v.writable, "role": roles.get(v.name, "other")})
    return out


def model_predict(check: Check, cpus: int, costs=None, arch: str = MODEL_ARCH) -> tuple[list[int], int]:
    """The model's shootdown IPIs received per CPU for `check` and its syscall time in simulated ns."""
    m = model_simulation(check, cpus, costs, arch).run()
    return m["ipis_by_cpu"], m["syscall_ns"]["max"]


def _touched_pages(layout: list[dict]) -> int:
    return sum(v["size"] if v["populate"] is True else sum(n for _, n in v["populate"] or ())
               for v in layout) // 4096


def _timeout(layout: list[dict], repeats: int) -> float:
    """Seconds a child may take: touching a page costs up to ~10 us on a cold VM, plus start-up."""
    return 60.0 + repeats * _touched_pages(layout) * 12e-6


def row(check: Check, r: ProbeResult, model: tuple[list[int], int] | None, why_no_model: str) -> dict:
    """One script's JSON row; `match` is None when the host skipped it or the model could not run."""
    out: dict[str, Any]
    out = {"name": check.name, "status": r.status, "host_ipis_by_cpu": r.median, "model_ipis_by_cpu": None,
           "spread": r.spread, "host_ns": r.median_ns or None, "model_ns": None, "match": None}
    if r.status == "skipped":
        return out
    if r.status == "failed":
        out["reason"] = r.reason
        out["match"] = False
        return out
    if model is None:
        out["reason"] = f"model unavailable: {why_no_model}"
        out["match"] = False
        return out
    out["model_ipis_by_cpu"], out["model_ns"] = model
    out["match"] = [float(x) for x in r.median] == [float(x) for x in model[0]]
    if r.trace is not None:
        out["host_trace"] = r.trace
        noisy = [c for c, h, m, o in zip(r.cpus, r.median, model[0], r.trace["others"]) if h != m and o]
        if noisy:
            out["reason"] = (f"other user tasks ran on CPU {', '.join(map(str, noisy))} during the call: their mm "
                             f"replaced the probe's there (host noise the model's idle CPUs do not have)")
    if r.discarded:
        out["redone"] = r.discarded
    if r.preempted:
        out["preempted"] = r.preempted
        out["reason"] = f"B preempted in {r.preempted} of {len(r.samples)} repeats: the machine is busy"
    return out


def run_check(checks: list[Check], repeats: int = 5, costs=None, on_row=None, trace_root=None,
              arch: tuple[str, str] | None = None) -> dict:
    """Measure every check on the host and predict it with the model; the kernel-check JSON object.
    `arch` is (model arch, why); None: detect_arch(), the profile matching the host's remote flush.
    `on_row(row)` is called as each check finishes. Skipped as a whole (every row "skipped") when the
    host cannot run the probes (one CPU, no TLB row, CPUs 0 and 1 not allowed). With `trace_root` (a
    tracefs mount) each row also has `host_trace` (the tlb:tlb_flush counts, probe.ProbeResult.trace)."""
    host = host_info()
    arch_name, arch_why = arch or detect_arch()
    model = {"policy": MODEL_POLICY, "arch": arch_name, "arch_reason": arch_why}
    why = host_supported()
    if why:
        rows = [{"name": c.name, "status": "skipped", "host_ipis_by_cpu": None, "model_ipis_by_cpu": None,
                 "spread": None, "host_ns": None, "model_ns": None, "match": None} for c in checks]
        return {"host": host, "skipped": True, "reason": why, "model": model, "scripts": rows}
    why_no_model = model_unavailable()
    cpus = len(host["cpus"])
    rows = []
    for c in checks:
        sim = None if why_no_model else model_simulation(c, cpus, costs, arch_name)
        layout = layout_of(sim) if sim else default_layout(c.op, c.pages)
        region = next(v for v in layout if v["role"] == "region")
        script = Script(c.name, c.op, region["size"] // 4096, c.second)  # type: ignore[arg-type]  # checked there
        r = run_script(script, repeats, _timeout(layout, repeats), layout, trace_root)
        predicted = None
        if sim and r.status == "ok":
            m = sim.run()
            predicted = (m["ipis_by_cpu"], m["syscall_ns"]["max"])
        rows.append(row(c, r, predicted, why_no_model))
        if on_row:
            on_row(rows[-1])
    return {"host": host, "skipped": False, "reason": "",
            "model": {**model, "unavailable": why_no_model},
            "scripts": rows}


def _cell(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, list):
        return " ".join(f"{x:g}" if isinstance(x, float) else str(x) for x in v)
    return str(v)


def _us(ns) -> str:
    return "-" if ns is None else f"{ns / 1000:,.1f}"


HEADER = (f"{'script':34s} {'host IPIs/CPU':>14s} {'spread':>8s} {'model IPIs/CPU':>15s} {'match':>6s} "
          f"{'host us':>10s} {'model us':>10s}")


TRACE_HEADER = f" {'sends':>6s} {'shootdown/CPU':>14s} {'wrong CPU':>10s} {'others/CPU':>11s}"


def format_row(r: dict, traced: bool = False) -> str:
    """One line of the text table; with `traced`, the tlb:tlb_flush columns too."""
    match = {True: "yes", False: "NO", None: r["status"]}[r["match"]]
    line = (f"{r['name']:34s} {_cell(r['host_ipis_by_cpu']):>14s} {_cell(r['spread']):>8s} "
            f"{_cell(r['model_ipis_by_cpu']):>15s} {match:>6s} {_us(r['host_ns']):>10s} {_us(r['model_ns']):>10s}")
    if traced:
        t = r.get("host_trace") or {}
        line += (f" {_cell(t.get('sends')):>6s} {_cell(t.get('shootdown')):>14s} "
                 f"{_cell(t.get('wrong_cpu')):>10s} {_cell(t.get('others')):>11s}")
    if r.get("reason"):
        line += f"  ({r['reason']})"
    return line


def model_predict_ns(workload: str, costs, cpus: int = 2, arch: str = MODEL_ARCH) -> int:
    """The model's syscall time (simulated ns) for a built-in OP:N:B workload under `costs` on `arch`."""
    from mmugather.policies import POLICIES
    from mmugather.sim.simulation import Simulation
    from mmugather.workloads.builtin import resolve_workload
    m = Simulation(resolve_workload(workload), POLICIES[MODEL_POLICY], cpus=cpus, arch=arch, costs=costs).run()
    return m["syscall_ns"]["max"]
