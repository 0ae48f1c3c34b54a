"""Run host measurements in a fresh, CPU-0-pinned child process, and the second thread they need.

The child is pinned to CPU 0 before exec (so its mm has never been loaded on another CPU: no CPU but 0 is
in its mm_cpumask until a second thread runs elsewhere), runs one job with a hard timeout, and prints one
JSON object; killing it on timeout cleans up every thread. The child's entry point is host/child.py
(`python -m mmugather.host.child JOB_JSON`), above the jobs that import this module.
"""
from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
import threading
import time

from mmugather.host import syscalls as sc

_BUSY_BYTES = 16 << 30
_libc = ctypes.CDLL(None)
_memchr = _libc.memchr
_memchr.restype = ctypes.c_void_p
_memchr.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]


def realtime(on: bool) -> None:
    """Make the calling thread SCHED_FIFO (priority 1) where permitted, so that ordinary tasks and kernel
    threads do not preempt it on its CPU (RT throttling still leaves others 5% of each second), or back to
    SCHED_OTHER."""
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO if on else os.SCHED_OTHER, os.sched_param(1 if on else 0))
    except OSError:
        pass


class WorkerError(RuntimeError):
    """The child failed, timed out, or printed no result."""


def run_worker(job: dict, timeout: float) -> dict:
    """Run `job` in a child pinned to CPU 0; its JSON result, or WorkerError."""
    cmd = [sys.executable, "-m", "mmugather.host.child", json.dumps(job)]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                           preexec_fn=lambda: os.sched_setaffinity(0, {0}))
    except subprocess.TimeoutExpired:
        raise WorkerError(f"{job['kind']}: timed out after {timeout:g} s") from None
    if r.returncode != 0:
        tail = (r.stderr.strip().splitlines() or ["no output"])[-1]
        raise WorkerError(f"{job['kind']}: worker exited {r.returncode}: {tail}")
    return json.loads(r.stdout)


def _state(tid: int) -> str:
    """The scheduler state letter of one of this process's threads (R running, S sleeping...)."""
    with open(f"/proc/self/task/{tid}/stat") as f:
        return f.read().rpartition(")")[2].split()[0]


class SecondThread:
    """Thread B of the probes, pinned to `cpu`.

    mode "running": each `enter()` makes B spend one long C call (memchr over `busy_bytes`, 16 GiB by
    default, of read-only anonymous memory backed by the zero page, so it costs page tables only and never
    faults; about 0.2 s per 16 GiB here), as a SCHED_FIFO thread where permitted, holding
    no GIL, so B's CPU runs this mm and is never lazy. `inside()` tells whether that call is still going.
    mode "blocked": B sits in read(2) on a pipe until `stop()`; its CPU goes idle (lazy TLB).
    """

    def __init__(self, mode: str, cpu: int = 1, busy_bytes: int = _BUSY_BYTES) -> None:
        if mode not in ("running", "blocked"):
            raise ValueError(f"mode: expected running or blocked, got {mode!r}")
        self.mode = mode
        self.cpu = cpu
        self.tid = 0
        self._go = threading.Event()
        self._entered = threading.Event()
        self._done = threading.Event()
        self._done.set()
        self._stop = False
        self._rfd, self._wfd = os.pipe()
        self._busy = 0
        self._busy_bytes = busy_bytes
        self._status_fd = -1
        self._status_buf = bytearray(1 << 16)
        if mode == "running":
            self._busy = sc.mmap(busy_bytes, sc.PROT_READ)
            sc.madvise(self._busy, busy_bytes, sc.MADV_HUGEPAGE)
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self._ready.wait()
        if mode == "blocked":
            self._wait_state("S")

    def _run(self) -> None:
        sc.pin(self.cpu)
        self.tid = threading.get_native_id()
        if self.mode == "running":
            _memchr(self._busy, 1, self._busy_bytes)  # fault in the zero page before any measurement
            realtime(True)
        self._ready.set()
        if self.mode == "blocked":
            os.read(self._rfd, 1)
            return
        while True:
            self._go.wait()
            self._go.clear()
            if self._stop:
                return
            self._done.clear()
            self._entered.set()
            _memchr(self._busy, 1, self._busy_bytes)
            self._done.set()

    def _wait_state(self, want: str, limit_s: float = 2.0) -> None:
        end = time.monotonic() + limit_s
        while _state(self.tid) != want:
            if time.monotonic() > end:
                raise WorkerError(f"second thread never reached state {want}")
            time.sleep(0.001)

    def enter(self) -> None:
        """Start one long C call on B and return once B is running in it (mode "running")."""
        self._entered.clear()
        self._go.set()
        self._entered.wait()
        self._wait_state("R")

    def inside(self) -> bool:
        """Whether B's current long call has not returned yet."""
        return not self._done.is_set()

    def preemptions(self) -> int:
        """How often B has been preempted so far (nonvoluntary_ctxt_switches); read into a preallocated
        buffer, so calling it allocates nothing the measurement could see."""
        if self._status_fd < 0:
            self._status_fd = os.open(f"/proc/self/task/{self.tid}/status", os.O_RDONLY)
        os.lseek(self._status_fd, 0, os.SEEK_SET)
        n = os.readv(self._status_fd, [self._status_buf])
        at = self._status_buf.find(b"nonvoluntary_ctxt_switches:", 0, n)
        return int(self._status_buf[at:n].split(b":", 1)[1].split(b"\n", 1)[0])

    def leave(self) -> None:
        """Wait for B's current long call to return."""
        self._done.wait()

    def stop(self) -> None:
        """End thread B and release its memory."""
        self._stop = True
        if self.mode == "running":
            self._done.wait()
            self._go.set()
        else:
            os.write(self._wfd, b"x")
        self._thread.join()
        if self._status_fd >= 0:
            os.close(self._status_fd)
        os.close(self._rfd)
        os.close(self._wfd)
        if self._busy:
            sc.munmap(self._busy, self._busy_bytes)

