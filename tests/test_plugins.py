"""Policy plugins: loaded by MODULE:CLASS or FILE.py:CLASS for compare, run and explore; loading problems
are one line with exit code 2; deliberately broken plugins are caught by the explorer."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import munmap_while_others_run, scenario

from mmugather.errors import InputError
from mmugather.explore.session import run_search
from mmugather.explore.target import KernelTarget
from mmugather.policies import Linux30, get_policy

ROOT = Path(__file__).resolve().parent.parent
PLUGINS = Path(__file__).resolve().parent / "plugins"
EXAMPLE = ROOT / "examples" / "plugins" / "batch_limit.py"


def cli(*args):
    return subprocess.run([sys.executable, "-m", "mmugather", *args], capture_output=True, text=True, cwd=ROOT)


def munmap_while_another_cpu_reads():
    """CPU 0 munmaps what CPU 1 has read (so CPU 1's TLB maps it) while CPU 1 goes on with other memory."""
    return scenario([{"name": "a", "size": "8KiB", "populate": True}, {"name": "w", "size": "8KiB", "populate": True}],
                    [{"cpu": 0, "program": [{"op": "touch", "vma": "a", "write": False}, {"op": "munmap", "vma": "a"},
                                            {"op": "exit"}]},
                     {"cpu": 1, "program": [{"op": "touch", "vma": "a", "write": False},
                                            {"op": "touch", "vma": "w", "write": False}]}],
                    cpus=2, latency=False)


def test_both_spec_forms_load_the_same_class():
    by_module = get_policy("plugins.gathers:FreeBeforeFlush")
    by_file = get_policy(f"{PLUGINS / 'gathers.py'}:FreeBeforeFlush")
    assert issubclass(by_module, Linux30) and issubclass(by_file, Linux30)
    assert by_module.__name__ == by_file.__name__ == "FreeBeforeFlush"
    assert by_file.name == f"{PLUGINS / 'gathers.py'}:FreeBeforeFlush"     # named by the spec it came from


@pytest.mark.parametrize("spec,message", [
    ("plugins/nope.py:X", "no such file"),
    ("plugins.gathers:NotAKernel", "NotAKernel is not a subclass of mmugather.policies.base.Kernel"),
    ("plugins.gathers:Missing", "has no attribute 'Missing'"),
    ("plugins.raises_on_import:X", "importing plugins.raises_on_import failed: RuntimeError: this plugin "
                                   "cannot be imported second line of the message"),
    ("no_such_module_anywhere:X", "no module named 'no_such_module_anywhere'"),
    ("mmugather.policies.base:Kernel", "names no arch"),
    (":X", "expected MODULE:CLASS or FILE.py:CLASS"),
])
def test_loading_problems_are_input_errors(spec, message):
    with pytest.raises(InputError) as e:
        get_policy(spec)
    assert message in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("plugin", ["FreeBeforeFlush", "LocalFlushOnly"])
def test_the_explorer_catches_broken_plugins_and_passes_the_policy_they_broke(plugin):
    sc = munmap_while_another_cpu_reads()
    broken = run_search(KernelTarget(sc, get_policy(f"plugins.gathers:{plugin}")), max_preemptions=1)
    assert broken["violation"]["kind"] in ("stale-tlb-use-after-free", "page-table-use-after-free")
    assert "CPU 1's TLB still maps" in "\n".join(broken["story"])
    clean = run_search(KernelTarget(sc, Linux30), max_preemptions=1)
    assert clean["violation"] is None and clean["covered"]


def test_plugins_on_the_command_line():
    """run and compare take a FILE.py:CLASS plugin; explore exits 1 on a broken one; loading errors exit 2."""
    spec = f"{EXAMPLE}:Linux30BatchLimit"
    r = cli("run", "small", "--policy", spec, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["policy"] == "3.0+batch-limit"
    r = cli("compare", "--workload", "small", "--policies", f"3.0,{spec}", "--json")
    assert r.returncode == 0, r.stderr
    assert [x["policy"] for x in json.loads(r.stdout)["runs"]] == ["3.0", "3.0+batch-limit"]
    r = cli("explore", "examples/munmap-race.toml", "--policy", f"{PLUGINS / 'gathers.py'}:LocalFlushOnly",
            "--max-preemptions", "0", "--budget", "50")
    assert r.returncode == 1, r.stderr
    for args in (["run", "small", "--policy", "tests/plugins/nope.py:X"],
                 ["compare", "--workload", "small", "--policies", "3.0,tests/plugins/gathers.py:NotAKernel"],
                 ["explore", "small", "--policy", "tests/plugins/raises_on_import.py:X"]):
        r = cli(*args)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, (args, r.stderr)
        assert r.stderr.startswith("mmugather: error: --policy")


def test_the_worked_example_limits_batching_as_v3_8_did():
    """The example plugin caps the chain of batch pages at MAX_GATHER_BATCH_COUNT: it flushes more often
    than 3.0 and holds less gather memory, and stays correct."""
    from mmugather.sim.simulation import Simulation
    sc = munmap_while_others_run(size="64MiB", cpus=2)           # 16384 pages: more than 19 batches hold
    plain = Simulation(sc, Linux30).run()
    limited = Simulation(sc, get_policy(f"{EXAMPLE}:Linux30BatchLimit")).run()
    assert limited["violations"] == [] and plain["violations"] == []
    assert limited["tlb_flushes"] > plain["tlb_flushes"]
    assert limited["gather_memory_bytes"] < plain["gather_memory_bytes"]


def test_a_plugin_raising_at_a_step_is_a_finding_not_a_crash():
    report = run_search(KernelTarget(munmap_while_another_cpu_reads(), get_policy("plugins.gathers:RaisesInFlush")),
                        max_preemptions=0)
    assert report["violation"]["kind"] == "exception"
    assert report["violation"]["detail"] == "KeyError: 'batch'" and report["violation"]["cpu"] == 0
