"""compare's progress bar (cli/progress.py): on stderr only when it is a terminal and the output is not
JSON, and only after the compare has run past its delay."""
import io
import time

from helpers import cli_in_process

from mmugather.cli.progress import CompareProgress, progress_wanted


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


class _Clock:
    now = 0

    def __call__(self) -> int:
        return self.now


def _drive(stream, *, enabled: bool, delay: float) -> str:
    clock = _Clock()
    with CompareProgress(2, stream, enabled=enabled, delay=delay) as p:
        p.run_started("6.18/x86", clock)
        for t in range(1, 4):
            clock.now = t * 1_000_000
            time.sleep(0.15)
        p.run_done("6.18/x86", 5_000_000)
        p.run_started("3.0/x86", clock)
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
    """Runs in parallel workers: the bar counts those going on, and moves with all their clocks against
    the first finished run's simulated time."""
    a, b = _Clock(), _Clock()
    stream = _Tty()
    with CompareProgress(3, stream, enabled=True, delay=0) as p:
        p.run_started("2.6.39/x86", a)
        p.run_started("3.0/x86", b)
        time.sleep(0.25)
        assert "2 runs at once (0/3 runs)" in stream.getvalue()
        a.now = 10
        p.run_done("2.6.39/x86", 10)
        b.now = 5
        p.run_started("6.18/x86", _Clock())
        time.sleep(0.25)
        out = stream.getvalue()
    assert "2 runs at once (1/3 runs)" in out and "50%" in out     # 1 done + 5/10 of the next


def test_nothing_before_the_delay_or_when_disabled():
    """A compare quicker than the delay draws nothing; a disabled bar never draws."""
    assert _drive(_Tty(), enabled=True, delay=60) == ""
    assert _drive(_Tty(), enabled=False, delay=0) == ""


def test_compare_prints_no_bar_when_piped():
    """compare under the test harness (stderr is not a terminal) writes nothing to stderr."""
    code, out, err = cli_in_process(["compare", "--workload", "small", "--policies", "6.18", "--json"])
    assert code == 0 and out.startswith("{") and err == ""
