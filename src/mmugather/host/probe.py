"""Count the TLB-shootdown IPIs the host kernel sends for one memory-management syscall.

A script names the syscall, the region size in 4 KiB pages and what a second thread of the same process
does meanwhile. Procedure (2-CPU host; see `measure_ipis`): thread A, pinned to CPU 0, maps the mappings
of a layout at fixed addresses below REGION_END (512 GiB-aligned, terabytes from any other mapping), so
that the page tables a call frees are the same as in a model scenario placed top-down below its
mmap_base: kernel-check passes the model scenario's own layout; without one, `default_layout`.
Every mapping gets MADV_NOHUGEPAGE (the counts are about 4 KiB pages) and is touched
as the layout says (every page; one page per 2 MiB for "munmap-sparse"; none for "munmap-untouched").
Thread B, pinned to CPU 1, is "running" (inside one long C call for the whole measurement: a Python
thread waiting for the GIL would leave CPU 1 idle, lazy, and skipped by the kernel), "blocked" (in
read(2) on a pipe; a new thread for every repeat, so CPU 1 is lazy in this mm each time rather than
already switched away by an earlier repeat's shootdown) or absent ("alone"). A reads the "TLB:" row of
/proc/interrupts, issues the syscall (timed: `ns`; A and a running B are SCHED_FIFO meanwhile where
permitted, so other tasks on a shared machine neither delay the call nor displace B), reads it again:
the per-CPU difference is the IPIs each CPU received. Each script runs in a fresh child process pinned to
CPU 0 from exec (so CPU 1 is in the mm's cpumask only if B ran there), with a timeout; the result is the
per-CPU median over the repeats and the spread (max - min).

Found with this probe on Linux 6.18 (x86-64, 4-level paging): munmap of a region that is the only
mapping in its 512 GiB PGD slot flushes even when nothing was ever mapped in it (free_p4d_range() "frees"
the folded P4D level: freed_tables is set, no page is freed), one IPI to a running or lazy CPU.
"""
from __future__ import annotations

import gc
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from mmugather.host import syscalls as sc
from mmugather.host.ftrace import TlbTrace, begin_marker, end_marker, is_user_task, windows
from mmugather.host.interrupts import parse_tlb, read_tlb
from mmugather.host.worker import SecondThread, WorkerError, realtime, run_worker

OPS = ("munmap", "dontneed", "mprotect", "mremap", "munmap-untouched", "munmap-sparse")
SECONDS = ("running", "blocked", "alone")
_SPARSE_STRIDE = 2 << 20
REGION_END = 0x2000_0000_0000
_GUARD_BELOW = 256 << 30
_BUSY_MIN = 16 << 30
_READ_BUF = 1 << 20
_MAX_RETRIES = 5

@dataclass(frozen=True)
class Script:
    """One host measurement: `op` on a region of `pages` 4 KiB pages while thread B is `second`."""
    name: str
    op: Literal["munmap", "dontneed", "mprotect", "mremap", "munmap-untouched", "munmap-sparse"]
    pages: int
    second: Literal["running", "blocked", "alone"]

    def __post_init__(self):
        if self.op not in OPS:
            raise ValueError(f"op: expected one of {', '.join(OPS)}, got {self.op!r}")
        if self.second not in SECONDS:
            raise ValueError(f"second: expected one of {', '.join(SECONDS)}, got {self.second!r}")
        if not isinstance(self.pages, int) or self.pages < 1:
            raise ValueError(f"pages: expected a positive integer, got {self.pages!r}")


@dataclass(frozen=True)
class ProbeResult:
    """IPIs received per CPU: `samples[k][i]` for repeat k and CPU `cpus[i]`, per-CPU `median` and
    `spread` (max - min).
    `status` is "ok", "skipped" (one CPU or no TLB row; `reason` says which) or "failed" (`reason`).
    `discarded` counts repeats redone because a running B left its C call before the measurement ended or
    was preempted during it (its CPU then ran another task, a kernel thread borrowing this mm lazily or
    another mm, and was rightly not sent every flush); after `repeats` such retries, preempted samples fill
    the remaining places and `preempted` says how many did (a loaded machine: counts may be low).
    `ns[k]` is repeat k's syscall time (perf_counter_ns around the call) and `median_ns` their median.
    `trace` (with a tracefs root): the tlb:tlb_flush events of the calls (ftrace.windows), medians over the
    repeats: {"sends", "shootdown": per CPU, "wrong_cpu": per CPU, "others": per CPU, switches to user
    tasks from outside the probe}."""
    script: Script
    status: Literal["ok", "skipped", "failed"]
    reason: str = ""
    cpus: list[int] = field(default_factory=list)
    samples: list[list[int]] = field(default_factory=list)
    median: list[float] = field(default_factory=list)
    spread: list[int] = field(default_factory=list)
    discarded: int = 0
    ns: list[int] = field(default_factory=list)
    median_ns: float = 0.0
    preempted: int = 0
    trace: dict | None = None


def host_supported() -> str:
    """"" if this host can run the probes, else why not."""
    if not {0, 1} <= os.sched_getaffinity(0):
        return "needs CPUs 0 and 1"
    if read_tlb() is None:
        return "no TLB row in /proc/interrupts"
    return ""


def run_script(script: Script, repeats: int = 5, timeout: float = 60.0,
               layout: list[dict] | None = None, trace_root: Path | None = None) -> ProbeResult:
    """Measure `script` `repeats` times in a child process killed after `timeout` seconds, with the
    mappings of `layout` (see default_layout; its region must be `script.pages` long); with `trace_root`
    (a tracefs mount, ftrace.find_tracefs), also trace each call's tlb:tlb_flush events."""
    if repeats < 1:
        raise ValueError(f"repeats: expected >= 1, got {repeats}")
    why = host_supported()
    if why:
        return ProbeResult(script, "skipped", why)
    job = {"kind": "ipis", "op": script.op, "pages": script.pages, "second": script.second, "repeats": repeats,
           "layout": layout, "trace": str(trace_root) if trace_root else None}
    try:
        out = run_worker(job, timeout)
    except WorkerError as e:
        return ProbeResult(script, "failed", str(e))
    samples = out["samples"]
    cols = list(zip(*samples))
    return ProbeResult(script, "ok", cpus=out["cpus"], samples=samples, median=[statistics.median(c) for c in cols],
                       spread=[max(c) - min(c) for c in cols], discarded=out["discarded"], ns=out["ns"],
                       median_ns=statistics.median(out["ns"]), preempted=out["preempted"],
                       trace=_trace_medians(out["trace"]) if "trace" in out else None)


def _trace_medians(samples: list[dict]) -> dict:
    """Per-field (per-CPU) medians of the repeats' ftrace.windows() counts."""
    med = statistics.median
    return {"sends": med(s["sends"] for s in samples),
            "shootdown": [med(c) for c in zip(*(s["shootdown"] for s in samples))],
            "wrong_cpu": [med(c) for c in zip(*(s["wrong_cpu"] for s in samples))],
            "others": [med(c) for c in zip(*(s["others"] for s in samples))]}


def _tlb_now(fd: int, buf: bytearray) -> int:
    """Read /proc/interrupts into the preallocated `buf` (no allocation that free() could give back to
    the kernel with a TLB flush of its own); the byte count."""
    os.lseek(fd, 0, os.SEEK_SET)
    n = os.readv(fd, [buf])
    if n >= len(buf):
        raise WorkerError("/proc/interrupts larger than the read buffer")
    return n


def default_layout(op: str, pages: int) -> list[dict]:
    """The layout used without one from the model: a region of `pages` ending at REGION_END (touched as `op`
    says: all, one page per 2 MiB for munmap-sparse, none for munmap-untouched), for mremap a read-only
    destination of the same size just below it, and an untouched guard page 256 GiB below, so the region is
    not alone in its 512 GiB PGD slot (alone, munmap flushes even an untouched region: see above).
    A layout lists mappings as {"below_top": bytes from the start to REGION_END, "size", "populate": True,
    False or [[offset, length], ...], "writable", "role": "region", "dest" or "other"}."""
    size = pages * sc.PAGE
    populate = (False if op == "munmap-untouched" else
                [[off, sc.PAGE] for off in range(0, size, _SPARSE_STRIDE)] if op == "munmap-sparse" else True)
    out: list[dict[str, Any]]
    out = [{"below_top": _GUARD_BELOW, "size": sc.PAGE, "populate": False, "writable": False, "role": "other"},
           {"below_top": size, "size": size, "populate": populate, "writable": True, "role": "region"}]
    if op == "mremap":
        out.append({"below_top": 2 * size, "size": size, "populate": False, "writable": False, "role": "dest"})
    return out


def _map_vma(v: dict) -> int:
    """Map one layout entry at REGION_END - below_top exactly (MAP_FIXED_NOREPLACE: never over an existing
    mapping), THP off, touched as its `populate` says; its address."""
    want, size = REGION_END - v["below_top"], v["size"]
    addr = sc.mmap(size, sc.PROT_READ | sc.PROT_WRITE, sc.MAP_PRIVATE | sc.MAP_ANONYMOUS | sc.MAP_FIXED_NOREPLACE,
                   addr=want)
    if addr != want:
        sc.munmap(addr, size)
        raise WorkerError(f"the kernel placed a mapping at {addr:#x}, not {want:#x} (no MAP_FIXED_NOREPLACE?)")
    sc.madvise(addr, size, sc.MADV_NOHUGEPAGE)
    if v["populate"] is True:
        sc.touch(addr, size)
    elif v["populate"]:
        for off, length in v["populate"]:
            sc.touch(addr + off, length)
    if not v["writable"]:
        sc.mprotect(addr, size, sc.PROT_READ)
    return addr


def _prepare(layout: list[dict]) -> tuple[int, int]:
    """Map the region (and the mremap destination) of `layout`; (region, destination or 0)."""
    addr = dest = 0
    for v in layout:
        if v["role"] == "region":
            addr = _map_vma(v)
        elif v["role"] == "dest":
            dest = _map_vma(v)
    return addr, dest


def _syscall(op: str, addr: int, dest: int, size: int):
    """The measured call as a zero-argument function, bound before the measurement starts."""
    if op.startswith("munmap"):
        return lambda: sc.munmap(addr, size)
    if op == "dontneed":
        return lambda: sc.madvise(addr, size, sc.MADV_DONTNEED)
    if op == "mprotect":
        return lambda: sc.mprotect(addr, size, sc.PROT_READ)
    return lambda: sc.mremap(addr, size, size, sc.MREMAP_MAYMOVE | sc.MREMAP_FIXED, dest)


def _cleanup(op: str, addr: int, dest: int, size: int) -> None:
    if op == "mremap":
        sc.munmap(dest, size)
    elif not op.startswith("munmap"):
        sc.munmap(addr, size)


def measure_ipis(job: dict) -> dict:
    """Worker job (runs in the CPU-0-pinned child): {"cpus", "samples": per-repeat per-CPU IPIs, "ns":
    per-repeat syscall time, "discarded"}. A running B's C call spans at least 16 region sizes of memory, so
    it outlasts the syscall."""
    op, size, second, repeats = job["op"], job["pages"] * sc.PAGE, job["second"], job["repeats"]
    layout = job.get("layout") or default_layout(op, job["pages"])
    sc.pin(0)
    for v in layout:
        if v["role"] == "other":
            _map_vma(v)
    # thread B while `second` is "running" (or "blocked", until stopped): the checks below test `second`
    b: Any = SecondThread("running", busy_bytes=max(_BUSY_MIN, 16 * size)) if second == "running" else None
    trace = TlbTrace(Path(job["trace"])).__enter__() if job.get("trace") else None
    fd = os.open("/proc/interrupts", os.O_RDONLY)
    buf_a, buf_b = bytearray(_READ_BUF), bytearray(_READ_BUF)
    # (IPIs taken by each CPU, ns, attempt) of each measurement, without and with thread B preempted
    clean: list[tuple[list[int], int, int]] = []
    dirty: list[tuple[list[int], int, int]] = []
    discarded, attempt = 0, 0
    cpus: list[int] = []
    own = {os.getpid()} | ({b.tid} if b else set())        # the probe's threads (ftrace.windows)
    try:
        while len(clean) < repeats and not (len(dirty) >= repeats - len(clean) and discarded >= repeats):
            addr, dest = _prepare(layout)
            call = _syscall(op, addr, dest, size)
            if second == "running":
                b.enter()
                preempted = b.preemptions()
            elif second == "blocked":
                b = SecondThread("blocked")
                own.add(b.tid)
            k, attempt = attempt, attempt + 1
            gc.disable()
            realtime(True)
            na, nb, ns = _timed(call, fd, buf_a, buf_b, trace, k)
            realtime(False)
            valid = second != "running" or b.inside()
            preempted = second == "running" and b.preemptions() != preempted
            gc.enable()
            if second == "running":
                b.leave()
            elif second == "blocked":
                b.stop()
                b = None
            _cleanup(op, addr, dest, size)
            cpus, ipis = _ipi_deltas(buf_a[:na], buf_b[:nb])
            if valid:
                (dirty if preempted else clean).append((ipis, ns, k))
            if not valid or preempted:
                discarded += 1
                if not valid and discarded > _MAX_RETRIES * repeats:
                    raise WorkerError("the running second thread kept leaving its C call during the measurement")
        traced = windows(trace.text(), cpus, own, is_user_task) if trace else {}
    finally:
        os.close(fd)
        if b is not None:
            b.stop()
        if trace:
            trace.__exit__()
    return _result(cpus, clean, dirty[:repeats - len(clean)], discarded, traced if trace else None)


def _timed(call: Callable[[], object], fd: int, buf_a: bytearray, buf_b: bytearray, trace: TlbTrace | None,
           k: int) -> tuple[int, int, int]:
    """Make the call between two reads of /proc/interrupts (into buf_a, buf_b) and, when tracing, measurement
    k's trace markers: (bytes read before, bytes read after, ns the call took)."""
    clock = time.perf_counter_ns
    if trace:
        trace.mark(begin_marker(k))
    na = _tlb_now(fd, buf_a)
    t0 = clock()
    call()
    t1 = clock()
    nb = _tlb_now(fd, buf_b)
    if trace:
        trace.mark(end_marker(k))
    return na, nb, t1 - t0


def _ipi_deltas(before_text: bytearray, after_text: bytearray) -> tuple[list[int], list[int]]:
    """(the CPUs, the TLB shootdown IPIs each took) between two reads of /proc/interrupts."""
    before, after = parse_tlb(before_text.decode()), parse_tlb(after_text.decode())
    if before is None or after is None or before.keys() != after.keys():
        raise WorkerError("no TLB row in /proc/interrupts, or CPUs went on or offline")
    cpus = sorted(before)
    return cpus, [after[c] - before[c] for c in cpus]


def _result(cpus: list[int], clean: list[tuple[list[int], int, int]], dirty: list[tuple[list[int], int, int]],
            discarded: int, traced: dict | None) -> dict:
    """measure_ipis's answer from the measurements kept (the clean ones, then the preempted ones that make up
    the count) and, when traced, the trace window of each (by measurement number)."""
    kept = clean + dirty
    out = {"cpus": cpus, "samples": [k[0] for k in kept], "ns": [k[1] for k in kept], "discarded": discarded,
           "preempted": len(dirty)}
    if traced is not None:
        if any(k[2] not in traced for k in kept):
            raise WorkerError("the tlb:tlb_flush trace lost a measurement's markers (ring buffer overrun)")
        out["trace"] = [traced[k[2]] for k in kept]
    return out
