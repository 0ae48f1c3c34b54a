"""Worker processes on this machine, for the work that runs in parallel: a sweep's chunks of points
(sweep.py) and a comparison's runs (api.compare with jobs > 1).

The workers fork from a fork server (multiprocessing's "forkserver" start method) that has imported
mmugather once: a worker starts in milliseconds without copying the main process, whose other threads
(compare's progress bar, a Dask client) a plain fork would copy in whatever state they were in. The server
costs one interpreter start and import (about 0.5 s), paid once per main process; `start_server()` starts
it early so that it overlaps the main process's own work. Each worker ignores Ctrl-C (the main process
ends the workers itself) and exits when the main process dies, even by kill -9. On any exit from
`process_pool` but a normal one (Ctrl-C, an error) the workers are killed at once.
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
PRELOAD = ["mmugather.api"]          # imports the simulation and sweep.py

_shared: Any = None          # in a worker: the `shared` object its pool was made with


def usable_cores() -> int:
    """The CPUs this process may run on (its affinity mask, as taskset or a container's cpuset sets it)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def context() -> BaseContext:
    """The start method's context (shared memory for the workers is made from it: `process_pool(shared=)`)."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    return ctx


def start_server() -> None:
    """Start the fork server now, if it is not running, without waiting for its imports."""
    context()
    from multiprocessing import forkserver
    forkserver.ensure_running()


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
    when the main process dies, even by kill -9: PR_SET_PDEATHSIG follows the worker's parent (the fork
    server, which exits with the main process), and a watchdog thread checks the main process."""
    global _shared
    _shared = shared
    signal.signal(signal.SIGINT, signal.SIG_IGN)
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


@contextmanager
def process_pool(workers: int, *, shared: Any = None) -> Iterator[ProcessPoolExecutor]:
    """A pool of `workers` processes (`shared`, e.g. a context().Array, is handed to each: worker_shared()).
    Leaving the block normally waits for the work submitted; any other exit kills the workers at once
    (work in flight is lost) and leaves no process behind but the fork server."""
    if workers < 1:
        raise ValueError(f"process_pool: workers must be >= 1, got {workers}")
    pool = ProcessPoolExecutor(workers, mp_context=context(), initializer=_worker_init,
                               initargs=(os.getpid(), shared))
    try:
        yield pool
    except BaseException:
        kill(pool)
        raise
    pool.shutdown(cancel_futures=True)


def kill(pool: ProcessPoolExecutor) -> None:
    """Kill the pool's workers now and wait for them (no public API kills a pool's workers)."""
    procs = list((pool._processes or {}).values())
    for proc in procs:
        proc.kill()
    pool.shutdown(wait=False, cancel_futures=True)
    for proc in procs:
        proc.join()
