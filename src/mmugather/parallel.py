"""A comparison's runs in parallel: each run (a policy on an arch) in a worker process of pool.py, the
outcomes in the order asked for, exactly as api.compare makes them one after another in one process.

A worker loads the policy again by name or plugin spec (api.worker_spec) from the main process's working
directory and import path, and runs `api.compare_run`; a plugin that fails while it runs comes back as its
PluginError, any other error is raised in the main process (the first in run order, as the serial path
would raise it) and the other workers are killed. Each worker writes the simulated time its run has
reached to a slot of a shared array every POLL_S, which the main process reads to tell `progress`.
"""
from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mmugather.pool import context, process_pool, worker_shared

if TYPE_CHECKING:
    from mmugather.api import Outcome, Progress
    from mmugather.workloads.scenario import Scenario

POLL_S = 0.1
QUEUED = -1                  # a slot's value before its run starts; then the simulated ns it has reached


@dataclass(frozen=True)
class RunTask:
    """One run as a worker receives it."""
    slot: int
    policy: str                     # api.worker_spec: a built-in's name or a plugin's spec
    arch: str | None
    scenario: Scenario
    tracing: bool
    kw: dict[str, Any]              # api.compare's overrides and bounds
    cwd: str                        # where a relative plugin path is found
    sys_path: tuple[str, ...]       # where a MODULE:CLASS plugin is found


class _SlotClock:
    """In a worker (an api.Progress): publishes the running simulation's clock in its slot every POLL_S
    until the run ends; used as a context manager so that no publisher outlives its task."""

    def __init__(self, slots: Any, slot: int) -> None:
        self.slots, self.slot = slots, slot
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_started(self, label: str, clock) -> None:
        self.slots[self.slot] = 0

        def publish() -> None:
            while not self._stop.wait(POLL_S):
                self.slots[self.slot] = clock()
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


def run_task(task: RunTask) -> Outcome:
    """In a worker: load the policy as the main process did (same directory and import path), run it."""
    if os.getcwd() != task.cwd:
        os.chdir(task.cwd)
    sys.path[:] = task.sys_path
    from mmugather.api import compare_run
    from mmugather.policies import get_policy
    cls = get_policy(task.policy)
    with _SlotClock(worker_shared(), task.slot) as clock:
        return compare_run(task.scenario, cls, task.tracing, clock, arch=task.arch, **task.kw)


def run_parallel(scenario: Scenario, runs: list[tuple[str, str | None, str]], tracing: bool, jobs: int,
                 progress: Progress | None, kw: dict[str, Any]) -> list[Outcome]:
    """The outcome of each run (policy spec, arch, progress label) in `jobs` worker processes, in order."""
    tasks = [RunTask(k, spec, arch, scenario, tracing, kw, os.getcwd(), tuple(sys.path))
             for k, (spec, arch, _) in enumerate(runs)]
    slots = context().Array("q", [QUEUED] * len(tasks), lock=False)
    with process_pool(jobs, shared=slots) as pool:
        futures = [pool.submit(run_task, t) for t in tasks]
        _wait_in_order(futures, [label for _, _, label in runs], slots, progress)
    return [f.result() for f in futures]


def _wait_in_order(futures: list[Future], labels: list[str], slots: Any, progress: Progress | None) -> None:
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


def _reader(slots: Any, k: int) -> Callable[[], int]:
    return lambda: max(0, slots[k])


def _tell(progress: Progress, futures: list[Future], labels: list[str], slots: Any, told: list[int]) -> None:
    for k, f in enumerate(futures):
        if told[k] == 0 and (slots[k] != QUEUED or f.done()):
            progress.run_started(labels[k], _reader(slots, k))
            told[k] = 1
        if told[k] == 1 and f.done():
            progress.run_done(labels[k], max(0, slots[k]))
            told[k] = 2
