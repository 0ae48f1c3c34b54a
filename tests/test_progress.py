"""compare's progress bar (cli/progress.py): on stderr only when it is a terminal and the output is not
JSON, and only after the compare has run past its delay."""
import io
import time

from helpers import cli_in_process

from mmugather.cli.progress import CompareProgress, progress_wanted


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


class _FakeEngine:
    now = 0


class _FakeSim:
    engine = _FakeEngine()


def _drive(stream, *, enabled: bool, delay: float) -> str:
    with CompareProgress(2, stream, enabled=enabled, delay=delay) as p:
        p.run_started("6.18/x86", _FakeSim())
        for t in range(1, 4):
            _FakeSim.engine.now = t * 1_000_000
            time.sleep(0.15)
        p.run_done(5_000_000)
        p.run_started("3.0/x86", _FakeSim())
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


def test_nothing_before_the_delay_or_when_disabled():
    """A compare quicker than the delay draws nothing; a disabled bar never draws."""
    assert _drive(_Tty(), enabled=True, delay=60) == ""
    assert _drive(_Tty(), enabled=False, delay=0) == ""


def test_compare_prints_no_bar_when_piped():
    """compare under the test harness (stderr is not a terminal) writes nothing to stderr."""
    code, out, err = cli_in_process(["compare", "--workload", "small", "--policies", "6.18", "--json"])
    assert code == 0 and out.startswith("{") and err == ""
