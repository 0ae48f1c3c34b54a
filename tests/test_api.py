"""The Python API: the shapes it returns, strings and objects accepted alike, the CLI's JSON as to_dict()."""
import json
import sys

import pytest
from click.testing import CliRunner

import mmugather
from mmugather.cli import main
from mmugather.errors import InputError
from mmugather.policies import Linux30
from mmugather.sweep import flatten_metrics
from mmugather.workloads.builtin import resolve_workload


@pytest.fixture(scope="module")
def small():
    return mmugather.compare("small", ["3.0", "6.18"])


def test_a_comparison_dataframe_has_a_row_per_run_and_a_column_per_metric(small):
    df = small.to_dataframe()
    assert list(df["policy"]) == ["3.0", "6.18"] and len(df) == 2
    for run, (_, row) in zip(small.runs, df.iterrows()):
        for key, value in flatten_metrics(run.metrics).items():
            assert row[key] == value


def test_to_dict_is_what_compare_json_prints(small):
    out = CliRunner().invoke(main, ["compare", "--workload", "small", "--policies", "3.0,6.18", "--json"])
    assert out.exit_code == 0 and json.loads(out.output) == small.to_dict()


def test_objects_and_strings_give_the_same_runs(small):
    class Mine(Linux30):
        """A plugin written in a notebook: same kernel, its own name."""
    same = mmugather.compare(resolve_workload("small"), [Linux30, Mine])
    assert [r.policy for r in same.runs] == ["3.0", "Mine"]
    assert same.runs[0].metrics == same.runs[1].metrics == small.runs[0].metrics


def test_each_policy_runs_on_each_arch_it_supports():
    c = mmugather.compare("small", "3.0,6.18", arch=["x86", "arm64"])
    assert [(r.policy, r.arch) for r in c.runs] == [("3.0", "x86"), ("6.18", "x86"), ("6.18", "arm64")]
    assert c.machine.arch == "x86,arm64"


def test_bad_input_is_an_input_error():
    with pytest.raises(InputError, match="--cpus: expected 1..256, got 0"):
        mmugather.compare("small", ["3.0"], cpus=0)
    with pytest.raises(InputError, match="expected a policy name"):
        mmugather.compare("small", [object])


def test_run_returns_one_run_as_run_json_prints():
    r = mmugather.run("small", "6.18", arch="arm64")
    assert (r.policy, r.arch, r.seed) == ("6.18", "arm64", 1)
    out = CliRunner().invoke(main, ["run", "small", "--policy", "6.18", "--arch", "arm64", "--json"])
    assert json.loads(out.output) == r.to_dict()


def test_load_results_dataframe_has_a_row_per_sweep_point(tmp_path):
    grid = tmp_path / "grid.toml"
    grid.write_text('[grid]\npolicies = ["3.0", "6.18"]\nworkloads = ["small"]\ncpus = [4]\n'
                    'preempt = ["voluntary"]\nfail_nowait = [0.0]\nseeds = [1, 2, 3]\n')
    ran = mmugather.sweep(grid, tmp_path / "out", workers=1, progress=False)
    assert (ran.ran, ran.skipped) == (6, 0)
    df = mmugather.load_results(tmp_path / "out").to_dataframe()
    assert len(df) == 6 and list(df["seed"]) == [1, 2, 3, 1, 2, 3] and "ipis_sent" in df.columns


def test_to_dataframe_without_pandas_says_how_to_install_it(small, monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(ImportError, match=r"mmugather\[pandas\]"):
        small.to_dataframe()
