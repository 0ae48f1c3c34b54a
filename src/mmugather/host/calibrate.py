"""Host timings for calibrating and benchmarking the simulator against the real kernel.

Every figure is measured over repeats and kept as a `Figure`: median, p10 and p90 of the repeats, the unit
and the probe it came from.

The short calls are timed in C (calls_probe.c, compiled with the host's cc, pinned to CPU 0): a pair of
clock_gettime(CLOCK_MONOTONIC) reads around exactly each call, less the median of the same pair around
nothing: a null system call (getppid); write faults of fresh anonymous pages, read faults of them (the
zero page), and a hot pass over the same pages (a 4 KiB memset: the clear_page() estimate); write faults of
a cached file page through a shared and a private mapping, and copies of mapped ones; read faults of a
cached file page through fault-around (filemap_map_pages()) in 1-page VMAs and with the other 15 pages of
a 16-page window mapped (their difference: the cost per folio walked); 1-page mmap, munmap,
MADV_DONTNEED and mprotect, back to back (warm, as in a loop); over the PMD-sized folios ext4's readahead
gives a 128 MiB file written in order (a read fault that maps a 2 MiB folio by one PMD, a 1-page
MADV_DONTNEED that splits it, a shared write fault that maps it dirty after ->page_mkwrite over the folio).
Without a C compiler the Python probes below (JOBS, in a fresh child pinned to CPU 0, see worker.py) stand
in: time.perf_counter_ns around the ctypes call less the same timing around a call that makes no system call
(memchr of 0 bytes), which leaves 0.5-1.5 us of Python per short call.

In C too (shootdown_probe.c: a Python thread waiting for the GIL would leave its CPU idle and lazy), a
1-page MADV_DONTNEED loop on CPU 0 alone, with thread B spinning in user mode on CPU 1 (the loop less alone:
the round trip of a shootdown to a running CPU; B's lost time per IPI: the receiver's side) and with B in
the same loop (mutual shootdowns, will-it-scale's threads:2: a check of the model, not fitted). And through
probe.run_script, placed exactly as the 6.18 model places them (kernel_check.layout_of), the kernel-check
scripts of SCRIPTS: a 512-page munmap with the second thread blocked (less alone: the round trip to an
idle, lazy CPU, sent the flush because the munmap frees a PTE table) and a 256 MiB munmap (less 1 page:
the cost per page).
"""
from __future__ import annotations

import ctypes
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from mmugather.host import syscalls as sc
from mmugather.host.worker import WorkerError, run_worker
from mmugather.machine.costs import Costs

_MUNMAP_BYTES = 256 << 20
_RATE_BYTES = 1 << 30
_ONE_PAGE_SAMPLES = 201
_FAULT_PAGES = 4096
_NULL_CALLS = 200
_IDLE_PAGES = 512
_PMD_FILE_BYTES = 128 << 20      # written in order: ext4's readahead leaves its pages from 40 MiB on in 2 MiB folios
_PMD = 2 << 20
_MIN_PMD_RANGES = 4
_PMD_CYCLES = 8                  # per range and repeat; the first cycle (caches cold) is not kept

_libc = ctypes.CDLL(None, use_errno=True)
_getppid = _libc.getppid
_getppid.restype, _getppid.argtypes = ctypes.c_int, []
_getpagesize = _libc.getpagesize
_getpagesize.restype, _getpagesize.argtypes = ctypes.c_int, []
_memchr = _libc.memchr
_memchr.restype, _memchr.argtypes = ctypes.c_void_p, [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]


@dataclass(frozen=True)
class Figure:
    """One host figure: `median`, `p10`, `p90` (and the quartiles `p25`, `p75`, None for a difference of
    figures) over `n` repeats, in `unit`, measured by `probe`."""
    median: float
    p10: float
    p90: float
    n: int
    unit: str
    probe: str
    p25: float | None = None
    p75: float | None = None

    @property
    def spread(self) -> float:
        """(p90 - p10) / |median|: the host's noise relative to the figure (inf for a zero median)."""
        return (self.p90 - self.p10) / abs(self.median) if self.median else float("inf")

    @property
    def iqr_spread(self) -> float:
        """(p75 - p25) / |median|, the spread of the middle half of the repeats: what a few slow outliers
        (an interrupt, a deep C-state exit) do not move, and a host busy through the probe does (inf for a
        zero median; the p10-p90 spread where the quartiles are unknown)."""
        if self.p25 is None or self.p75 is None:
            return self.spread
        return (self.p75 - self.p25) / abs(self.median) if self.median else float("inf")

    def minus(self, other: Figure, probe: str) -> Figure:
        """This figure less `other`, with the widest range the two ranges allow."""
        return Figure(self.median - other.median, self.p10 - other.p90, self.p90 - other.p10,
                      min(self.n, other.n), self.unit, probe)

    def as_dict(self) -> dict:
        quartiles = {} if self.p25 is None or self.p75 is None else \
            {"p25": round(self.p25, 1), "p75": round(self.p75, 1)}
        return {"median": round(self.median, 1), "p10": round(self.p10, 1), "p90": round(self.p90, 1),
                **quartiles, "n": self.n, "unit": self.unit, "probe": self.probe}


def figure(samples: list[float], unit: str, probe: str) -> Figure:
    """The Figure of `samples` (at least one)."""
    if not samples:
        raise ValueError(f"{probe}: no samples")
    s = sorted(samples)
    q = statistics.quantiles(s, n=20, method="inclusive") if len(s) > 1 else [s[0]] * 19
    return Figure(statistics.median(s), q[1], q[17], len(s), unit, probe, q[4], q[14])


# ------------------------------------------------------------------ host jobs (run in the pinned child)
def _touched(size: int) -> int:
    addr = sc.mmap(size)
    sc.madvise(addr, size, sc.MADV_NOHUGEPAGE)
    sc.touch(addr, size)
    return addr


def _no_syscall(addr: int, length: int) -> None:
    """The shape of a syscalls.py wrapper (a 3-argument ctypes call and its check) without a system call."""
    if _memchr(addr, 0, 0) is not None:
        raise OSError("memchr of 0 bytes found something")


def _overhead_ns(samples: int = _ONE_PAGE_SAMPLES) -> float:
    """Median ns of perf_counter_ns around a syscalls.py-shaped call that enters no kernel."""
    addr = sc.mmap(sc.PAGE)
    out = [_timed(lambda: _no_syscall(addr, sc.PAGE)) for _ in range(samples)]
    sc.munmap(addr, sc.PAGE)
    return statistics.median(out)


def _overhead(job: dict) -> dict:
    """Worker job: _overhead_ns() on CPU 0 (what the kernel-check scripts' times are less)."""
    sc.pin(0)
    return {"overhead": _overhead_ns()}


def _timed(call: Callable[[], object]) -> int:
    t0 = time.perf_counter_ns()
    call()
    return time.perf_counter_ns() - t0


def _unmapper(addr: int, size: int) -> Callable[[], None]:
    return lambda: sc.munmap(addr, size)


def _munmap_ns(job: dict) -> dict:
    """Worker job: ns of munmap of `bytes` of touched 4 KiB pages, per run."""
    sc.pin(0)
    return {"ns": [_timed(_unmapper(_touched(job["bytes"]), job["bytes"])) for _ in range(job["runs"])]}


def _null_syscall(job: dict) -> dict:
    """Worker job: ns per getppid() call less a getpagesize() call (no kernel entry), one sample per pair
    of interleaved loops of _NULL_CALLS calls each (so a burst of load on the machine hits both alike)."""
    sc.pin(0)
    clock, out = time.perf_counter_ns, []
    for _ in range(job["repeats"]):
        t0 = clock()
        for _ in range(_NULL_CALLS):
            _getppid()
        t1 = clock()
        for _ in range(_NULL_CALLS):
            _getpagesize()
        t2 = clock()
        out.append(((t1 - t0) - (t2 - t1)) / _NULL_CALLS)
    return {"ns": out}


def _write_pass(addr: int, size: int) -> float:
    """ns per page of writing every byte of [addr, addr + size) (one C call)."""
    return _timed(lambda: ctypes.memset(addr, 1, size)) / (size // sc.PAGE)


def _read_pass(addr: int, size: int) -> float:
    """ns per page of reading every byte of [addr, addr + size) (one C call; the memory holds no 2)."""
    return _timed(lambda: _memchr(addr, 2, size)) / (size // sc.PAGE)


def _anon_faults(job: dict) -> dict:
    """Worker job, per repeat on fresh anonymous memory of _FAULT_PAGES pages (THP off): ns per page of a
    write pass that faults every page less a second (hot) pass, of the fastest of three hot passes (a 4 KiB
    memset),
    and of a read pass that faults every page (the zero page) less a hot read pass."""
    sc.pin(0)
    size = _FAULT_PAGES * sc.PAGE
    write, hot, read = [], [], []
    for _ in range(job["repeats"]):
        addr = sc.mmap(size)
        sc.madvise(addr, size, sc.MADV_NOHUGEPAGE)
        first = _write_pass(addr, size)
        second = _write_pass(addr, size)
        write.append(first - second)
        hot.append(min(second, _write_pass(addr, size), _write_pass(addr, size)))   # a user memset alone: the
        # fastest of 3 passes (what another task's cache traffic slows is not clear_page())
        sc.madvise(addr, size, sc.MADV_DONTNEED)
        first = _read_pass(addr, size)
        read.append(first - _read_pass(addr, size))
        sc.munmap(addr, size)
    return {"write_fault": write, "zero": hot, "read_fault": read}


def _unlinked_file(directory: str, size: int) -> int:
    """A file of `size` bytes in `directory`, already unlinked (gone when its fd is closed): the fd."""
    fd, path = tempfile.mkstemp(dir=directory)
    try:
        os.unlink(path)
        os.ftruncate(fd, size)
    except OSError:
        os.close(fd)
        raise
    return fd


def _file_faults(job: dict) -> dict:
    """Worker job: ns per page of a write pass over a file of _FAULT_PAGES pages already in the page cache
    (written once, then MADV_DONTNEED), less a hot pass: through a MAP_SHARED mapping (do_shared_fault)
    and a fresh MAP_PRIVATE one (do_cow_fault), per repeat; and through a fresh MAP_PRIVATE mapping after a
    read pass (which maps the pages read-only, 16 a fault: fault-around), so each write copies a mapped
    page (do_wp_page() -> wp_page_copy()). The file lives in `dir` (will-it-scale's /tmp)."""
    sc.pin(0)
    size = _FAULT_PAGES * sc.PAGE
    fd = _unlinked_file(job["dir"], size)
    shared: list[float] = []
    private: list[float] = []
    copy: list[float] = []
    try:
        rw = sc.PROT_READ | sc.PROT_WRITE
        for _ in range(job["repeats"]):
            for flags, out in ((sc.MAP_SHARED, shared), (sc.MAP_PRIVATE, private)):
                addr = sc.mmap(size, rw, flags, fd=fd)
                if flags == sc.MAP_SHARED:
                    ctypes.memset(addr, 1, size)
                    sc.madvise(addr, size, sc.MADV_DONTNEED)
                first = _write_pass(addr, size)
                out.append(first - _write_pass(addr, size))
                sc.munmap(addr, size)
            addr = sc.mmap(size, rw, sc.MAP_PRIVATE, fd=fd)
            _read_pass(addr, size)
            first = _write_pass(addr, size)
            copy.append(first - _write_pass(addr, size))
            sc.munmap(addr, size)
    finally:
        os.close(fd)
    return {"shared_write_fault": shared, "private_write_fault": private, "private_wp_copy": copy}


def file_pmd_mapped_kb(addr: int) -> int:
    """FilePmdMapped (kB) of this process's mapping that starts at addr (/proc/self/smaps; -1 if absent)."""
    want = f"{addr:x}-"
    inside = False
    with open("/proc/self/smaps") as f:
        for line in f:
            if "-" in line.split(" ", 1)[0]:
                inside = line.startswith(want)
            elif inside and line.startswith("FilePmdMapped:"):
                return int(line.split()[1])
    return -1


def _pmd_ranges(addr: int, size: int) -> list[int]:
    """The 2 MiB ranges of a MAP_SHARED file mapping at addr (nothing mapped) that a read fault maps by one
    PMD (FilePmdMapped grows by 2 MiB): those whose page cache is one PMD-sized folio. Leaves none mapped."""
    out = []
    for r in range(addr, addr + size, _PMD):
        before = file_pmd_mapped_kb(addr)
        _memchr(r, 2, 1)
        if file_pmd_mapped_kb(addr) - before == _PMD >> 10:
            out.append(r)
    sc.madvise(addr, size, sc.MADV_DONTNEED)
    return out


def _pmd_calls(r: int) -> tuple[Callable[[], object], ...]:
    """The four timed calls of a _file_pmd_faults() cycle on the 2 MiB range at r: read, write, MADV_DONTNEED
    of the first page, write."""
    def read() -> object:
        return _memchr(r, 2, 1)

    def split() -> None:
        sc.madvise(r, sc.PAGE, sc.MADV_DONTNEED)

    def write() -> object:
        return ctypes.memset(r, 1, 1)
    return read, write, split, write


def _file_pmd_faults(job: dict) -> dict:
    """Worker job, over the 2 MiB ranges of a MAP_SHARED 128 MiB file in `dir` (written once in order) that
    are one PMD-sized folio each (none: an empty result, e.g. tmpfs or THP off), less the timing overhead,
    in cycles on one range at a time as will-it-scale's tlb_flush3 loop works on one folio for 512
    iterations (the folio's buffer heads stay in the caches: cycling through all 44 folios instead made
    the write fault 2-3 times slower and bimodal): a 1-byte read with the PMD none (do_read_fault() ->
    fault-around -> filemap_map_pmd() -> do_set_pmd(), read-only), a 1-byte write to that read-only PMD
    (wp_huge_pmd() splits it, then as the next write: `wp_write`, a check figure no cost is fitted to), a
    1-page MADV_DONTNEED of the range's first page (the zap splits the PMD: __split_huge_pmd()), a 1-byte
    write with the PMD none (do_shared_fault(): ->page_mkwrite() over the whole folio, then finish_fault()
    -> do_set_pmd(), dirty), and an untimed MADV_DONTNEED; _PMD_CYCLES per range and repeat, the first one
    not kept."""
    sc.pin(0)
    size, ovh = _PMD_FILE_BYTES, _overhead_ns()
    fd = _unlinked_file(job["dir"], size)
    read: list[float] = []
    wp_write: list[float] = []
    split: list[float] = []
    write: list[float] = []
    try:
        addr = sc.mmap(size, sc.PROT_READ | sc.PROT_WRITE, sc.MAP_SHARED, fd=fd)
        ctypes.memset(addr, 1, size)
        sc.madvise(addr, size, sc.MADV_DONTNEED)
        ranges = _pmd_ranges(addr, size)
        if len(ranges) < _MIN_PMD_RANGES:
            return {"ranges": len(ranges), "read": [], "wp_write": [], "split": [], "write": []}
        for _ in range(job["repeats"]):
            for r in ranges:
                calls = _pmd_calls(r)
                for cycle in range(_PMD_CYCLES):
                    t = [_timed(call) - ovh for call in calls]
                    sc.madvise(r, sc.PAGE, sc.MADV_DONTNEED)
                    if cycle:
                        read.append(t[0])
                        wp_write.append(t[1])
                        split.append(t[2])
                        write.append(t[3])
        sc.munmap(addr, size)
    finally:
        os.close(fd)
    return {"ranges": len(ranges), "read": read, "wp_write": wp_write, "split": split, "write": write}


def _one_call(make: Callable[[], Callable[[], object]], after: Callable[[], object], samples: int,
              overhead: float) -> list[float]:
    out = []
    for _ in range(samples):
        call = make()
        out.append(_timed(call) - overhead)
        after()
    return out


def _calls(job: dict) -> dict:
    """Worker job: ns of one 1-page call, alone, per sample (less the timing overhead, also returned as
    `overhead`), one after another (caches warm, as in a loop): mmap (anonymous, not populated), munmap,
    MADV_DONTNEED and mprotect to read-only of a touched page."""
    sc.pin(0)
    k, ovh, page = job["samples"], _overhead_ns(), sc.PAGE
    box = [0]

    def mapper() -> Callable[[], object]:
        def call() -> None:
            box[0] = sc.mmap(page)
        return call

    def on_touched(f: Callable[[int], object]) -> Callable[[], Callable[[], object]]:
        def make() -> Callable[[], object]:
            addr = box[0] = _touched(page)
            return lambda: f(addr)
        return make

    def unmap() -> None:
        sc.munmap(box[0], page)

    return {"mmap": _one_call(mapper, unmap, k, ovh),
            "munmap": _one_call(on_touched(lambda a: sc.munmap(a, page)), lambda: None, k, ovh),
            "dontneed": _one_call(on_touched(lambda a: sc.madvise(a, page, sc.MADV_DONTNEED)), unmap, k, ovh),
            "mprotect": _one_call(on_touched(lambda a: sc.mprotect(a, page, sc.PROT_READ)), unmap, k, ovh),
            "overhead": ovh}


JOBS = {"munmap_ns": _munmap_ns, "null_syscall": _null_syscall, "anon_faults": _anon_faults,
        "file_faults": _file_faults, "calls": _calls, "file_pmd_faults": _file_pmd_faults,
        "overhead": _overhead}


# ------------------------------------------------------------------ the shootdown probe (C)
SHOOTDOWN_SOURCE = Path(__file__).with_name("shootdown_probe.c")
SHOOTDOWN_MODES = ("alone", "running", "mutual")
_SHOOTDOWN_CALLS = 2000
_MIN_IPIS_PER_FLUSH = 0.9


def build_probe(source: Path, out_dir: str) -> str | None:
    """Compile a probe's C `source` with the host's C compiler into `out_dir`: the program's path, or None
    when there is no compiler (cc or gcc). WorkerError if it does not compile."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return None
    exe = os.path.join(out_dir, source.stem)
    r = subprocess.run([cc, "-O2", "-pthread", "-o", exe, str(source)], capture_output=True, text=True)
    if r.returncode != 0:
        raise WorkerError(f"{source.name}: {cc} failed: {(r.stderr.strip().splitlines() or ['?'])[-1]}")
    return exe


def shootdown_samples(exe: str, runs: int, timeout: float, calls: int = _SHOOTDOWN_CALLS) -> dict[str, list[int]]:
    """Run the probe's modes `runs` times each, interleaved (a burst of load hits every mode alike); the
    samples pooled: "alone" and "running" (A's per-call ns), "receiver" (B's gaps while running), "mutual"
    (both threads' per-call ns). WorkerError when it fails, or when a target CPU took fewer than 0.9 IPIs per
    flush sent to it (its thread was descheduled: the CPU left the mm, a busy host)."""
    out: dict[str, list[int]] = {"alone": [], "running": [], "receiver": [], "mutual": []}
    for _ in range(runs):
        for mode in SHOOTDOWN_MODES:
            try:
                r = subprocess.run([exe, mode, str(calls)], capture_output=True, text=True, timeout=timeout)
            except subprocess.TimeoutExpired:
                raise WorkerError(f"shootdown_probe {mode}: timed out after {timeout:g} s") from None
            if r.returncode != 0:
                raise WorkerError(f"shootdown_probe {mode}: exited {r.returncode}: {r.stderr.strip()[-200:]}")
            got = json.loads(r.stdout)
            took = min(got["tlb"]) if mode == "mutual" else got["tlb"][1]
            if mode != "alone" and took < _MIN_IPIS_PER_FLUSH * calls:
                raise WorkerError(f"shootdown_probe {mode}: a CPU took {took} IPIs for {calls} flushes sent to it: "
                                  "a thread was descheduled (a busy host); rerun on a quiet machine")
            if mode == "running":
                out["receiver"] += got["gaps"]
            out[mode] += got["a_ns"] + got["b_ns"]
    return out


# ------------------------------------------------------------------ the short-call probe (C)
CALLS_SOURCE = Path(__file__).with_name("calls_probe.c")
_C_SAMPLES = 1001
_NULL_LOOP = 200                 # calls_probe.c's NULL_CALLS
# calls_probe.c's per-call samples (less the median empty clock pair): its key, the figure, what it times
_C_CALLS = (("pmd_read", "pmd_read_fault_ns", "1-byte read, PMD none"),
            ("pmd_split", "pmd_split_dontneed_ns", "1-page MADV_DONTNEED of a PMD-mapped 2 MiB"),
            ("pmd_write", "pmd_shared_write_fault_ns", "1-byte write, PMD none"),
            ("pmd_wp_write", "pmd_wp_write_fault_ns", "1-byte write to a read-only PMD: split, then as "
                                                      "pmd_shared_write_fault_ns; a check, nothing fitted to it"),
            ("mmap", "mmap_1page_alone_ns", "mmap of 1 anonymous page (not populated), alone, back to back"),
            ("munmap", "munmap_1page_alone_ns", "munmap of 1 touched page, alone, back to back"),
            ("dontneed", "dontneed_1page_alone_ns", "MADV_DONTNEED of 1 touched page, alone, back to back"),
            ("mprotect", "mprotect_1page_alone_ns", "mprotect to read-only of 1 touched page, alone, back to back"))
# its per-page samples (a pass less a hot pass: the clock pair cancels): its key, the figure, what it times
_C_PASSES = (("zero", "zero_ns_per_page", "memset of 16 MiB of mapped 4 KiB pages (fastest of 3 hot passes)"),
             ("write_fault", "anon_write_fault_ns", "memset of 16 MiB fresh anonymous, THP off, less the hot pass"),
             ("read_fault", "anon_read_fault_ns", "memchr of 16 MiB fresh anonymous (zero page), less a hot pass"),
             ("shared_write_fault", "file_shared_write_fault_ns", "memset of a MAP_SHARED 16 MiB file in {dir}, "
                                                                  "cached, less hot"),
             ("private_write_fault", "file_private_write_fault_ns", "memset of a MAP_PRIVATE 16 MiB file in {dir}, "
                                                                    "cached, less hot"),
             ("private_wp_copy", "file_private_wp_copy_ns", "memset of a MAP_PRIVATE 16 MiB file in {dir}, cached, "
                                                            "after a read pass, less hot"))


def calls_samples(exe: str, file_dir: str, samples: int, repeats: int, timeout: float) -> dict:
    """calls_probe.c's JSON: its sample lists (ns) and "pmd_ranges". WorkerError when it fails."""
    try:
        r = subprocess.run([exe, file_dir, str(samples), str(repeats)], capture_output=True, text=True,
                           timeout=timeout)
    except subprocess.TimeoutExpired:
        raise WorkerError(f"calls_probe: timed out after {timeout:g} s") from None
    if r.returncode != 0:
        raise WorkerError(f"calls_probe: exited {r.returncode}: {r.stderr.strip()[-200:]}")
    return json.loads(r.stdout)


def calls_figures(got: dict, file_dir: str) -> dict[str, Figure]:
    """The figures of calls_probe.c's output `got`: each per-call sample less the median empty clock pair
    (the null syscall's loop less it once per loop); the PMD figures only where the file had PMD folios."""
    empty = statistics.median(got["empty"])
    probe = "calls_probe.c (C, CPU 0"
    f = {"null_syscall_ns": figure([x - empty / _NULL_LOOP for x in got["null"]], "ns",
                                   f"{probe}): getppid(), loops of {_NULL_LOOP}, less the empty clock pair")}
    f.update({name: figure(got[key], "ns/page", f"{probe}): {what.format(dir=file_dir)}")
              for key, name, what in _C_PASSES})
    if "map_pages_1" in got:
        f.update(_map_pages_figures(got, empty, file_dir))
    where = f"{got['pmd_ranges']} PMD-sized folios of a 128 MiB MAP_SHARED file in {file_dir} written in order"
    for key, name, what in _C_CALLS:
        if got[key]:
            at = f", {where}" if key.startswith("pmd") else ""
            f[name] = figure([x - empty for x in got[key]], "ns",
                             f"{probe}{at}): {what}, less the empty clock pair ({empty:.0f} ns)")
    return f


def _map_pages_figures(got: dict, empty: float, file_dir: str) -> dict[str, Figure]:
    """calls_probe.c's read faults through fault-around (do_read_fault() -> filemap_map_pages()) of a cached
    file page whose window's other pages are mapped, in a 1-page VMA (1 folio walked) and in a 16-page one
    (16 walked, 1 mapped), each less the empty clock pair; and their difference per extra folio walked."""
    what = f"calls_probe.c (C, CPU 0): read fault of a page of a MAP_PRIVATE 16 MiB file in {file_dir}, cached, " \
           "after a 1-page MADV_DONTNEED, the rest of its window mapped, in "
    one = figure([x - empty for x in got["map_pages_1"]], "ns", what + "1-page VMAs (window of 1), less the "
                 f"empty clock pair ({empty:.0f} ns)")
    all16 = figure([x - empty for x in got["map_pages_16"]], "ns", what + "one VMA (window of 16), less the "
                   f"empty clock pair ({empty:.0f} ns)")
    per = all16.minus(one, "calls_probe.c (C, CPU 0): file_read_fault_window16_ns less file_read_fault_window1_ns, "
                                "per extra folio walked (15)")
    per = replace(per, median=per.median / 15, p10=per.p10 / 15, p90=per.p90 / 15, unit="ns/folio")
    return {"file_read_fault_window1_ns": one, "file_read_fault_window16_ns": all16, "map_pages_folio_ns": per}


def _c_call_figures(repeats: int, timeout: float, file_dir: str) -> dict[str, Figure]:
    """The figures of calls_probe.c (see calls_figures), none without a C compiler."""
    with tempfile.TemporaryDirectory() as tmp:
        exe = build_probe(CALLS_SOURCE, tmp)
        if exe is None:
            return {}
        return calls_figures(calls_samples(exe, file_dir, _C_SAMPLES, repeats, timeout), file_dir)


# ------------------------------------------------------------------ the measurement
# kernel-check scripts timed on the host in the model's own layout (probe.run_script), with their repeats
SCRIPTS = {"munmap:1:alone": 21, f"munmap:{_IDLE_PAGES}:blocked": 21, f"munmap:{_IDLE_PAGES}:alone": 21,
           f"munmap:{_MUNMAP_BYTES // sc.PAGE}:alone": 5}


def script_key(name: str) -> str:
    """The figure key of a kernel-check script's syscall time: munmap:1:alone -> munmap_1_alone_ns."""
    return name.replace(":", "_").replace("-", "_") + "_ns"


def _script(name: str, repeats: int, overhead: float, timeout: float) -> Figure:
    """The syscall time of kernel-check script `name` on the host, placed as the 6.18 model places it."""
    from mmugather.host.kernel_check import Check, layout_of, model_simulation
    from mmugather.host.probe import Script, run_script
    from mmugather.host.worker import WorkerError
    op, pages, second = name.split(":")
    check = Check(op, int(pages), second)
    layout = layout_of(model_simulation(check, 2, arch="x86"))
    r = run_script(Script(name, op, int(pages), second), repeats, timeout, layout)    # type: ignore[arg-type]
    if r.status != "ok":
        raise WorkerError(f"{name}: {r.status}: {r.reason}")
    return figure([ns - overhead for ns in r.ns], "ns", f"probe.py {name} in the model's layout, less timing overhead")


def calibrate(runs: int = 5, timeout: float = 120.0, file_dir: str = "/tmp") -> dict[str, Figure]:
    """Measure this host's figures (see the module docstring), each a Figure; `runs` (at least 5) sets the
    repeats of the fault probes (2 runs + 1). The short calls come from calls_probe.c, or from Python
    without a C compiler. Raises WorkerError if a child fails or times out."""
    reps = 2 * max(runs, 5) + 1
    f = _c_call_figures(reps, timeout, file_dir)
    if f:
        overhead = run_worker({"kind": "overhead"}, timeout)["overhead"]
    else:
        f, overhead = _python_call_figures(reps, timeout, file_dir)
    scripts = {name: _script(name, k, overhead, timeout) for name, k in SCRIPTS.items()}
    f.update(_shootdown_figures(max(runs, 5), timeout))
    f.update({script_key(name): fig for name, fig in scripts.items()})
    big, small = f[script_key(f"munmap:{_MUNMAP_BYTES // sc.PAGE}:alone")], f[script_key("munmap:1:alone")]
    pages = _MUNMAP_BYTES // sc.PAGE - 1
    f["munmap_ns_per_page"] = Figure((big.median - small.median) / pages, (big.p10 - small.p90) / pages,
                                     (big.p90 - small.p10) / pages, big.n, "ns/page",
                                     f"munmap:{pages + 1}:alone less munmap:1:alone in the model's layout, per page")
    f["idle_round_trip_ns"] = f[script_key(f"munmap:{_IDLE_PAGES}:blocked")].minus(
        f[script_key(f"munmap:{_IDLE_PAGES}:alone")],
        f"munmap:{_IDLE_PAGES}:blocked less munmap:{_IDLE_PAGES}:alone (CPU 1 idle, lazy; the PTE table freed)")
    return f


def _python_call_figures(reps: int, timeout: float, file_dir: str) -> tuple[dict[str, Figure], float]:
    """The figures of calls_probe.c measured from Python (no C compiler), and the timing overhead: each
    short call carries the ~0.5-1.5 us that _overhead_ns() does not remove."""
    null = run_worker({"kind": "null_syscall", "repeats": 201}, timeout)
    anon = run_worker({"kind": "anon_faults", "repeats": reps}, timeout)
    files = run_worker({"kind": "file_faults", "repeats": reps, "dir": file_dir}, timeout)
    calls = run_worker({"kind": "calls", "samples": _ONE_PAGE_SAMPLES}, timeout)
    pmd = run_worker({"kind": "file_pmd_faults", "repeats": 3, "dir": file_dir}, timeout)
    f = {
        "null_syscall_ns": figure(null["ns"], "ns", "getppid() less getpagesize(), loops of 200, CPU 0"),
        "zero_ns_per_page": figure(anon["zero"], "ns/page",
                                   "memset of 16 MiB of mapped 4 KiB pages (fastest of 3 hot passes)"),
        "anon_write_fault_ns": figure(anon["write_fault"], "ns/page",
                                      "memset of 16 MiB fresh anonymous, THP off, less the hot pass"),
        "anon_read_fault_ns": figure(anon["read_fault"], "ns/page",
                                     "memchr of 16 MiB fresh anonymous (zero page), less a hot pass"),
        "file_shared_write_fault_ns": figure(files["shared_write_fault"], "ns/page",
                                             f"memset of a MAP_SHARED 16 MiB file in {file_dir}, cached, less hot"),
        "file_private_write_fault_ns": figure(files["private_write_fault"], "ns/page",
                                              f"memset of a MAP_PRIVATE 16 MiB file in {file_dir}, cached, less hot"),
        "file_private_wp_copy_ns": figure(files["private_wp_copy"], "ns/page",
                                          f"memset of a MAP_PRIVATE 16 MiB file in {file_dir}, cached, after a read "
                                          "pass, less hot"),
    }
    where = f"{pmd['ranges']} PMD-sized folios of a 128 MiB MAP_SHARED file in {file_dir} written in order"
    if pmd["read"]:
        f["pmd_read_fault_ns"] = figure(pmd["read"], "ns", f"1-byte read, PMD none ({where}), less timing overhead")
        f["pmd_split_dontneed_ns"] = figure(pmd["split"], "ns", f"1-page MADV_DONTNEED of a PMD-mapped 2 MiB "
                                                                f"({where}), less timing overhead")
        f["pmd_shared_write_fault_ns"] = figure(pmd["write"], "ns", f"1-byte write, PMD none ({where}), "
                                                                    "less timing overhead")
        f["pmd_wp_write_fault_ns"] = figure(pmd["wp_write"], "ns", f"1-byte write to a read-only PMD: split, then "
                                                                   f"as pmd_shared_write_fault_ns ({where}); a "
                                                                   "check, nothing fitted to it")
    for call in ("mmap", "munmap", "dontneed", "mprotect"):
        f[f"{call}_1page_alone_ns"] = figure(calls[call], "ns", f"{call} of 1 page, alone, back to back, "
                                                                "less timing overhead")
    return {k: replace(v, probe=f"Python (no C compiler; carries Python's call overhead): {v.probe}")
            for k, v in f.items()}, calls["overhead"]


def _shootdown_figures(runs: int, timeout: float) -> dict[str, Figure]:
    """The figures of shootdown_probe.c (see shootdown_samples), none without a C compiler."""
    with tempfile.TemporaryDirectory() as tmp:
        exe = build_probe(SHOOTDOWN_SOURCE, tmp)
        if exe is None:
            return {}
        got = shootdown_samples(exe, runs, timeout)
    probe = f"shootdown_probe.c, {runs} x {_SHOOTDOWN_CALLS} calls"
    alone = figure([float(x) for x in got["alone"]], "ns", f"{probe}: 1-page MADV_DONTNEED after a write, "
                   "back to back in C on CPU 0, alone")
    running = figure([float(x) for x in got["running"]], "ns", f"{probe}: the same with thread B spinning in "
                     "user mode on CPU 1")
    return {"dontneed_loop_alone_ns": alone, "dontneed_loop_running_ns": running,
            "shootdown_round_trip_ns": running.minus(alone, f"{probe}: dontneed_loop_running_ns less "
                                                            "dontneed_loop_alone_ns (medians)"),
            "shootdown_receiver_ns": figure([float(x) for x in got["receiver"]], "ns", f"{probe}: thread B's "
                                            "time lost per interruption while spinning in user mode (gaps above "
                                            "300 ns between clock reads; nearly all are the flush IPIs)"),
            "shootdown_mutual_ns": figure([float(x) for x in got["mutual"]], "ns", f"{probe}: 1-page MADV_DONTNEED "
                                          "after a write with both threads in the loop (each flush shoots down "
                                          "the other), both threads' calls")}


def host_kernel_pages_per_s(runs: int = 3, timeout: float = 120.0) -> float:
    """4 KiB pages per second that this host's kernel munmaps (touched, THP off, 1 GiB, median of `runs`)."""
    out = run_worker({"kind": "munmap_ns", "bytes": _RATE_BYTES, "runs": runs}, timeout)
    return (_RATE_BYTES // sc.PAGE) * 1e9 / statistics.median(out["ns"])


# Figures whose noise decides whether a fit is possible (the differences are judged by their parts).
NOISE_CHECKED = ("null_syscall_ns", "zero_ns_per_page", "anon_write_fault_ns", "anon_read_fault_ns",
                 "file_shared_write_fault_ns", "file_private_write_fault_ns", "file_private_wp_copy_ns",
                 "file_read_fault_window1_ns", "file_read_fault_window16_ns",
                 "pmd_read_fault_ns", "pmd_split_dontneed_ns", "pmd_shared_write_fault_ns", "mmap_1page_alone_ns",
                 "munmap_1page_alone_ns", "dontneed_1page_alone_ns", "mprotect_1page_alone_ns",
                 "dontneed_loop_alone_ns", "dontneed_loop_running_ns", "shootdown_receiver_ns",
                 "shootdown_mutual_ns", *(script_key(name) for name in SCRIPTS))
# Checked figures that are bimodal on a quiet host, by what they measure: warned about, never refused.
BIMODAL = {script_key(f"munmap:{_IDLE_PAGES}:blocked"):
           "the flush wakes idle CPU 1, whose exit from a C-state (HLT; a vCPU wake on KVM) takes one of two times"}


def noisy(figures: dict[str, Figure], limit: float) -> list[tuple[str, float]]:
    """The checked figures, bimodal ones aside, whose middle half spreads ((p75 - p25) / median) more than
    `limit`, worst first: a host busy through the probes, not the odd slow repeat."""
    out = [(k, figures[k].iqr_spread) for k in NOISE_CHECKED
           if k in figures and k not in BIMODAL and figures[k].iqr_spread > limit]
    return sorted(out, key=lambda kv: -kv[1])


# ------------------------------------------------------------------ fitting each cost to its own probe
ModelFigure = Callable[[Costs], float]           # the model's value of a figure under the given Costs


@dataclass(frozen=True)
class Fit:
    """`fields` (solved together, shared in the defaults' proportions) set so that `model` gives the host's
    `figure`; without `model` they are set to the figure itself, less the costs of `includes` (set by
    earlier fits) that the figure also holds."""
    fields: tuple[str, ...]
    figure: str
    model: ModelFigure | None
    how: str
    includes: tuple[str, ...] = ()


def _run(scenario: dict, costs) -> dict:
    from mmugather.policies import POLICIES
    from mmugather.sim.simulation import Simulation
    from mmugather.workloads.scenario import parse_scenario
    return Simulation(parse_scenario(scenario, "calibrate micro-workload"), POLICIES["6.18"], arch="x86",
                      costs=costs).run()


def _micro(vma: dict, program: list[dict]) -> dict:
    return {"name": "calibrate", "seed": 1, "machine": {"cpus": 1, "preempt": "voluntary", "latency_task": False},
            "files": [{"name": "f"}] if vma.get("kind") == "file" else [],
            "process": [{"name": "p", "vma": [vma], "thread": [{"cpu": 0, "program": program + [{"op": "halt"}]}]}]}


_MICRO_PAGES = 256


def per_page_ns(vma: dict, before: list[dict], timed: list[dict]) -> ModelFigure:
    """The model's ns per page of the `timed` ops after `before` (one pass over _MICRO_PAGES pages of `vma`),
    less the user access itself (the host figures subtract a hot pass)."""
    def measure(costs) -> float:
        t1 = _run(_micro(vma, before + timed), costs)["sim_time_ns"]
        t0 = _run(_micro(vma, before), costs)["sim_time_ns"]
        return (t1 - t0) / _MICRO_PAGES - costs.user_access
    return measure


def syscall_ns(workload: str) -> ModelFigure:
    """The model's syscall time of a built-in OP:N:B workload (kernel-check's scripts), 2 CPUs, x86."""
    from mmugather.host.kernel_check import model_predict_ns
    return lambda costs: float(model_predict_ns(workload, costs, arch="x86"))


def _difference(a: ModelFigure, b: ModelFigure, scale: float = 1.0) -> ModelFigure:
    return lambda costs: (a(costs) - b(costs)) / scale


def _one_page_loop(vma: str, times: int) -> list[dict]:
    """shootdown_probe.c's loop: write one byte of a 1-page VMA, then MADV_DONTNEED it, `times` times."""
    page = {"vma": vma, "size": sc.PAGE}
    return [{"op": "loop", "times": times, "body": [{"op": "touch", "write": True, **page},
                                                   {"op": "madvise", "advice": "dontneed", **page}]}]


def _two_threads(a: list[dict], b: list[dict]) -> dict:
    """A scenario of one process: thread A on CPU 0 runs `a`, thread B on CPU 1 runs `b`, each a 1-page VMA."""
    vmas = [{"name": "a", "size": sc.PAGE}, {"name": "b", "size": sc.PAGE}]
    return {"name": "calibrate", "seed": 1, "machine": {"cpus": 2, "preempt": "voluntary", "latency_task": False},
            "process": [{"name": "p", "vma": vmas, "thread": [{"cpu": 0, "program": a}, {"cpu": 1, "program": b}]}]}


_PROBE_FLUSHES = 20


def receiver_ns(costs) -> float:
    """The model's shootdown_receiver_ns: thread B computes in user mode on CPU 1 for longer than thread A's
    loop of 1-page flushes takes (each flush IPIs B); B's extra time per IPI, from A's loop of 2 x
    _PROBE_FLUSHES iterations less one of _PROBE_FLUSHES (what else the run does is in both)."""
    b: list[dict] = [{"op": "compute", "ns": 4 * _PROBE_FLUSHES * 1_000_000}, {"op": "halt"}]
    ends = []
    for k in (_PROBE_FLUSHES, 2 * _PROBE_FLUSHES):
        m = _run(_two_threads(_one_page_loop("a", k), b), costs)
        if m["ipis_by_cpu"][1] != k:
            raise AssertionError(f"receiver_ns: B took {m['ipis_by_cpu'][1]} IPIs, not {k}")
        ends.append(m["sim_time_ns"])
    return (ends[1] - ends[0]) / _PROBE_FLUSHES


def mutual_ns(costs) -> float:
    """The model's shootdown_mutual_ns: both threads in the 1-page loop (each flush IPIs the other), the
    median MADV_DONTNEED."""
    m = _run(_two_threads(_one_page_loop("a", _PROBE_FLUSHES), _one_page_loop("b", _PROBE_FLUSHES)), costs)
    return float(m["syscall_ns"]["p50"])


def _pmd_micro(program: list[dict]) -> dict:
    """A file of two PMD-sized folios mapped shared (2 MiB-aligned, as the host's ext4 places it:
    thp_get_unmapped_area()), fault-around 16 pages as on the host, one CPU."""
    return {"name": "calibrate", "seed": 1, "machine": {"cpus": 1, "preempt": "voluntary", "latency_task": False,
                                                        "fault_around_pages": 16},
            "files": [{"name": "f", "cached": 2 * _PMD, "pmd_folios_from": 0}],
            "process": [{"name": "p", "vma": [{"name": "a", "size": 2 * _PMD, "kind": "file", "file": "f",
                                               "shared": True}],
                         "thread": [{"cpu": 0, "program": program + [{"op": "halt"}]}]}]}


def pmd_fault_ns(before: list[dict], timed: dict) -> ModelFigure:
    """The model's time of one `timed` access (a 1-byte read or write at the mapping's start) after
    `before`, in _pmd_micro()'s mapping."""
    def measure(costs) -> float:
        return float(_run(_pmd_micro(before + [timed]), costs)["sim_time_ns"] - _run(_pmd_micro(before), costs)[
            "sim_time_ns"])
    return measure


def pmd_split_ns(costs) -> float:
    """The model's time of a 1-page MADV_DONTNEED at the start of a PMD-mapped 2 MiB (mapped by a read)."""
    page = {"vma": "a", "size": sc.PAGE}
    m = _run(_pmd_micro([{"op": "touch", "write": False, **page}, {"op": "madvise", "advice": "dontneed", **page}]),
             costs)
    return float(m["syscall_ns"]["max"])


def map_pages_ns(costs) -> float:
    """The model's file_read_fault_window1_ns: a read fault of a cached file page in a 1-page private VMA
    (fault-around 16, clamped to the VMA: filemap_map_pages() walks and maps that one folio), after a read
    and a 1-page MADV_DONTNEED."""
    page = {"vma": "a", "size": sc.PAGE}
    before = [{"op": "touch", "write": False, **page}, {"op": "madvise", "advice": "dontneed", **page}]

    def scenario(program: list[dict]) -> dict:
        return {"name": "calibrate", "seed": 1, "machine": {"cpus": 1, "preempt": "voluntary",
                                                            "latency_task": False, "fault_around_pages": 16},
                "files": [{"name": "f", "cached": sc.PAGE}],
                "process": [{"name": "p", "vma": [{"name": "a", "size": sc.PAGE, "kind": "file", "file": "f",
                                                   "shared": False}],
                             "thread": [{"cpu": 0, "program": program + [{"op": "halt"}]}]}]}
    timed = {"op": "touch", "write": False, **page}
    return float(_run(scenario(before + [timed]), costs)["sim_time_ns"] - _run(scenario(before), costs)["sim_time_ns"])


def _mmap_ns(costs) -> float:
    m = _run(_micro({"name": "x", "size": "4KiB"}, [{"op": "mmap", "vma": {"name": "a", "size": "4KiB"}}]), costs)
    return float(m["syscall_ns"]["max"])


def fits() -> list[Fit]:
    """Every calibrated cost, in the order fitted (a fit may use the ones before it)."""
    anon = {"name": "a", "size": _MICRO_PAGES * sc.PAGE}
    file = {"name": "a", "size": _MICRO_PAGES * sc.PAGE, "kind": "file", "file": "f"}
    write, read = {"op": "touch", "vma": "a", "write": True}, {"op": "touch", "vma": "a", "write": False}
    drop = {"op": "madvise", "vma": "a", "advice": "dontneed"}
    n = _MUNMAP_BYTES // sc.PAGE
    return [
        Fit(("syscall",), "null_syscall_ns", None, "set to the figure"),
        Fit(("page_zero",), "zero_ns_per_page", None, "set to the figure (clear_page ~ a 4 KiB memset)"),
        Fit(("fault_entry",), "anon_read_fault_ns", per_page_ns(anon, [], [read]),
            "model: read pass over fresh anonymous pages (the zero page), per page"),
        Fit(("page_alloc",), "anon_write_fault_ns", per_page_ns(anon, [], [write]),
            "model: write pass over fresh anonymous pages, per page"),
        Fit(("pte_zap", "page_free"), "munmap_ns_per_page",
            _difference(syscall_ns(f"munmap:{n}:alone"), syscall_ns("munmap:1:alone"), n - 1),
            f"model: munmap:{n}:alone less munmap:1:alone, per page"),
        Fit(("munmap_call",), "munmap_1page_alone_ns", syscall_ns("munmap:1:alone"), "model: munmap:1:alone"),
        Fit(("madvise_call",), "dontneed_1page_alone_ns", syscall_ns("dontneed:1:alone"),
            "model: dontneed:1:alone"),
        Fit(("mprotect_call",), "mprotect_1page_alone_ns", syscall_ns("mprotect:1:alone"),
            "model: mprotect:1:alone"),
        Fit(("mmap_call",), "mmap_1page_alone_ns", _mmap_ns, "model: mmap of 1 page"),
        Fit(("file_fault",), "file_private_write_fault_ns",
            per_page_ns({**file, "shared": False}, [read, drop], [write]),
            "model: write pass over a cached file, private mapping, per page"),
        Fit(("wp_copy",), "file_private_wp_copy_ns", per_page_ns({**file, "shared": False}, [read], [write]),
            "model: write pass over a private file mapping after a read pass (copy of a mapped page), per page"),
        Fit(("page_mkwrite",), "file_shared_write_fault_ns",
            per_page_ns({**file, "shared": True}, [write, drop], [write]),
            "model: write pass over a cached file, shared mapping, per page"),
        Fit(("map_pages_folio",), "map_pages_folio_ns", None,
            "set to the figure (next_uptodate_folio() and the PTE check of one more folio of the window)"),
        Fit(("map_pages",), "file_read_fault_window1_ns", map_pages_ns,
            "model: a read fault of a cached file page in a 1-page private VMA (fault-around: 1 folio walked)"),
        Fit(("ipi_handler",), "shootdown_receiver_ns", receiver_ns,
            f"model: B computing on CPU 1 while A sends {2 * _PROBE_FLUSHES} 1-page flushes less while A sends "
            f"{_PROBE_FLUSHES}, per IPI"),
        Fit(("pmd_map",), "pmd_read_fault_ns", pmd_fault_ns([], {"op": "touch", "vma": "a", "size": sc.PAGE,
                                                                   "write": False}),
            "model: a read fault mapping a PMD-sized file folio by one PMD (fault-around, do_set_pmd())"),
        Fit(("split_huge_pmd",), "pmd_split_dontneed_ns", pmd_split_ns,
            "model: a 1-page MADV_DONTNEED splitting a file PMD (__split_huge_pmd(), its flush included)"),
        Fit(("page_mkwrite_pmd",), "pmd_shared_write_fault_ns",
            pmd_fault_ns([], {"op": "touch", "vma": "a", "size": sc.PAGE, "write": True}),
            "model: a shared write fault mapping a PMD-sized folio (->page_mkwrite() over its 512 pages, "
            "do_set_pmd()); the first page's ->page_mkwrite() is page_mkwrite's"),
        Fit(ROUND_TRIP_FIELDS, "shootdown_round_trip_ns",
            _difference(syscall_ns("dontneed:1:running"), syscall_ns("dontneed:1:alone")),
            "model: dontneed:1:running less dontneed:1:alone", includes=("ipi_handler",)),
        Fit(("ipi_idle_exit",), "idle_round_trip_ns",
            _difference(syscall_ns(f"munmap:{_IDLE_PAGES}:blocked"), syscall_ns(f"munmap:{_IDLE_PAGES}:alone")),
            f"model: munmap:{_IDLE_PAGES}:blocked less munmap:{_IDLE_PAGES}:alone"),
    ]


# the round trip's parts other than the target's handler (fitted first, to the receiver's own figure)
ROUND_TRIP_FIELDS = ("ipi_send", "ipi_delivery", "ipi_ack")
# figures the model is checked against, not fitted to: (figure, the model's version, how)
CHECKS = (("shootdown_mutual_ns", mutual_ns,
           f"model: both threads in the 1-page loop ({_PROBE_FLUSHES} each), median MADV_DONTNEED"),)


def checks(figures: dict[str, Figure], costs) -> list[tuple[str, Figure, float, str]]:
    """(figure, the host's Figure, the model's value under `costs`, how) of each CHECKS figure measured."""
    return [(k, figures[k], model(costs), how) for k, model, how in CHECKS if k in figures]


def _split(total: float, fields: tuple[str, ...], base) -> dict[str, int]:
    """`total` ns shared among `fields` in the proportions they have in `base` (integers summing to it;
    equal shares where `base` has them all 0)."""
    weights = [getattr(base, f) for f in fields]
    if not any(weights):
        weights = [1] * len(fields)
    total = max(0, round(total))
    out = {f: total * w // sum(weights) for f, w in zip(fields, weights)}
    out[fields[-1]] += total - sum(out.values())
    return out


def _solve(fit: Fit, target: float, costs, base):
    """The Costs with `fit.fields` set so that fit.model(costs) == target (the model is affine in them:
    two evaluations give the slope, a second round absorbs rounding); (costs, model value, note)."""
    from dataclasses import replace
    assert fit.model is not None
    total = float(sum(getattr(costs, f) for f in fit.fields))
    for _ in range(2):
        lo = fit.model(replace(costs, **_split(total, fit.fields, base)))
        hi = fit.model(replace(costs, **_split(total + 1000, fit.fields, base)))
        slope = (hi - lo) / 1000
        if slope <= 0:
            return costs, lo, "not charged by the model's probe workload: left as it was"
        total = max(0.0, total + (target - lo) / slope)
    costs = replace(costs, **_split(total, fit.fields, base))
    got = fit.model(costs)
    note = "" if abs(got - target) <= max(2.0, 0.01 * abs(target)) else \
        f"the model's other charges alone exceed the host's figure (model {got:,.0f} ns)"
    return costs, got, note


def fit_costs(figures: dict[str, Figure], with_model: bool = True, base=None) -> tuple[dict[str, int], dict[str, str]]:
    """Cost overrides fitted from `figures` (see `calibrate`) and, per key, where its value came from.
    Each fit sets its fields so that the model's own version of the probe (fits()) gives the host's median;
    without the model only the fits with no model figure are made, the receiver's time sets ipi_handler, and
    the two round trips (less what earlier fits already hold) and the per-page munmap time are shared among
    their fields directly."""
    from dataclasses import replace

    base = base or Costs()
    costs, out, sources = base, {}, {}
    for fit in fits():
        if fit.figure not in figures:
            continue
        fig = figures[fit.figure]
        where = f"{fit.figure} (median {fig.median:,.1f} {fig.unit}, p10 {fig.p10:,.1f}, p90 {fig.p90:,.1f}, n {fig.n})"
        if fit.model is None or not with_model:
            if fit.model is not None and fit.fields[0] not in ("pte_zap", "ipi_handler", "ipi_send", "ipi_idle_exit"):
                continue
            held = sum(getattr(costs, f) for f in fit.includes)
            costs = replace(costs, **_split(fig.median - held, fit.fields, base))
            note = "set from the figure, not fitted (no model)" if fit.model else fit.how
        else:
            costs, _, note = _solve(fit, fig.median, costs, base)
            note = fit.how + (f"; {note}" if note else "")
        for f in fit.fields:
            out[f] = getattr(costs, f)
            sources[f] = f"{where}: {note}"
    return out, sources


def cost_file_text(figures: dict[str, Figure], costs: dict[str, int], sources: dict[str, str], fmt: str,
                   note: str) -> str:
    """The cost file: `costs` (what --costs reads; in TOML each key carries its source as a comment, in
    JSON a `sources` table) and the `measured` figures with their spread, unit and probe."""
    import json
    measured = {k: f.as_dict() for k, f in figures.items()}
    if fmt == "json":
        return json.dumps({"costs": costs, "sources": sources, "measured": measured, "note": note}, indent=2) + "\n"
    lines = [f"# {line}" for line in note.splitlines()] + ["", "[costs]   # simulated ns"]
    for k, v in costs.items():
        lines += [f"# {k}: {sources.get(k, '')}", f"{k} = {v}"]
    for k, d in measured.items():
        lines += ["", f"[measured.{k}]"] + [f"{f} = {json.dumps(v)}" for f, v in d.items()]
    return "\n".join(lines) + "\n"
