"""The command line: examples run, output is deterministic, bad input is one line and exit code 2."""
import json
from pathlib import Path

import pytest
from helpers import cli as cli_process, cli_here

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.toml"))


def cli(*args):
    """The command in this interpreter; test_same_seed_gives_byte_identical_json starts real processes."""
    return cli_here(*args)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
@pytest.mark.parametrize("policy", ["2.6.39", "3.0"])
def test_every_example_runs_clean(path, policy):
    r = cli("run", str(path), "--policy", policy, "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["policy"] == policy
    assert out["metrics"]["pages_unmapped"] > 0
    assert out["metrics"]["violations"] == []


def test_same_seed_gives_byte_identical_json():
    a = cli_process("compare", "--workload", "small", "--seed", "5", "--json")     # separate interpreters
    b = cli_process("compare", "--workload", "small", "--seed", "5", "--json")
    c = cli("compare", "--workload", "small", "--seed", "6", "--json")
    assert a.returncode == 0 and a.stdout == b.stdout
    assert c.stdout != a.stdout
    doc = json.loads(a.stdout)
    assert set(doc) == {"workload", "machine", "seed", "runs"}
    assert [r["policy"] for r in doc["runs"]] == ["2.6.39", "3.0", "6.18"]    # the README's three kernels
    m = doc["runs"][0]["metrics"]
    for key in ("tlb_flushes", "ipis_sent", "ipis_by_cpu", "pages_unmapped", "pages_freed", "page_tables_freed",
                "flushes_under_pte_lock", "frees_under_pte_lock", "pte_lock_hold_ns", "preempt_off_ns",
                "sched_latency_ns", "batch_alloc_attempts", "batch_alloc_failures", "gather_memory_bytes",
                "sim_time_ns", "violations"):
        assert key in m
    assert len(m["ipis_by_cpu"]) == doc["machine"]["cpus"]


def test_compare_runs_each_policy_on_each_listed_arch_it_supports():
    """2.6.39 and 3.0 predate arm64 (v3.7), so `--arch x86,arm64` runs them on x86 and 6.18 on both; arm64
    broadcasts TLBI and sends no shootdown IPIs, x86 does."""
    r = cli("compare", "--workload", "small", "--policies", "2.6.39,3.0,6.18", "--arch", "x86,arm64", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    runs = [(x["policy"], x["arch"]) for x in doc["runs"]]
    assert runs == [("2.6.39", "x86"), ("3.0", "x86"), ("6.18", "x86"), ("6.18", "arm64")]
    assert doc["machine"]["arch"] == "x86,arm64"
    ipis = [x["metrics"]["ipis_sent"] for x in doc["runs"]]
    assert ipis[3] == 0 < ipis[2]
    table = cli("compare", "--workload", "small", "--policies", "6.18", "--arch", "x86,arm64").stdout
    assert "6.18 x86" in table and "6.18 arm64" in table


def test_cpus_folds_any_workload_onto_n_cpus():
    """--cpus N works with every workload: a thread pinned to CPU c runs on CPU c mod N, time-shared."""
    for workload in ("small", "munmap:512:blocked", "wis:tlb_flush2:threads:4:1"):
        r = cli("compare", "--workload", workload, "--cpus", "2", "--json")
        assert r.returncode == 0, r.stderr
        doc = json.loads(r.stdout)
        assert doc["machine"]["cpus"] == 2
        for run in doc["runs"]:
            assert len(run["metrics"]["ipis_by_cpu"]) == 2 and run["metrics"]["violations"] == [], run["policy"]


def test_with_cpus_folds_threads_and_forks_modulo_n():
    from mmugather.workloads.scenario import parse_scenario, with_cpus
    fork = {"op": "fork", "cpu": 5, "program": [{"op": "fork", "cpu": 4}]}
    sc = parse_scenario({"machine": {"cpus": 6}, "process": [{"name": "p", "thread": [
        {"cpu": 0}, {"cpu": 3, "program": [{"op": "loop", "times": 2, "body": [fork]}]}]}]}, "t")
    folded = with_cpus(sc, 2)
    t0, t1 = folded.process[0].thread
    inner = t1.program[0].body[0]
    assert (folded.machine.cpus, t0.cpu, t1.cpu, inner.cpu, inner.program[0].cpu) == (2, 0, 1, 1, 0)
    assert with_cpus(sc, 8).process[0].thread[1].cpu == 3 and sc.machine.cpus == 6


@pytest.mark.parametrize("workload", ["small", pytest.param("default", marks=pytest.mark.slow)])
def test_compare_cpus_1_is_the_uniprocessor_kernel(workload):
    """One CPU: no kernel sends an IPI; 3.0's fast mode allocates no batch and shows only its own real bug
    (fast mode frees before the flush while the preemptible gather lets another thread run), named with
    its fix; 2.6.39 (fast mode, a non-preemptible per-CPU gather) and 6.18 (no fast mode) are clean."""
    r = cli("compare", "--workload", workload, "--cpus", "1", "--json")
    assert r.returncode == 0, r.stderr
    runs = {x["policy"]: x for x in json.loads(r.stdout)["runs"]}
    assert list(runs) == ["2.6.39", "3.0", "6.18"]
    assert all(x["metrics"]["ipis_sent"] == 0 for x in runs.values())
    assert runs["3.0"]["metrics"]["batch_alloc_attempts"] == 0 < runs["6.18"]["metrics"]["batch_alloc_attempts"]
    assert runs["2.6.39"]["metrics"]["violations"] == runs["6.18"]["metrics"]["violations"] == []
    assert "known_bug" not in runs["2.6.39"] and "known_bug" not in runs["6.18"]
    v30 = runs["3.0"]["metrics"]["violations"]
    assert v30 == [] or ({v["kind"] for v in v30} == {"stale-tlb-use-after-free"}
                         and "29eb77825cc7" in runs["3.0"]["known_bug"])
    if v30:
        assert "3.0: known bug" in cli("compare", "--cpus", "1", "--policies", "3.0").stdout


def test_workloads_and_policies_list():
    r = cli("workloads")
    assert r.returncode == 0 and "default" in r.stdout and "small" in r.stdout
    r = cli("policies", "--json")
    assert {p["name"] for p in json.loads(r.stdout)} >= {"2.6.39", "3.0"}


BAD = [
    (["run", "does-not-exist.toml"], "does-not-exist.toml"),
    (["compare", "--policies", "2.6.39,4.2", "--workload", "small"], "unknown policy '4.2'"),
    (["compare", "--workload", "nope"], "neither a built-in"),
    (["compare", "--workload", "small", "--cpus", "999"], "--cpus"),
    (["compare", "--workload", "small", "--fail-nowait", "2"], "--fail-nowait"),
    (["compare", "--workload", "small", "--preempt", "sometimes"], "--preempt"),
    (["compare", "--bogus"], "--bogus"),
    (["compare", "--workload", "small", "--arch", "arm64"], "policy 2.6.39 does not run on arm64"),
    (["compare", "--workload", "small", "--arch", ","], "--arch: expected"),
    (["compare", "--workload", "small", "--arch", "x86,sparc"],
     "--arch: unknown arch 'sparc' (expected one of: x86, ppc64, x86-kvm, arm64, ppc64-radix, x86-invlpgb)"),
]


@pytest.mark.parametrize("args,needle", BAD, ids=lambda x: " ".join(x) if isinstance(x, list) else None)
def test_bad_flags_are_one_line(args, needle):
    r = cli(*args)
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and needle in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


BAD_FILES = [
    ("[machine\ncpus = 4", "malformed TOML"),
    ("[[process]]\nname='p'\n[[process.thread]]\ncpu=0\ncolour='red'\n", "process[0].thread[0].colour: unknown key"),
    ("[machine]\ncpus=1\n[[process]]\nname='p'\n[[process.thread]]\ncpu=3\n", "machine has 1 CPUs"),
    ("[[process]]\nname='p'\n[[process.vma]]\nname='a'\nsize=4097\n[[process.thread]]\ncpu=0\n", "multiple of"),
    ("[[process]]\nname='p'\n[[process.vma]]\nname='a'\nsize=0\n[[process.thread]]\ncpu=0\n", "process[0].vma[0].size"),
    ("[[process]]\nname='p'\n[[process.vma]]\nname='a'\nsize='4KiB'\nstart=4097\n[[process.thread]]\ncpu=0\n",
     "page-aligned"),
    ("[[process]]\nname='p'\n[[process.thread]]\ncpu=0\nprogram=[{op='munmap', vma='x'}]\n", "unknown VMA 'x'"),
    ("[[process]]\nname='p'\n[[process.thread]]\ncpu=0\nprogram=[{op='teleport'}]\n", "program[0]"),
    ("[machine]\ncpus=300\n[[process]]\nname='p'\n[[process.thread]]\ncpu=0\n", "machine.cpus"),
    ("[machine]\npolicy='9.9'\n[[process]]\nname='p'\n[[process.thread]]\ncpu=0\n", "unknown policy"),
]


@pytest.mark.parametrize("text,needle", BAD_FILES)
def test_bad_scenarios_are_one_line(tmp_path, text, needle):
    f = tmp_path / "bad.toml"
    f.write_text(text)
    r = cli("run", str(f))
    assert r.returncode == 2, r.stdout
    assert r.stderr.count("\n") == 1 and needle in r.stderr and str(f) in r.stderr, r.stderr
