"""compare's runs in parallel worker processes (parallel.py, pool.py): the same comparison, byte for byte,
whatever --jobs, including plugins, traces, HTML reports, failing plugins and runs that pass their bound."""
import json
import os
import subprocess
import sys

import pytest
from helpers import ROOT, cli_here

from mmugather import api
from mmugather.errors import InputError
from mmugather.policies import Linux30
from mmugather.report.trace import validate_trace

# test plugins by absolute path, as test_hardening.py and test_plugins.py name them: a plugin without its
# own `name` is named after the spec it was first loaded by in this process
MISBEHAVING = ROOT / "tests" / "plugins" / "misbehaving.py"
PLUGINS = ["3.0", "examples/plugins/latr.py:Latr", "6.18", f"{ROOT}/tests/plugins/gathers.py:FreeBeforeFlush"]


class ShortBatch(Linux30):
    """A policy class made in this process (as in a notebook): no file or module a worker could load."""
    name = "3.0-short-batch"


@pytest.fixture(autouse=True)
def _from_root(monkeypatch):
    monkeypatch.chdir(ROOT)


def _both(*args: str) -> tuple:
    """`compare ARGS` with --jobs 1 and --jobs 3: (exit code, stdout, stderr) of each."""
    one = cli_here("compare", *args, "--jobs", "1")
    three = cli_here("compare", *args, "--jobs", "3")
    return (one.returncode, one.stdout, one.stderr), (three.returncode, three.stdout, three.stderr)


def test_parallel_json_equals_serial_json_over_policies_arches_and_plugin_files():
    """Built-ins, plugin files (one with its own arch class) and a class made here, on two arches, seed and
    preemption overridden: the JSON of 3 workers is the JSON of one process, runs in the order asked."""
    kw = {"arch": "x86,arm64", "seed": 3, "preempt": "full"}
    serial = api.compare("small", [*PLUGINS, ShortBatch], jobs=1, **kw).to_dict()
    parallel = api.compare("small", [*PLUGINS, ShortBatch], jobs=3, **kw).to_dict()
    assert json.dumps(parallel) == json.dumps(serial)
    labels = [(r["policy"], r["arch"]) for r in parallel["runs"]]
    assert labels == [("3.0", "x86"), ("6.18+latr", "x86"), ("6.18", "x86"), ("6.18", "arm64"),
                      (f"{ROOT}/tests/plugins/gathers.py:FreeBeforeFlush", "x86"), ("3.0-short-batch", "x86")]
    assert len({json.dumps(r["metrics"]) for r in parallel["runs"]}) > 1, "the runs differ from each other"


@pytest.mark.parametrize("args", [
    ["--workload", "small", "--costs", "COSTS"],
    ["--snapshot", "python", "--variant", "munmap-largest", "--cpus", "2", "--arch", "x86,arm64"],
    ["--workload", "small", "--fail-nowait", "0.3", "--seed", "5", "--max-steps", "100000000"],
])
def test_the_cli_options_give_the_same_json_whatever_jobs(args, tmp_path):
    costs = tmp_path / "costs.toml"
    costs.write_text("ipi_send = 5000\npte_zap = 300\n")
    serial, parallel = _both(*[str(costs) if a == "COSTS" else a for a in args], "--json")
    assert serial[0] == 0 and parallel == serial and parallel[2] == ""      # nothing on stderr when piped


def test_table_html_and_trace_are_the_same_bytes(tmp_path):
    """The table, the HTML report and the Perfetto file (one process per run, flow ids unique across the
    file) do not depend on --jobs."""
    files = {}
    for jobs in ("1", "3"):
        html, trace = tmp_path / f"r{jobs}.html", tmp_path / f"t{jobs}.json"
        r = cli_here("compare", "--workload", "small", "--policies", "2.6.39,3.0,6.18", "--html", html,
                     "--trace", trace, "--jobs", jobs)
        assert r.returncode == 0, r.stderr
        files[jobs] = (r.stdout, html.read_bytes(), trace.read_bytes())
    assert files["1"] == files["3"]
    doc = json.loads(files["3"][2])
    assert validate_trace(doc) == []
    assert sorted({e["pid"] for e in doc["traceEvents"]}) == [1, 2, 3]
    flows = [e["id"] for e in doc["traceEvents"] if e["ph"] == "s"]
    assert len(flows) == len(set(flows)) > 0


def test_a_plugin_that_fails_mid_run_is_reported_after_the_others():
    """The other policies are printed, then the plugin's one line, exit 2, as in one process."""
    serial, parallel = _both("--workload", "small", "--policies",
                             f"3.0,{MISBEHAVING}:RaisesMidRun,6.18", "--json")
    assert parallel == serial
    code, out, err = parallel
    assert code == 2 and [r["policy"] for r in json.loads(out)["runs"]] == ["3.0", "6.18"]
    assert err.count("\n") == 1 and "RaisesMidRun: ValueError: my flush is broken at misbehaving.py" in err


@pytest.fixture
def tracebacks_pickled():
    """Exceptions pickle their causes and tracebacks (tblib's pickling support, which importing
    distributed installs for the whole process); undone after the test."""
    import copyreg
    support = pytest.importorskip("tblib.pickling_support")
    saved = dict(copyreg.dispatch_table)
    support.install()
    yield
    copyreg.dispatch_table.clear()
    copyreg.dispatch_table.update(saved)


def test_a_plugin_that_recurses_is_reported_where_tracebacks_pickle(tracebacks_pickled):
    """A plugin's RecursionError (a traceback 1000 frames deep) comes back from its worker as its one line."""
    c = api.compare("small", ["3.0", f"{MISBEHAVING}:RecursesPlainly"], jobs=2)
    assert [r.policy for r in c.runs] == ["3.0"] and "RecursionError" in str(c.failures[0])


def test_a_worker_that_dies_is_one_line_and_exit_2(tmp_path):
    """A run whose process dies (here a plugin calls os._exit, as the OOM killer would end it) ends the
    compare with one line saying so, not a traceback."""
    plugin = tmp_path / "dies.py"
    plugin.write_text("import os\nfrom mmugather.policies import Linux30\n\n\nclass Dies(Linux30):\n"
                      "    def tlb_flush(self, c, tlb):\n        os._exit(9)\n        yield\n")
    r = cli_here("compare", "--workload", "small", "--policies", f"3.0,{plugin}:Dies", "--jobs", "2")
    assert r.returncode == 2 and r.stdout == "" and r.stderr.count("\n") == 1
    assert "a worker process died while it ran" in r.stderr


def test_runs_past_their_bound_name_the_first_run_as_one_process_does():
    """Every run passes --max-sim-ns: the error names the first run (2.6.39), not whichever worker ended
    first; --max-steps and --costs errors alike."""
    for args in (["--max-sim-ns", "1000"], ["--max-steps", "10"]):
        serial, parallel = _both("--workload", "small", *args)
        assert parallel == serial and serial[0] == 2 and "small under 2.6.39 stopped" in serial[2]


def test_the_progress_hears_of_every_run_from_the_workers():
    """Each run is told as started before it is told done, with the simulated time it took."""
    events = []

    class Recorder:
        def run_started(self, label, clock, fraction):
            events.append(("start", label, clock()))

        def run_done(self, label, sim_ns):
            events.append(("done", label, sim_ns))

    c = api.compare("small", ["2.6.39", "3.0", "6.18"], jobs=2, progress=Recorder())
    for run in c.runs:
        label = f"{run.policy}/{run.arch}"
        mine = [e for e in events if e[1] == label]
        assert [e[0] for e in mine] == ["start", "done"]
        assert mine[1][2] == run.metrics["sim_time_ns"] > 0


@pytest.mark.parametrize("jobs", ["0", "-2", "two", "1.5"])
def test_bad_jobs_is_one_line_and_exit_2(jobs):
    r = cli_here("compare", "--workload", "small", "--jobs", jobs)
    assert r.returncode == 2 and r.stdout == "" and r.stderr.count("\n") == 1 and "--jobs" in r.stderr


@pytest.mark.parametrize("jobs", [0, -1, 1.5, True])
def test_the_api_refuses_jobs_that_are_not_a_positive_integer(jobs):
    with pytest.raises(InputError, match="--jobs: expected an integer >= 1"):
        api.compare("small", ["3.0", "6.18"], jobs=jobs)


def test_default_jobs_is_every_run_up_to_two_per_usable_core(monkeypatch):
    """3 runs on 2 cores run at once (the host shares the cores: about sum / 2, not two rounds); past two
    runs per core, two per core; --jobs caps it, never above the runs."""
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1})
    assert api.compare_jobs(None, 3) == 3 and api.compare_jobs(None, 9) == 4 and api.compare_jobs(2, 9) == 2
    assert api.compare_jobs(8, 3) == 3 and api.compare_jobs(None, 1) == 1


def test_the_default_jobs_fit_in_max_memory():
    """A --max-memory that holds two runs of the workload at once: two at a time (the result unchanged)."""
    from mmugather.cli.limits import runs_in_memory
    from mmugather.workloads.scenario import estimate_memory
    need = estimate_memory(api.resolve_scenario("small"))
    assert runs_in_memory(api.resolve_scenario("small"), str(2 * need + need // 2)) == 2
    assert runs_in_memory(api.resolve_scenario("small"), str(need)) == 1


def test_the_command_line_imports_neither_rich_nor_the_explorer_and_a_run_imports_nothing():
    """compare's startup before its workers fork: the command line (with api) loads no Rich and no explorer
    module; and a run, as a forked worker makes it (told of its progress), imports no module of its own."""
    code = ("import sys\n"
            "from mmugather.cli import main\n"
            "from mmugather import api\n"
            "before = set(sys.modules)\n"
            "class Told:\n"
            "    def run_started(self, label, clock, fraction): fraction()\n"
            "    def run_done(self, label, sim_ns): pass\n"
            "api.compare_run(api.resolve_scenario('small'), api.resolve_policy('6.18'), False, Told())\n"
            "print(sorted(m for m in before if m.split('.')[0] == 'rich' or m.startswith('mmugather.explore.')))\n"
            "print(sorted(set(sys.modules) - before))\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["[]", "[]"]
