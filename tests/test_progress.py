"""compare's progress bar (cli/progress.py): on stderr only when it is a terminal and the output is not
JSON, and only after the compare has run past its delay; each run's fraction done (sim/progress.py)."""
import io
import re
import time

import pytest
from helpers import cli_in_process

from mmugather.api import resolve_policy, resolve_scenario
from mmugather.cli.progress import CompareProgress, progress_wanted
from mmugather.machine.engine import EngineObserver
from mmugather.sim.progress import RunFraction
from mmugather.sim.simulation import Simulation


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


class _Clock:
    now = 0

    def __call__(self) -> int:
        return self.now


class _Fraction:
    """A run's fraction done that rises by `step` at every read (every poll of the bar)."""

    def __init__(self, step: float = 0.0, at: float = 0.0) -> None:
        self.step, self.at = step, at

    def __call__(self) -> float:
        self.at = min(0.99, self.at + self.step)
        return self.at


def _drive(stream, *, enabled: bool, delay: float) -> str:
    clock = _Clock()
    with CompareProgress(2, stream, enabled=enabled, delay=delay) as p:
        p.run_started("6.18/x86", clock, _Fraction(0.1))
        for t in range(1, 4):
            clock.now = t * 1_000_000
            time.sleep(0.15)
        p.run_done("6.18/x86", 5_000_000)
        p.run_started("3.0/x86", clock, _Fraction())
        time.sleep(0.25)
    return stream.getvalue()


def test_only_a_terminal_without_json_wants_the_bar():
    """A terminal and no --json: a bar; piped (no isatty, or isatty false) or --json: none."""
    assert progress_wanted(_Tty(), as_json=False)
    assert not progress_wanted(_Tty(), as_json=True)
    assert not progress_wanted(io.StringIO(), as_json=False)
    assert not progress_wanted(object(), as_json=False)


def test_the_bar_shows_runs_rate_and_eta_on_a_terminal():
    """Past the delay the bar is drawn: the run's label, runs done, simulated-time rate and an ETA."""
    out = _drive(_Tty(), enabled=True, delay=0.05)
    assert "6.18/x86" in out and "runs)" in out and "sim-ms/s" in out and "ETA" in out


def test_runs_going_on_at_once_are_all_named_and_counted():
    """Runs in parallel workers: the bar counts those going on, and shows the sum of the runs' fractions
    (1 for each finished run) over the number of runs."""
    stream = _Tty()
    with CompareProgress(3, stream, enabled=True, delay=0) as p:
        p.run_started("2.6.39/x86", _Clock(), _Fraction())
        p.run_started("3.0/x86", _Clock(), _Fraction())
        time.sleep(0.25)
        assert "2 runs at once (0/3 runs)" in stream.getvalue()
        p.run_done("2.6.39/x86", 10)
        p.run_started("6.18/x86", _Clock(), _Fraction(at=0.5))
        time.sleep(0.25)
        out = stream.getvalue()
    assert "2 runs at once (1/3 runs)" in out and "50%" in out     # (1 + 0 + 0.5) / 3


def test_the_bar_shows_an_eta_before_the_first_run_ends():
    """Fractions that rise give an ETA while no run has ended yet (with two runs at once, and with one)."""
    for fractions in ([_Fraction(0.02), _Fraction(0.02)], [_Fraction(0.02)]):
        stream = _Tty()
        with CompareProgress(2, stream, enabled=True, delay=0) as p:
            for k, f in enumerate(fractions):
                p.run_started(f"run{k}", _Clock(), f)
            time.sleep(0.5)
            out = stream.getvalue()
        assert re.search(r"\(0/2 runs\).*ETA\S* +\S*0:00:\d\d", out), out[-300:]


class _Sampler(EngineObserver):
    """Reads a run's fraction at every step of the engine."""

    def __init__(self) -> None:
        self.seen: list[float] = []
        self.fraction = lambda: 0.0

    def step(self, c) -> None:
        self.seen.append(self.fraction())


@pytest.mark.parametrize("workload", ["small", "wis:tlb_flush2:threads:2:1"])
def test_a_runs_fraction_rises_from_0_to_1(workload):
    """Read before the run and at every step, a run's fraction starts at 0, never falls, passes through the
    middle (it does not jump from 0 to the end) and nears 1, not reaching it, before the run ends: the
    pages of `small` unmapped, the simulated time of a will-it-scale loop of 1 ms."""
    sampler = _Sampler()
    sim = Simulation(resolve_scenario(workload), resolve_policy("6.18"), observers=[sampler])
    sampler.fraction = fraction = RunFraction(sim)
    assert fraction() == 0.0
    sim.run()
    seen = sampler.seen
    assert seen[0] < 0.05 and all(a <= b for a, b in zip(seen, seen[1:]))
    assert any(0.3 < f < 0.7 for f in seen) and 0.9 <= seen[-1] < 1 and fraction() < 1


def test_nothing_before_the_delay_or_when_disabled():
    """A compare quicker than the delay draws nothing; a disabled bar never draws."""
    assert _drive(_Tty(), enabled=True, delay=60) == ""
    assert _drive(_Tty(), enabled=False, delay=0) == ""


def test_compare_prints_no_bar_when_piped():
    """compare under the test harness (stderr is not a terminal) writes nothing to stderr."""
    code, out, err = cli_in_process(["compare", "--workload", "small", "--policies", "6.18", "--json"])
    assert code == 0 and out.startswith("{") and err == ""
