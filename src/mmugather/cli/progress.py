"""A progress bar for `compare`: on stderr, only when stderr is a terminal and the output is not JSON, and
only once the compare has run for more than DELAY seconds (quick runs print nothing extra).

Rich (a dependency already) draws it. The bar shows the fraction of all runs (policy x arch) done: the
sum of the runs' fractions (1 for each finished run; for a run going on, the fraction of its work done:
sim/progress.py RunFraction) over the number of runs, so that it moves, and Rich's ETA follows from it,
from the first poll on, with one run at a time (--jobs 1) or several in workers. The rate column is
simulated time per wall-clock second, summed over the runs going on. A watcher thread polls their clocks
and fractions (each a read of a number: of the Simulation in this process, of a worker's slot in shared
memory: parallel.py).
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import IO

from rich.console import Console
from rich.progress import (BarColumn, Progress, ProgressColumn, Task, TaskID, TaskProgressColumn, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)
from rich.text import Text


def progress_wanted(stream: IO[str], as_json: bool) -> bool:
    """Whether compare shows a progress bar on `stream`: a terminal, and not --json."""
    isatty = getattr(stream, "isatty", None)
    return not as_json and callable(isatty) and bool(isatty())


class _SimRate(ProgressColumn):
    """Simulated time per wall-clock second of the current run."""

    def render(self, task: Task) -> Text:
        rate = task.fields.get("rate")
        return Text("" if rate is None else f"{rate / 1e6:.1f} sim-ms/s", style="progress.data.speed")


def _going_on(running: dict) -> str:
    """The run going on by its label; several (parallel workers) by their number, to keep the bar short."""
    return next(iter(running), "") if len(running) <= 1 else f"{len(running)} runs at once"


class CompareProgress:
    """compare's progress (an api.Progress): `run_started(label, clock, fraction)` as each run starts,
    `run_done(label, sim_ns)` as it ends; runs may overlap. Use as a context manager; draws nothing
    unless `enabled`, and nothing before DELAY seconds have passed since entering."""

    DELAY = 1.0
    POLL = 0.1

    def __init__(self, runs: int, stream: IO[str], *, enabled: bool, delay: float | None = None) -> None:
        self.runs = runs
        self.enabled = enabled
        self.delay = self.DELAY if delay is None else delay
        self.done = 0
        # label -> (clock, fraction done), in start order
        self.running: dict[str, tuple[Callable[[], int], Callable[[], float]]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._bar: Progress | None = None
        self._task: TaskID | None = None
        self._console = Console(file=stream, stderr=True, force_terminal=enabled or None)

    def __enter__(self) -> CompareProgress:
        self._t0 = time.monotonic()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._bar is not None:
            self._bar.stop()

    def run_started(self, label: str, clock: Callable[[], int], fraction: Callable[[], float]) -> None:
        """The watcher thread starts with the first run: after compare's workers have forked
        (parallel.py), which copy no thread of this process."""
        self.running = {**self.running, label: (clock, fraction)}
        if self.enabled and self._thread is None and not self._stop.is_set():
            self._thread = threading.Thread(target=self._watch, name="compare-progress", daemon=True)
            self._thread.start()

    def run_done(self, label: str, sim_ns: int) -> None:
        self.done += 1
        self.running = {k: c for k, c in self.running.items() if k != label}

    def _watch(self) -> None:
        last: tuple[float, int] | None = None
        shown = 0.0                 # the bar never goes back (a run may end between the reads below)
        while not self._stop.wait(self.POLL):
            if self._bar is None:
                if time.monotonic() - self._t0 < self.delay:
                    continue
                self._start()
            assert self._bar is not None and self._task is not None
            running, done = self.running, self.done          # one snapshot: runs end meanwhile
            nows = [clock() for clock, _ in running.values()]
            frac = sum(min(1.0, max(0.0, fraction())) for _, fraction in running.values())
            t, total = time.monotonic(), sum(nows)
            rate = None
            if last is not None and total >= last[1] and t > last[0]:
                rate = (total - last[1]) / (t - last[0])
            last = (t, total)
            shown = max(shown, min(self.runs, done + frac))
            self._bar.update(self._task, completed=shown, rate=rate,
                             description=f"compare {_going_on(running)} ({done}/{self.runs} runs)")

    def _start(self) -> None:
        self._bar = Progress(TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(), _SimRate(),
                             TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                             console=self._console, transient=True)
        self._task = self._bar.add_task("compare", total=self.runs, rate=None)
        self._bar.start()
