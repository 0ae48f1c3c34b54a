"""Sweeps: the grid's points and ids, the same rows from every executor, resume after SIGKILL, one-line errors."""
import importlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from mmugather.errors import InputError
from mmugather.policies import POLICIES
from mmugather.sweep import Grid, Point, grid_points, load_results, run_point, run_sweep

sweep = importlib.import_module("mmugather.sweep")   # the module: `mmugather.sweep` is the API function


def sweep_file(tmp_path, body: str, name="sweep.toml"):
    path = tmp_path / name
    path.write_text("[grid]\n" + body)
    return path


SMALL = """policies = ["2.6.39", "3.0"]
workloads = ["small"]
cpus = [4, 5]
preempt = ["voluntary"]
fail_nowait = [0.0, 0.5]
seeds = [1, 2]
"""


def test_points_are_the_product_in_a_fixed_order_with_stable_ids():
    grid = Grid(policies=["2.6.39", "3.0"], workloads=["small"], cpus=[4], preempt=["full"], fail_nowait=[0.0],
                seeds={"from": 3, "to": 5})
    points = grid_points(grid)
    assert [(p.policy, p.seed) for p in points] == [("2.6.39", 3), ("2.6.39", 4), ("2.6.39", 5),
                                                   ("3.0", 3), ("3.0", 4), ("3.0", 5)]
    assert [p.index for p in points] == list(range(6))
    assert points[0].id == Point(99, "x86", "small", "2.6.39", "full", 4, 0.0, 3).id      # the index is no parameter
    assert points[0].id == "755d2402e43793b0"          # a changed hash would make resume rerun every point
    assert len({p.id for p in points}) == 6


def test_local_and_dask_executors_give_identical_rows(tmp_path):
    path = sweep_file(tmp_path, SMALL)
    assert run_sweep(path, tmp_path / "local", workers=2, progress=False)["ran"] == 16
    assert run_sweep(path, tmp_path / "dask", executor="dask", progress=False)["ran"] == 16
    local, dask = load_results(tmp_path / "local"), load_results(tmp_path / "dask")
    assert local == dask
    assert [r["id"] for r in local] == [p.id for p in grid_points(sweep.load_sweep(path)[0])]
    row = local[0]
    assert {"pte_lock_hold_ns.max", "pte_lock_hold_ns.p99", "ipis_sent", "violations"} <= set(row["metrics"])
    assert "ipis_by_cpu" not in row["metrics"] and row["metrics"]["violations"] == 0
    assert {r["metrics"]["ipis_sent"] for r in local} != {local[0]["metrics"]["ipis_sent"]}


def rows_in_file(out):
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("seeds", [5, pytest.param(40, marks=pytest.mark.slow)])
def test_a_sigkilled_sweep_resumes_losing_and_repeating_nothing(tmp_path, seeds):
    """Killed after its 8th row (of 8 points per seed), a resumed sweep runs exactly the points missing."""
    points = 8 * seeds
    path = sweep_file(tmp_path, SMALL.replace("seeds = [1, 2]", f"seeds = {{from = 1, to = {seeds}}}"))
    out = tmp_path / "out"
    code = f"from mmugather.sweep import run_sweep; run_sweep({str(path)!r}, {str(out)!r}, workers=1, chunk=4)"
    proc = subprocess.Popen([sys.executable, "-c", code], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not ((out / "results.jsonl").exists() and (out / "results.jsonl").read_bytes().count(b"\n") >= 8):
            assert proc.poll() is None and time.monotonic() < deadline, "the sweep ended before it was killed"
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        os.killpg(proc.pid, signal.SIGKILL)          # its orphaned worker processes
    data = (out / "results.jsonl").read_bytes()
    before = [json.loads(line) for line in data[:data.rfind(b"\n") + 1].splitlines()]
    assert 8 <= len(before) < points

    summary = run_sweep(path, out, workers=2, resume=True, progress=False)
    assert summary == {"points": points, "skipped": len(before), "ran": points - len(before)}
    after = rows_in_file(out)
    ids = [r["id"] for r in after]
    assert len(ids) == len(set(ids)) == points
    assert after[:len(before)] == before
    assert [r["id"] for r in load_results(out)] == [p.id for p in grid_points(sweep.load_sweep(path)[0])]


def test_resume_cuts_a_truncated_last_line_and_reruns_only_its_point(tmp_path):
    path = sweep_file(tmp_path, SMALL)
    out = tmp_path / "out"
    run_sweep(path, out, workers=1, progress=False)
    full = rows_in_file(out)
    text = (out / "results.jsonl").read_text()
    (out / "results.jsonl").write_text(text[:len(text) - 40])        # killed while writing the last row
    assert run_sweep(path, out, workers=1, resume=True, progress=False) == {"points": 16, "skipped": 15, "ran": 1}
    assert rows_in_file(out) == full
    with pytest.raises(InputError, match="exists: pass --resume to continue it"):
        run_sweep(path, out, progress=False)


BAD = [
    (SMALL + "threads = [2]\n", "grid.threads: unknown key"),
    ("", "grid.policies: required key is missing"),
    (SMALL.replace('["2.6.39", "3.0"]', "[]"), "grid.policies: expected at least one value"),
    (SMALL.replace('"3.0"', '"4.2"'), f"grid.policies: unknown policy '4.2' (expected one of: {', '.join(POLICIES)})"),
    (SMALL.replace('["small"]', '["small", "huge"]'), "grid.workloads: 'huge' is neither a built-in workload"),
    (SMALL.replace("[1, 2]", "{from = 5, to = 1}"), "grid.seeds: 'to' (1) is below 'from' (5)"),
    (SMALL.replace("[1, 2]", "[1, 2, 1]"), "grid.seeds: repeated value(s): 1"),
    (SMALL.replace("[0.0, 0.5]", "[1.5]"), "grid.fail_nowait: expected probabilities in [0, 1], got 1.5"),
    (SMALL + 'arch = ["arm64"]\n', "grid: no policy of the grid runs on arm64 (see `mmugather policies`)"),
]


@pytest.mark.parametrize("body,message", BAD, ids=[m.split(":")[0] + str(k) for k, (_, m) in enumerate(BAD)])
def test_bad_sweep_files_are_one_line_errors(tmp_path, body, message):
    path = sweep_file(tmp_path, body)
    with pytest.raises(InputError) as e:
        run_sweep(path, tmp_path / "out", progress=False)
    assert str(e.value).startswith(f"{path}: {message}")
    assert "\n" not in str(e.value)
    assert not (tmp_path / "out").exists()


def test_an_unreachable_dask_scheduler_or_unknown_executor_is_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setattr(sweep, "DASK_CONNECT_TIMEOUT", "1s")
    path = sweep_file(tmp_path, SMALL)
    with pytest.raises(InputError, match=r"^--executor dask=tcp://127.0.0.1:1: cannot reach the Dask scheduler"):
        run_sweep(path, tmp_path / "out", executor="dask=tcp://127.0.0.1:1", progress=False)
    with pytest.raises(InputError, match="^--executor: expected local, dask or dask=ADDRESS, got 'ray'$"):
        run_sweep(path, tmp_path / "out", executor="ray", progress=False)
    assert not (tmp_path / "out").exists()


def test_a_cpu_count_below_a_workloads_folds_its_threads():
    """cpus = [2] on 'small' (threads on CPUs 0..3): thread c runs on CPU c mod 2, time-shared."""
    grid = Grid(policies=["2.6.39"], workloads=["small"], cpus=[2], preempt=["voluntary"], fail_nowait=[0.0],
                seeds=[1])
    row = run_point(grid_points(grid)[0])
    assert row["cpus"] == 2 and row["metrics"]["pages_unmapped"] > 0 and row["metrics"]["violations"] == 0
