"""Issue 18: every fault a user can cause ends in one line and a documented exit code, with nothing lost and
nothing left running (docs/reliability.md). One test (or parameter) per row of the issue's table."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import cli_here

from mmugather.pool import process_pool
from mmugather.sweep import Grid, Point, grid_points, load_results, locked, run_sweep

ROOT = Path(__file__).resolve().parent.parent
PLUGINS = Path(__file__).resolve().parent / "plugins"
ENV = dict(os.environ, PYTHONPATH=str(ROOT / "src"))


def cli(*args, cwd=ROOT):
    """The command in this interpreter (helpers.cli_here): exit code, stdout and stderr as a user sees them;
    the tests of signals and process trees below start real processes."""
    return cli_here(*args, cwd=cwd)


def one_line_error(r, *needles, code=2):
    """Exit `code`, a single stderr line holding every needle, no traceback."""
    assert r.returncode == code, (r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


# ------------------------------------------------------------------ output paths, checked before the work
@pytest.mark.parametrize("path,why", [("/proc/x", "No such file"), ("/tmp", "it is a directory"),
                                      ("/nonexistent-dir/x.html", "no such directory"),
                                      ("/dev/full", "not a regular file")])
def test_compare_output_paths_are_checked_before_the_run(path, why):
    r = cli("compare", "--workload", "small", "--html", path)
    one_line_error(r, "--html", path, why)
    assert r.stdout == ""                                  # refused up front: no run happened


def test_compare_trace_path_checked_up_front():
    one_line_error(cli("compare", "--workload", "small", "--trace", "/proc/x"), "--trace", "/proc/x")


SWEEP = """[grid]
policies = ["3.0"]
workloads = ["small"]
cpus = [4]
preempt = ["voluntary"]
fail_nowait = [0.0]
seeds = [1]
"""


def sweep_file(tmp_path, body=SWEEP, name="sweep.toml"):
    p = tmp_path / name
    p.write_text(body)
    return p


def test_sweep_out_an_existing_file_or_uncreatable(tmp_path):
    f = tmp_path / "afile"
    f.write_text("x")
    one_line_error(cli("sweep", sweep_file(tmp_path), "--out", f), "--out", "not a directory")
    one_line_error(cli("sweep", sweep_file(tmp_path), "--out", "/proc/x/y"), "--out", "cannot create")


def test_sweep_html_unwritable_is_checked_before_the_sweep(tmp_path):
    r = cli("sweep", sweep_file(tmp_path), "--out", tmp_path / "o", "--html", "/proc/x")
    one_line_error(r, "--html", "/proc/x")
    assert not (tmp_path / "o" / "results.jsonl").exists()


@pytest.mark.parametrize("row,why", [("[1, 2]", "a row must be a JSON object, got list"),
                                     ('{"x": 1}', "the row has no string 'id'")])
def test_resume_with_a_bad_row_names_file_and_line(tmp_path, row, why):
    out = tmp_path / "o"
    run_sweep(sweep_file(tmp_path), out, workers=1, progress=False)
    with open(out / "results.jsonl", "a") as f:
        f.write(row + "\n")
    one_line_error(cli("sweep", sweep_file(tmp_path), "--out", out, "--resume"), f"{out}/results.jsonl:2: {why}")


def test_a_huge_grid_is_refused_with_its_size(tmp_path):
    body = SWEEP.replace("seeds = [1]", "seeds = {from = 1, to = 100000000000}")
    one_line_error(cli("sweep", sweep_file(tmp_path, body), "--out", tmp_path / "o"), "100,000,000,000 seeds")
    body = SWEEP.replace("seeds = [1]", "seeds = {from = 1, to = 600000}").replace('["3.0"]', '["3.0", "6.18"]')
    one_line_error(cli("sweep", sweep_file(tmp_path, body), "--out", tmp_path / "o"), "the grid has 1,200,000 points")


# ------------------------------------------------------------------ memory, estimated before building
def test_a_100_tib_populated_vma_is_refused_before_building(tmp_path):
    sc = tmp_path / "big.toml"
    sc.write_text('[[process]]\nname = "p"\nvma = [{name = "a", size = "100TiB", populate = true}]\n'
                  'thread = [{cpu = 0, program = [{op = "exit"}]}]\n')
    line = one_line_error(cli("run", sc), "--max-memory", str(sc), "needs about")
    need = float(line.split("needs about ")[1].split(" GiB")[0].replace(",", ""))
    assert 20 * 100 / 4 < need < 48 * 100 / 4                  # 20..48 bytes per page of 100 TiB, in GiB
    one_line_error(cli("run", sc, "--max-memory", "lots"), "--max-memory: expected a size")


def test_a_snapshot_with_64_tib_resident_is_refused(tmp_path):
    snap = tmp_path / "snap"
    snap.mkdir()
    head = "100000000000-500000000000 rw-p 00000000 00:00 0 "
    kb = (64 << 40) >> 10
    (snap / "maps").write_text(head + "\n")
    (snap / "smaps").write_text(f"{head}\nSize: {kb} kB\nRss: {kb} kB\nAnonymous: {kb} kB\nVmFlags: rd wr\n")
    one_line_error(cli("compare", "--snapshot", snap, "--policies", "3.0"), "--max-memory", "needs about")


def test_the_estimate_tracks_what_a_run_holds():
    """The estimate grows with resident pages and with tables, and a small run passes the default limit."""
    from mmugather.workloads.scenario import estimate_memory, parse_scenario

    def sc(size, populate):
        return parse_scenario({"process": [{"name": "p", "vma": [{"name": "a", "size": size, "populate": populate}],
                                            "thread": [{"cpu": 0, "program": [{"op": "exit"}]}]}]}, "t")
    dense = estimate_memory(sc("1GiB", True))
    sparse = estimate_memory(sc("1GiB", [[k << 21, 4096] for k in range(512)]))
    assert 20 << 18 < dense < 48 << 18                         # 20..48 bytes per resident page
    assert 4000 * 512 < sparse < 8000 * 512                    # a table per page when sparse
    assert estimate_memory(sc("1GiB", False)) == 0


# ------------------------------------------------------------------ plugins
OTHER = "3.0"


@pytest.mark.parametrize("cls,needles", [
    ("RaisesMidRun", ["ValueError: my flush is broken", "misbehaving.py:37 in tlb_flush"]),
    ("YieldsStr", ["YieldsStr.tlb_flush (misbehaving.py:9)", "yielded 'ten nanoseconds' (a str)"]),
    ("YieldsNegative", ["YieldsNegative.tlb_flush (misbehaving.py:14)", "yielded -5: negative time"]),
    ("NotAGenerator", ["NotAGenerator.tlb_flush (misbehaving.py:19)", "returned int, not a generator"]),
    ("Recurses", ["Recurses.tlb_flush (misbehaving.py:25)", "unbounded recursion"]),
    ("RecursesPlainly", ["RecursionError", "misbehaving.py:31 in _tlb_remove_page (x"]),
    ("ExitsMidRun", ["SystemExit(3)", "misbehaving.py:42 in tlb_flush"]),
])
def test_a_failing_plugin_is_named_and_the_other_policies_still_reported(cls, needles):
    spec = f"{PLUGINS / 'misbehaving.py'}:{cls}"
    r = cli("compare", "--workload", "small", "--policies", f"{OTHER},{spec}", "--json")
    one_line_error(r, f"--policy {spec}", *needles)
    doc = json.loads(r.stdout)
    assert [x["policy"] for x in doc["runs"]] == [OTHER]
    assert doc["runs"][0]["metrics"]["violations"] == []


def test_a_failing_plugin_under_run_is_one_line():
    one_line_error(cli("run", "small", "--policy", f"{PLUGINS / 'misbehaving.py'}:YieldsStr"), "yielded")


def test_a_plugin_calling_sys_exit_on_import_is_a_plugin_error():
    r = cli("compare", "--workload", "small", "--policies", f"3.0,{PLUGINS / 'exits_on_import.py'}:X")
    one_line_error(r, "importing exits_on_import.py failed: SystemExit(0)")
    assert r.stdout == ""


# ------------------------------------------------------------------ sweeps: interruption, locking, identity
def _children(pid: int) -> set[int]:
    """Every live descendant of `pid` (from /proc)."""
    parent = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_bytes().rsplit(b")", 1)[1].split()
            except OSError:
                continue
            if stat[0] != b"Z":
                parent[int(d.name)] = int(stat[1])
    out, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, pp in parent.items() if pp in frontier} - out
        out |= frontier
    return out


def _alive(pids) -> set[int]:
    left = set()
    for p in pids:
        try:
            if (Path(f"/proc/{p}/stat").read_bytes().rsplit(b")", 1)[1].split()[0]) != b"Z":
                left.add(p)
        except OSError:
            pass
    return left


SLOW = SWEEP.replace("seeds = [1]", "seeds = {from = 1, to = 4000}")


def _ctrl_c_on() -> None:
    """In the child before exec: SIGINT at its default, as in a terminal. A test run started in the
    background (`cmd &` without job control) ignores SIGINT, an ignored signal stays ignored across exec, and
    Python then installs no KeyboardInterrupt handler: the Ctrl-C tests would test nothing."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start_sweep(tmp_path, out):
    proc = subprocess.Popen([sys.executable, "-m", "mmugather", "sweep", str(sweep_file(tmp_path, SLOW)), "--out",
                             str(out), "--workers", "2", "--chunk", "1"], cwd=ROOT, env=ENV, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_ctrl_c_on)
    deadline = time.monotonic() + 120
    while not ((out / "results.jsonl").exists() and (out / "results.jsonl").read_bytes().count(b"\n") >= 2):
        assert proc.poll() is None and time.monotonic() < deadline, "the sweep ended before the signal"
        time.sleep(0.05)
    return proc, _children(proc.pid)


def _wait_gone(pids, seconds=30) -> set[int]:
    deadline = time.monotonic() + seconds
    while _alive(pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    return _alive(pids)


def test_ctrl_c_on_a_sweep_stops_the_workers_and_keeps_finished_points(tmp_path):
    out = tmp_path / "o"
    proc, kids = _start_sweep(tmp_path, out)
    try:
        assert kids, "the sweep has worker processes"
        os.kill(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 130 and "Traceback" not in err
        rows = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
        assert f"{len(rows)} finished points kept" in err and 2 <= len(rows) < 4000
        assert len({r["id"] for r in rows}) == len(rows)
        assert _wait_gone(kids) == set()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def test_kill_9_of_a_sweep_takes_its_workers_with_it(tmp_path):
    out = tmp_path / "o"
    proc, kids = _start_sweep(tmp_path, out)
    try:
        assert len(kids) >= 2
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert _wait_gone(kids) == set()
    finally:
        for p in _alive(kids):
            os.kill(p, signal.SIGKILL)


def test_ctrl_c_on_a_parallel_compare_ends_it_as_one_process_does_and_leaves_no_worker():
    """Ctrl-C (SIGINT to the terminal's whole process group) while two workers run: `aborted`, exit 130,
    nothing printed (as the serial compare), and the workers gone."""
    proc = subprocess.Popen([sys.executable, "-m", "mmugather", "compare", "--jobs", "2"], cwd=ROOT, env=ENV,
                            start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_ctrl_c_on)
    try:
        deadline = time.monotonic() + 60
        while len(kids := _children(proc.pid)) < 2:
            assert proc.poll() is None and time.monotonic() < deadline, "the compare ended before the signal"
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=60)
        assert (proc.returncode, out, err.strip()) == (130, "", "mmugather: aborted")
        assert _wait_gone(kids) == set()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


# Ctrl-C to the whole process group at the moment the pool forks each worker (an at-fork hook sends it; a fork
# server's forks run no hook of this process, so "fork" only); then the workers' pids.
_CTRL_C_AT_FORK = """
import os, signal, sys
from mmugather.pool import process_pool
os.register_at_fork(before=lambda: os.killpg(0, signal.SIGINT))
pids = []
try:
    with process_pool(2, method=sys.argv[1]) as pool:
        pids = list(pool._processes)
        print("ran", pool.submit(pow, 2, 5).result(), flush=True)
except KeyboardInterrupt:
    print("interrupted", flush=True)
print(*pids, flush=True)
"""


def test_a_ctrl_c_while_the_pool_forks_its_workers_interrupts_the_main_process_only():
    """The signal is held back while submit() starts workers: the main process takes it as submit()
    returns (KeyboardInterrupt, the pool killed), no worker dies of it (no traceback), none is left."""
    proc = subprocess.run([sys.executable, "-c", _CTRL_C_AT_FORK, "fork"], env=ENV, capture_output=True,
                          text=True, timeout=60, start_new_session=True, preexec_fn=_ctrl_c_on)
    lines = proc.stdout.splitlines()
    assert (proc.returncode, lines[:1], proc.stderr) == (0, ["interrupted"], "")
    assert _wait_gone({int(p) for p in lines[1].split()}) == set()


def test_a_killed_pool_leaves_no_worker_and_no_manager_thread_behind():
    """pool.kill() returns with the workers reaped and the pool's manager thread ended, its wake-up pipe
    closed: CPython 3.11's exit hook writes to that pipe unlocked, and a close racing it printed "OSError:
    Bad file descriptor" after a Ctrl-C on a sweep."""
    with pytest.raises(KeyboardInterrupt), process_pool(2, method="fork") as pool:
        pool.submit(time.sleep, 30)
        procs, manager = list(pool._processes.values()), pool._executor_manager_thread
        wakeup = pool._executor_manager_thread_wakeup
        raise KeyboardInterrupt
    assert not any(p.is_alive() for p in procs)
    assert not manager.is_alive() and wakeup._closed


def test_a_second_sweep_into_a_locked_directory_gets_exit_2(tmp_path):
    out = tmp_path / "o"
    with locked(out):                                   # as a running sweep holds it
        one_line_error(cli("sweep", sweep_file(tmp_path), "--out", out), "another sweep is writing to")
    assert not (out / "results.jsonl").exists()
    assert cli("sweep", sweep_file(tmp_path), "--out", out).returncode == 0     # released: it runs


def test_resume_reruns_the_points_whose_scenario_file_changed(tmp_path):
    race = tmp_path / "race.toml"
    body = ('[machine]\ncpus = 2\nlatency_task = false\n[[process]]\nname = "p"\n'
            'vma = [{name = "a", size = "SIZE", populate = true}]\n'
            'thread = [{cpu = 0, program = [{op = "munmap", vma = "a"}, {op = "exit"}]}]\n')
    race.write_text(body.replace("SIZE", "64KiB"))
    path = sweep_file(tmp_path, SWEEP.replace('["small"]', '["race.toml"]').replace("[4]", "[2]")
                      .replace("seeds = [1]", "seeds = [1, 2]"))
    out = tmp_path / "o"
    assert run_sweep(path, out, workers=1, progress=False)["ran"] == 2
    assert run_sweep(path, out, workers=1, resume=True, progress=False)["ran"] == 0
    before = load_results(out)
    race.write_text(body.replace("SIZE", "128KiB"))
    assert run_sweep(path, out, workers=1, resume=True, progress=False) == {"points": 2, "skipped": 0, "ran": 2}
    after = load_results(out)                           # the rows of the changed file, not the stale ones
    assert len(after) == 2 and {r["id"] for r in after}.isdisjoint(r["id"] for r in before)
    assert [r["metrics"] for r in after] != [r["metrics"] for r in before]


def test_a_file_workload_named_two_ways_is_one_workload(tmp_path):
    (tmp_path / "race.toml").write_text((ROOT / "examples" / "munmap-race.toml").read_text())
    body = SWEEP.replace('["small"]', '["race.toml", "./race.toml"]')
    one_line_error(cli("sweep", sweep_file(tmp_path, body), "--out", tmp_path / "o"),
                   "grid.workloads: repeated value(s): race.toml")


def test_builtin_point_ids_are_unchanged_and_file_ids_hash_contents():
    grid = Grid(policies=["3.0"], workloads=["small", "x.toml"], cpus=[4], preempt=["full"], fail_nowait=[0.0],
                seeds=[1])
    a, b = grid_points(grid, {"x.toml": "aaaa"}), grid_points(grid, {"x.toml": "bbbb"})
    assert a[0].id == b[0].id == Point(0, "x86", "small", "3.0", "full", 4, 0.0, 1).id
    assert a[1].id != b[1].id


# ------------------------------------------------------------------ the other commands
def test_snapshot_into_a_non_empty_directory_needs_force(tmp_path):
    d = tmp_path / "snap"
    d.mkdir()
    (d / "old").write_text("x")
    one_line_error(cli("snapshot", "--pid", os.getpid(), "-o", d), "-o", "is not empty", "--force")
    assert sorted(p.name for p in d.iterdir()) == ["old"]
    r = cli("snapshot", "--pid", os.getpid(), "-o", d, "--force")
    assert r.returncode == 0, r.stderr
    assert (d / "maps").exists()


def test_explore_out_unwritable_is_checked_before_the_search():
    r = cli("explore", "small", "--out", "/proc/x")
    one_line_error(r, "--out", "/proc/x")
    assert r.stdout == ""


def test_replay_of_a_schedule_naming_a_missing_actor(tmp_path):
    from helpers import munmap_while_others_run
    sc = munmap_while_others_run(size="64KiB", cpus=2)
    doc = {"format": "mmugather-replay/1", "scenario": sc.model_dump(mode="json"), "policy": "3.0",
           "without_fixes": [], "seed": None, "arch": None, "schedule": [[3, 1], [5, 77]], "story": []}
    f = tmp_path / "r.json"
    f.write_text(json.dumps(doc))
    one_line_error(cli("replay", f), f"{f}: schedule[1]: [5, 77]: no actor 77")
    doc["schedule"] = [[5, -9]]
    f.write_text(json.dumps(doc))
    one_line_error(cli("replay", f), "schedule[0]: [5, -9]: no actor -9")


@pytest.mark.parametrize("args", [["compare", "--workload", "small", "--seed", "-1"],
                                  ["run", "small", "--seed", "-1"], ["explore", "small", "--seed", "-1"]])
def test_negative_seeds_are_refused(args):
    one_line_error(cli(*args), "--seed", "-1")


def test_negative_seeds_in_files_are_refused(tmp_path):
    sc = tmp_path / "s.toml"
    sc.write_text('seed = -1\n[[process]]\nname = "p"\nthread = [{cpu = 0}]\n')
    one_line_error(cli("run", sc), f"{sc}: seed")
    one_line_error(cli("sweep", sweep_file(tmp_path, SWEEP.replace("[1]", "[-1]")), "--out", tmp_path / "o"),
                   "grid.seeds: expected seeds >= 0, got -1")


@pytest.mark.parametrize("args,needle", [
    (["compare", "--workload", "small", "--arch", "x86,bogus"], "--arch: unknown arch 'bogus'"),
    (["run", "small", "--arch", "bogus"], "--arch: unknown arch 'bogus'"),
    (["compare", "--workload", "small", "--policies", "3.0,bogus"], "bogus"),
])
def test_every_list_entry_is_checked(args, needle):
    one_line_error(cli(*args), needle)


def test_messages_name_the_option_file_and_line_at_fault(tmp_path):
    one_line_error(cli("run", "small", "--snapshot", "python"), "SCENARIO_FILE and --snapshot")
    one_line_error(cli("explore", "small", "--max-steps", "0"), "--max-steps: expected a number >= 1, got 0")
    one_line_error(cli("bugs", "run", "x", "--budget", "0"))
    sc = tmp_path / "overlap.toml"
    sc.write_text('[[process]]\nname = "p"\nvma = [{name = "a", size = "8KiB", start = 0x10000},\n'
                  '       {name = "b", size = "8KiB", start = 0x11000}]\nthread = [{cpu = 0}]\n')
    one_line_error(cli("run", sc), str(sc), "VMA 'b' at 0x11000 overlaps VMA 'a'")
    helptext = cli("run", "--help").stdout
    assert "ppc64" in helptext and "x86-kvm" in helptext
    r = cli("calibrate", "-o", "/proc/x")
    one_line_error(r, "-o: cannot write /proc/x")


@pytest.mark.parametrize("args", [["run", "/dev/zero"], ["replay", "/dev/zero"], ["sweep", "/dev/zero", "--out", "o"],
                                  ["compare", "--workload", "small", "--costs", "/dev/zero"],
                                  ["compare", "--snapshot", "/dev"]])
def test_a_device_as_an_input_file_is_refused_not_read_forever(args, tmp_path):
    one_line_error(cli(*args, cwd=tmp_path))


# ------------------------------------------------------------------ runs that never end: bounded, named
NEVER_ENDS = """name = "never-ends"
[machine]
cpus = 2
[[process]]
name = "app"
  [[process.vma]]
  name = "w"
  size = "64KiB"
  populate = true
  [[process.thread]]
  cpu = 0
  program = [ { op = "sleep", ns = 9000000000000000000 } ]
  [[process.thread]]
  cpu = 1
  program = [ { op = "churn", vma = "w", gap_ns = 1000 } ]
"""


@pytest.mark.parametrize("command", ["run", "compare"])
def test_a_scenario_that_never_ends_stops_at_the_simulated_time_bound(tmp_path, command):
    """A sleep of 9e18 ns beside a churn never ends in simulated time: the run stops at --max-sim-ns with
    exit 2 and a message naming the bound and the option that raises it."""
    f = tmp_path / "never.toml"
    f.write_text(NEVER_ENDS)
    args = [command, f] if command == "run" else [command, "--workload", f]
    r = cli(*args, "--policy" if command == "run" else "--policies", "6.18", "--max-sim-ns", "20000000")
    one_line_error(r, "never-ends under 6.18 stopped", "max_sim_ns=20000000 exceeded", "--max-sim-ns")


def test_the_simulated_time_bound_has_a_default():
    """Without the option the bound is still there (10 s of simulated time, named in --help)."""
    r = cli("run", "--help")
    assert "--max-sim-ns" in r.stdout and "10000000000" in r.stdout and "--max-steps" in r.stdout


def test_a_plugin_breaking_the_contract_under_explore_is_bad_input_not_a_finding():
    """explore: a plugin yielding a str is exit 2 naming the plugin, not a violation found (exit 1)."""
    r = cli("explore", "examples/munmap-race.toml", "--budget", "5", "--policy",
            f"{PLUGINS / 'misbehaving.py'}:YieldsStr")
    one_line_error(r, "YieldsStr.tlb_flush", "yielded")
