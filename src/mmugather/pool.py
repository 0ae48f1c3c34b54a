"""Worker processes on this machine, for the work that runs in parallel: a sweep's chunks of points
(sweep.py) and a comparison's runs (parallel.py).

Two start methods (measured on a 2-core host, a pool of 2 workers to its first results: fork 0.015 s,
forkserver 0.53 s, spawn 0.86-1.5 s):
- "forkserver" (sweep): the workers fork from a server process that has imported mmugather once (the
  0.5 s is its start), never from the main process, whose other threads (a sweep's progress bar, a Dask
  client) are running when a pool spawns workers as work arrives; a worker re-imports the main script
  (multiprocessing's rule: a script guards its work with `if __name__ == "__main__"`).
- "fork" (compare): the workers are copies of the main process, made at once when the first task is
  submitted: they inherit the work (`shared`: a comparison's scenario and policy classes, whatever made
  them, a plugin file or a notebook) instead of receiving it pickled, start in milliseconds and import
  nothing. Safe when the caller forks before starting threads of its own (compare's progress bar starts
  its thread at the first run's start, after the fork).
Each worker ignores Ctrl-C (the main process ends the workers itself) and exits when the main process
dies, even by kill -9. A Ctrl-C that comes while workers are being started finds none of them before it
ignores SIGINT: submit() blocks SIGINT while it may start processes (a fork and the fork server inherit the
mask; the worker unblocks it once SIGINT is ignored), and the main process takes the pending signal as
submit() returns, not inside multiprocessing's bookkeeping. On any exit from `process_pool` but a normal
one (Ctrl-C, an error) the workers are killed at once.
"""
from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from multiprocessing.context import BaseContext
from typing import Any

PR_SET_PDEATHSIG = 1
WATCHDOG_PERIOD_S = 0.5
PRELOAD = ["mmugather.api"]          # the fork server imports the simulation and sweep.py

_MASKS = hasattr(signal, "pthread_sigmask")     # signal masks (POSIX; not on Windows)
_shared: Any = None          # in a worker: the `shared` object its pool was made with


def usable_cores() -> int:
    """The CPUs this process may run on (its affinity mask, as taskset or a container's cpuset sets it)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def context(method: str = "forkserver") -> BaseContext:
    """The start method's context (shared memory for the workers is made from it: `process_pool(shared=)`)."""
    ctx = multiprocessing.get_context(method)
    if method == "forkserver":
        ctx.set_forkserver_preload(PRELOAD)
    return ctx


def can_fork() -> bool:
    """May this process fork workers: the platform has the "fork" start method (not Windows), and this
    is not a daemonic process (a multiprocessing pool's worker, which may have no children)?"""
    return "fork" in multiprocessing.get_all_start_methods() and not multiprocessing.current_process().daemon


def worker_shared() -> Any:
    """In a worker: the `shared` object given to `process_pool` (None in the main process)."""
    return _shared


def _parent_alive(pid: int) -> bool:
    """Is process `pid` still running (not gone, not a zombie waiting to be reaped)?"""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return not sys.platform.startswith("linux")


def _worker_init(main_pid: int, shared: Any) -> None:
    """In each pool worker: leave Ctrl-C to the main process (which ends the workers itself), and exit
    when the main process dies, even by kill -9: PR_SET_PDEATHSIG follows the worker's parent (the main
    process, or the fork server, which exits with it), and a watchdog thread checks the main process."""
    global _shared
    _shared = shared
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if _MASKS:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # blocked by _Pool.submit() until now
    parent = os.getppid()
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass

    def watchdog() -> None:
        while os.getppid() == parent and _parent_alive(main_pid):
            threading.Event().wait(WATCHDOG_PERIOD_S)
        os._exit(1)
    threading.Thread(target=watchdog, name="mmugather-pool-watchdog", daemon=True).start()


class _Pool(ProcessPoolExecutor):
    """A ProcessPoolExecutor whose submit() holds SIGINT back while it runs: submit() is where the pool
    forks its workers (all at the first submit under "fork"; one per submit under "forkserver", the server
    itself at the first). Without it a Ctrl-C at that moment reaches a worker before _worker_init ignores
    it (the worker dies with a traceback: a broken pool) or interrupts the main process inside
    multiprocessing's own bookkeeping (a half-made Finalize)."""

    def submit(self, fn, /, *args, **kwargs):
        if not _MASKS:
            return super().submit(fn, *args, **kwargs)
        held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            return super().submit(fn, *args, **kwargs)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)


@contextmanager
def process_pool(workers: int, *, method: str = "forkserver", shared: Any = None) -> Iterator[ProcessPoolExecutor]:
    """A pool of `workers` processes started by `method` (`shared`, e.g. a context(method).Array, is handed
    to each: worker_shared()).
    Leaving the block normally waits for the work submitted; any other exit kills the workers at once
    (work in flight is lost) and leaves no process behind but the fork server."""
    if workers < 1:
        raise ValueError(f"process_pool: workers must be >= 1, got {workers}")
    pool = _Pool(workers, mp_context=context(method), initializer=_worker_init, initargs=(os.getpid(), shared))
    try:
        yield pool
    except BaseException:
        kill(pool)
        raise
    pool.shutdown(cancel_futures=True)


def kill(pool: ProcessPoolExecutor) -> None:
    """Kill the pool's workers now and wait for them (no public API kills a pool's workers), and for the
    pool's manager thread: it closes the pool's wake-up pipe as it ends, and CPython 3.11's exit hook
    (concurrent.futures.process._python_exit) writes to that pipe unlocked, so a close racing the exit
    printed "OSError: Bad file descriptor" after a Ctrl-C."""
    procs = list((pool._processes or {}).values())
    manager: threading.Thread | None = getattr(pool, "_executor_manager_thread", None)
    for proc in procs:
        proc.kill()
    pool.shutdown(wait=False, cancel_futures=True)
    for proc in procs:
        proc.join()
    if manager is not None:
        manager.join(timeout=10)
