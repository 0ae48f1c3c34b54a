"""A comparison's runs in parallel: each run (a policy on an arch) in a worker process of pool.py, the
outcomes in the order asked for, exactly as api.compare makes them one after another in one process.

The workers are forks of the main process (pool.py's "fork" method) that inherit the comparison (a
`Job`: its scenario, policy classes, overrides, and the function that makes one run's outcome,
api.compare_run, passed down because this module sits below api) and receive only a run's number; each
runs it and sends back its outcome. A plugin that fails while it runs comes back as its PluginError; any
other error is raised in the main process (the first in run order, as the serial path raises it) and the
other workers are killed; a worker that dies (killed, out of memory) is one InputError. Each worker
writes the simulated time its run has reached, and the fraction of its work done (sim/progress.py), to
its slots of two shared arrays every POLL_S, which the main process reads to tell `progress` (a
`Progress`, also api.Progress).
"""
from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from mmugather.errors import InputError
from mmugather.pool import context, process_pool, worker_shared

if TYPE_CHECKING:
    from mmugather.policies.base import Kernel
    from mmugather.workloads.scenario import Scenario

POLL_S = 0.1
QUEUED = -1                  # a slot's value before its run starts; then the simulated ns it has reached
METHOD = "fork"
T = TypeVar("T")                # a run's outcome (api.Outcome)


class Progress(Protocol):
    """Told of compare's runs (cli/progress.py draws a bar): each run's start, with a clock that reads the
    simulated time it has reached and a reader of the fraction of its work done (in [0, 1), rising:
    sim/progress.py RunFraction), and its end with the simulated time it took. Runs in parallel workers
    overlap: several may have started and not ended."""

    def run_started(self, label: str, clock: Callable[[], int], fraction: Callable[[], float]) -> None: ...

    def run_done(self, label: str, sim_ns: int) -> None: ...


@dataclass(frozen=True)
class Job(Generic[T]):
    """A comparison as its workers inherit it: the runs (policy class, arch or None), their progress
    labels, and what every run shares."""
    scenario: Scenario
    runs: list[tuple[type[Kernel], str | None]]
    labels: list[str]
    tracing: bool
    kw: dict[str, Any]              # api.compare's overrides and bounds
    run: Callable[..., T]           # api.compare_run (passed down: this module sits below api)


class _SlotClock:
    """In a worker (an api.Progress): publishes the running simulation's clock and fraction done in its
    slots every POLL_S until the run ends; a context manager, so that no publisher outlives its run."""

    def __init__(self, slots: Any, fractions: Any, slot: int) -> None:
        self.slots, self.fractions, self.slot = slots, fractions, slot
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_started(self, label: str, clock: Callable[[], int], fraction: Callable[[], float]) -> None:
        self.slots[self.slot] = 0

        def publish() -> None:
            while not self._stop.wait(POLL_S):
                self.slots[self.slot] = clock()
                self.fractions[self.slot] = fraction()
        self._thread = threading.Thread(target=publish, name="mmugather-run-clock", daemon=True)
        self._thread.start()

    def run_done(self, label: str, sim_ns: int) -> None:
        self.__exit__()
        self.slots[self.slot] = sim_ns

    def __enter__(self) -> _SlotClock:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


def run_task(k: int) -> Any:
    """In a worker: run `k` of the inherited Job."""
    slots, fractions, job = worker_shared()
    cls, arch = job.runs[k]
    with _SlotClock(slots, fractions, k) as clock:
        return job.run(job.scenario, cls, job.tracing, clock, arch=arch, **job.kw)


def run_parallel(job: Job[T], jobs: int, progress: Progress | None) -> list[T]:
    """The outcome of each run of `job`, `jobs` at a time in worker processes, in run order."""
    slots = context(METHOD).Array("q", [QUEUED] * len(job.runs), lock=False)
    fractions = context(METHOD).Array("d", [0.0] * len(job.runs), lock=False)
    try:
        with process_pool(jobs, method=METHOD, shared=(slots, fractions, job)) as pool:
            futures = [pool.submit(run_task, k) for k in range(len(job.runs))]
            _wait_in_order(futures, job.labels, (slots, fractions), progress)
    except BrokenProcessPool:
        raise InputError("compare: a worker process died while it ran (killed, out of memory?); --jobs 1 runs "
                         "one run at a time in this process") from None
    return [f.result() for f in futures]


def _wait_in_order(futures: list[Future], labels: list[str], slots: tuple[Any, Any],
                   progress: Progress | None) -> None:
    """Wait for every run, telling `progress` of each start and end; raise the error of the first run (in
    run order) that raised one, once the runs before it have ended."""
    told = [0] * len(futures)                  # 0: nothing told, 1: started, 2: done
    while True:
        if progress is not None:
            _tell(progress, futures, labels, slots, told)
        failed = next((k for k, f in enumerate(futures) if f.done() and f.exception() is not None), None)
        if failed is not None and all(f.done() for f in futures[:failed]):
            futures[failed].result()
        running = [f for f in futures if not f.done()]
        if not running:
            return
        wait(running, timeout=POLL_S, return_when=FIRST_COMPLETED)


def _read_clock(clocks: Any, k: int) -> int:
    return max(0, clocks[k])


def _tell(progress: Progress, futures: list[Future], labels: list[str], slots: tuple[Any, Any],
          told: list[int]) -> None:
    """Tell `progress` of the runs started and ended since the last call; `slots`: the workers' clocks
    and fractions done."""
    clocks, fractions = slots
    for k, f in enumerate(futures):
        if told[k] == 0 and (clocks[k] != QUEUED or f.done()):
            progress.run_started(labels[k], functools.partial(_read_clock, clocks, k),
                                 functools.partial(fractions.__getitem__, k))
            told[k] = 1
        if told[k] == 1 and f.done():
            progress.run_done(labels[k], max(0, clocks[k]))
            told[k] = 2
