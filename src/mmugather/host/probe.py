"""Count the TLB-shootdown IPIs the host kernel sends for one memory-management syscall.

A script names the syscall, the region size in 4 KiB pages and what a second thread of the same process
does meanwhile. Procedure (2-CPU host; see `measure_ipis`): thread A, pinned to CPU 0, maps an anonymous
private region, applies MADV_NOHUGEPAGE (so the counts are about 4 KiB pages), touches it (every page;
one page per 2 MiB for "munmap-sparse", so there is one page table per touched page; nothing for
"munmap-untouched"); thread B, pinned to CPU 1, is "running" (inside one long C call for the whole
measurement: a Python thread waiting for the GIL would leave CPU 1 idle, lazy, and skipped by the kernel),
"blocked" (in read(2) on a pipe) or absent ("alone"). A reads the "TLB:" row of /proc/interrupts, issues
the syscall, reads it again: the per-CPU difference is the IPIs each CPU received. Each script runs in a
fresh child process pinned to CPU 0 from exec (so CPU 1 is in the mm's cpumask only if B ran there), with
a timeout; the result is the per-CPU median over the repeats and the spread (max - min).
"""
from __future__ import annotations

import gc
import os
import statistics
from dataclasses import dataclass, field
from typing import Literal

from mmugather.host import syscalls as sc
from mmugather.host.interrupts import parse_tlb, read_tlb
from mmugather.host.worker import SecondThread, WorkerError, run_worker

OPS = ("munmap", "dontneed", "mprotect", "mremap", "munmap-untouched", "munmap-sparse")
SECONDS = ("running", "blocked", "alone")
_SPARSE_STRIDE = 2 << 20
_READ_BUF = 1 << 20
_MAX_RETRIES = 5

# (script, the IPIs CPU 1 received) measured on the reference machine: Linux 6.18, 2 CPUs, KVM guest.
EXPECTED = {
    ("munmap", 1, "running"): 1, ("munmap", 9000, "running"): 1, ("munmap", 20000, "running"): 3,
    ("dontneed", 1, "running"): 1, ("mprotect", 1, "running"): 1, ("mprotect", 20000, "running"): 1,
    ("munmap-untouched", 1, "running"): 0, ("munmap", 1, "alone"): 0, ("dontneed", 1, "alone"): 0,
    ("dontneed", 1, "blocked"): 0, ("mprotect", 1, "blocked"): 0,
}


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
    `discarded` counts repeats redone because B left its C call before the measurement ended."""
    script: Script
    status: Literal["ok", "skipped", "failed"]
    reason: str = ""
    cpus: list[int] = field(default_factory=list)
    samples: list[list[int]] = field(default_factory=list)
    median: list[float] = field(default_factory=list)
    spread: list[int] = field(default_factory=list)
    discarded: int = 0


def host_supported() -> str:
    """"" if this host can run the probes, else why not."""
    if not {0, 1} <= os.sched_getaffinity(0):
        return "needs CPUs 0 and 1"
    if read_tlb() is None:
        return "no TLB row in /proc/interrupts"
    return ""


def run_script(script: Script, repeats: int = 5, timeout: float = 60.0) -> ProbeResult:
    """Measure `script` `repeats` times in a child process killed after `timeout` seconds."""
    if repeats < 1:
        raise ValueError(f"repeats: expected >= 1, got {repeats}")
    why = host_supported()
    if why:
        return ProbeResult(script, "skipped", why)
    job = {"kind": "ipis", "op": script.op, "pages": script.pages, "second": script.second, "repeats": repeats}
    try:
        out = run_worker(job, timeout)
    except WorkerError as e:
        return ProbeResult(script, "failed", str(e))
    samples = out["samples"]
    cols = list(zip(*samples))
    return ProbeResult(script, "ok", cpus=out["cpus"], samples=samples, median=[statistics.median(c) for c in cols],
                       spread=[max(c) - min(c) for c in cols], discarded=out["discarded"])


def default_scripts() -> list[Script]:
    """The scripts of EXPECTED plus the other ops and second-thread states at 1 and 20000 pages."""
    keys = dict.fromkeys(EXPECTED)
    for op in OPS:
        for pages in (1, 20000):
            for second in SECONDS:
                keys.setdefault((op, pages, second))
    return [Script(f"{op}-{pages}-{second}", op, pages, second) for op, pages, second in keys]


def _tlb_now(fd: int, buf: bytearray) -> int:
    """Read /proc/interrupts into the preallocated `buf` (no allocation that free() could give back to
    the kernel with a TLB flush of its own); the byte count."""
    os.lseek(fd, 0, os.SEEK_SET)
    n = os.readv(fd, [buf])
    if n >= len(buf):
        raise WorkerError("/proc/interrupts larger than the read buffer")
    return n


def _prepare(op: str, size: int) -> tuple[int, int]:
    """Map and touch the region for `op`; (region, mremap destination or 0)."""
    addr = sc.mmap(size)
    sc.madvise(addr, size, sc.MADV_NOHUGEPAGE)
    if op == "munmap-sparse":
        sc.touch(addr, size, _SPARSE_STRIDE)
    elif op != "munmap-untouched":
        sc.touch(addr, size)
    dest = sc.mmap(size, sc.PROT_NONE) if op == "mremap" else 0
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
    """Worker job (runs in the CPU-0-pinned child): {"samples": per-repeat per-CPU IPIs, "discarded"}."""
    op, size, second, repeats = job["op"], job["pages"] * sc.PAGE, job["second"], job["repeats"]
    sc.pin(0)
    b = SecondThread(second) if second != "alone" else None
    fd = os.open("/proc/interrupts", os.O_RDONLY)
    buf_a, buf_b = bytearray(_READ_BUF), bytearray(_READ_BUF)
    samples, discarded, cpus = [], 0, []
    try:
        while len(samples) < repeats:
            addr, dest = _prepare(op, size)
            call = _syscall(op, addr, dest, size)
            if second == "running":
                b.enter()
            gc.disable()
            na = _tlb_now(fd, buf_a)
            call()
            nb = _tlb_now(fd, buf_b)
            valid = second != "running" or b.inside()
            gc.enable()
            if second == "running":
                b.leave()
            _cleanup(op, addr, dest, size)
            before, after = parse_tlb(buf_a[:na].decode()), parse_tlb(buf_b[:nb].decode())
            if before is None or after is None or before.keys() != after.keys():
                raise WorkerError("no TLB row in /proc/interrupts, or CPUs went on or offline")
            cpus = sorted(before)
            if valid:
                samples.append([after[c] - before[c] for c in cpus])
            else:
                discarded += 1
                if discarded > _MAX_RETRIES * repeats:
                    raise WorkerError("the second thread kept leaving its C call during the measurement")
    finally:
        os.close(fd)
        if b is not None:
            b.stop()
    return {"cpus": cpus, "samples": samples, "discarded": discarded}


def main() -> None:
    """Print the table of `default_scripts()` measured on this host."""
    print(f"TLB row CPUs: {sorted(read_tlb() or {})}; median and spread list one value per CPU")
    print(f"{'script':30s} {'median per CPU':>16s} {'spread':>10s} {'expected CPU1':>14s}")
    for s in default_scripts():
        r = run_script(s)
        exp = EXPECTED.get((s.op, s.pages, s.second), "")
        if r.status != "ok":
            print(f"{s.name:30s} {r.status}: {r.reason}")
            continue
        print(f"{s.name:30s} {str(r.median):>16s} {str(r.spread):>10s} {str(exp):>14s}"
              + (f"  ({r.discarded} redone)" if r.discarded else ""))


if __name__ == "__main__":
    main()
