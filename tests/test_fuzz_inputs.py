"""Fuzzing every input a user controls (issue 18): CLI arguments, scenario and sweep files, snapshot
directories, replay files and plugin behaviour. Each generated case must end in a result or in one
InputError line (exit 2 on the command line): never another exception (a traceback), never a lost result.
Slow: run with `-m slow tests/test_fuzz_inputs.py`; MMUGATHER_FUZZ_SCALE multiplies the case counts (1: about
100,000 cases in all)."""
import contextlib
import json
import os
import tempfile
import tomllib
from pathlib import Path

import click
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers.strategies import keys, plausible, values

from mmugather.errors import InputError

pytestmark = pytest.mark.slow
SCALE = float(os.environ.get("MMUGATHER_FUZZ_SCALE", "1"))
RUN = {}                                          # cases run per test, printed at the end


def cases(n: int):
    return settings(max_examples=max(1, int(n * SCALE)), deadline=None, database=None,
                    suppress_health_check=list(HealthCheck))


def _count(name: str) -> None:
    RUN[name] = RUN.get(name, 0) + 1


@pytest.fixture(scope="module", autouse=True)
def report_counts():
    yield
    print(f"\nfuzz cases run: {RUN} total {sum(RUN.values())}")


# ------------------------------------------------------------------ CLI arguments, in process
def invoke(args: list[str]) -> tuple[int, str]:
    """The command line as `entry` runs it: (exit code, what it printed). Any exception entry would not turn
    into one line propagates, failing the test."""
    from click.testing import CliRunner

    from mmugather.cli import main
    runner = CliRunner()
    with tempfile.TemporaryDirectory() as d, contextlib.chdir(d):   # output paths the fuzzer names land there
        r = runner.invoke(main, args, standalone_mode=False, catch_exceptions=True)
    e = r.exception
    if e is None or isinstance(e, SystemExit):
        return (e.code if isinstance(e, SystemExit) and isinstance(e.code, int) else 0), r.output
    if isinstance(e, (InputError, click.ClickException, click.exceptions.Exit, click.Abort)):
        return 2, r.output
    raise e


EXAMPLE = str(Path(__file__).resolve().parents[1] / "examples" / "munmap-race.toml")
WORDS = ["small", "exit-1g", "munmap:3", "munmap:-1", "wis:tlb_flush2:threads:2:0", "snapshot:nope", "bogus",
         "x86", "x86,bogus", "arm64", "ppc64", "3.0", "6.18", "2.6.39", "3.0,3.0", "", ",", "-1", "0", "1", "2",
         "99999999999999999999", "1e9", "nan", "/proc/x", "/dev/full", "/tmp", "/nonexistent/x",
         f"{Path(__file__).resolve().parent / 'plugins' / 'misbehaving.py'}:YieldsStr",
         "none", "full", "0.5", "1.5", "8GiB", "1", "lots", "--json", "exit", "munmap-largest", "python"]
OPTIONS = {
    "compare": ["--workload", "--policies", "--cpus", "--preempt", "--fail-nowait", "--seed", "--costs", "--arch",
                "--snapshot", "--variant", "--html", "--trace"],
    "run": ["--policy", "--seed", "--costs", "--arch", "--without-fix", "--snapshot", "--variant", "--trace"],
    "explore": ["--policy", "--strategy", "--max-preemptions", "--budget", "--seed", "--depth", "--max-steps",
                "--without-fix", "--arch", "--out"],
    "replay": ["--trace"], "sweep": ["--out", "--executor", "--workers", "--chunk", "--html"],
    "snapshot": ["--pid", "-o"], "calibrate": ["-o", "--runs", "--max-spread"], "bugs": [], "policies": [],
    "workloads": [],
}


@st.composite
def argv(draw):
    cmd = draw(st.sampled_from(sorted(OPTIONS)))
    args = [cmd]
    if cmd in ("run", "explore", "replay", "sweep"):
        args.append(draw(st.sampled_from(WORDS + [EXAMPLE, "nope.toml"])))
    for _ in range(draw(st.integers(0, 4))):
        opt = draw(st.sampled_from(OPTIONS[cmd] + ["--bogus"])) if OPTIONS[cmd] else "--json"
        args += [opt, draw(st.sampled_from(WORDS))]
    if cmd in ("compare", "run", "explore", "replay"):
        args += ["--max-memory", "1"]          # every run with resident memory is refused: validation only
    if cmd == "sweep":
        args[1] = "nope.toml"                  # sweeps are fuzzed through their files, without a pool
    if cmd in ("snapshot", "calibrate"):
        args += ["-o", "/proc/x"]              # last -o wins: no capture, no host measurement, no file written
    return args


@cases(5_000)
@given(argv())
def test_cli_arguments(args):
    _count("cli")
    code, out = invoke(args)
    assert code in (0, 1, 2), (args, code)
    if code == 0 and "--help" not in args:
        assert out.strip(), args                  # a success prints its result


# ------------------------------------------------------------------ scenario files


@cases(30_000)
@given(st.one_of(st.dictionaries(keys, values, max_size=6), plausible))
def test_scenario_dicts_and_their_memory_estimate(data):
    _count("scenario")
    from mmugather.workloads.scenario import estimate_memory, parse_scenario
    try:
        sc = parse_scenario(data, "fuzz")
    except InputError as e:
        assert "\n" not in str(e)
        return
    assert estimate_memory(sc) >= 0


@cases(25_000)
@given(st.text(max_size=300))
def test_scenario_text(tmp_path_factory, text):
    _count("scenario-text")
    from mmugather.workloads.scenario import load_scenario
    f = tmp_path_factory.getbasetemp() / "fuzz.toml"
    f.write_text(text)
    try:
        load_scenario(f)
    except InputError as e:
        assert "\n" not in str(e)


# ------------------------------------------------------------------ sweep files
grid_values = st.one_of(st.lists(st.one_of(st.integers(-3, 300), st.floats(-1, 2), st.booleans(),
                                           st.sampled_from(["3.0", "6.18", "small", "./small", "x.toml", "x86",
                                                            "arm64", "full", "bogus", ""])), max_size=4),
                        st.fixed_dictionaries({"from": st.integers(-5, 10**12), "to": st.integers(-5, 10**12)}),
                        st.integers(), st.text(max_size=5))
grid = st.dictionaries(st.sampled_from(["policies", "workloads", "cpus", "preempt", "fail_nowait", "seeds", "arch",
                                        "threads"]), grid_values, max_size=8)


def _toml(v) -> str:
    if not isinstance(v, dict):
        return json.dumps(v)
    return "{" + ", ".join(f"{k} = {_toml(x)}" for k, x in v.items()) + "}"


@cases(20_000)
@given(grid)
def test_sweep_files(tmp_path_factory, g):
    _count("sweep")
    from mmugather.sweep import grid_points, load_sweep
    f = tmp_path_factory.getbasetemp() / "fuzz-sweep.toml"
    text = "[grid]\n" + "".join(f"{k} = {_toml(v)}\n" for k, v in g.items())
    try:
        tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        text = "[grid]\n"
    f.write_text(text)
    try:
        gr, scenarios = load_sweep(f)
    except InputError as e:
        assert "\n" not in str(e)
        return
    assert len(grid_points(gr)) == gr.size()


# ------------------------------------------------------------------ snapshot directories
hexnum = st.integers(0, 2**64).map(lambda n: f"{n:x}")
maps_line = st.one_of(
    st.builds(lambda a, b, p: f"{a}-{b} {p} 00000000 00:00 0 ", hexnum, hexnum,
              st.sampled_from(["rw-p", "r--s", "xxxx"])),
    st.text(max_size=40))
smaps_field = st.builds(lambda k, v, u: f"{k}: {v}{u}", st.sampled_from(["Size", "Rss", "Anonymous", "Swap",
                                                                         "AnonHugePages", "THPeligible", "Bogus"]),
                        st.integers(0, 2**50), st.sampled_from([" kB", ""]))


@cases(15_000)
@given(st.lists(st.integers(0, 2**40), min_size=1, max_size=3), st.lists(maps_line, max_size=2),
       st.lists(smaps_field, max_size=5), st.text(max_size=40), st.text(max_size=30))
def test_snapshot_directories(tmp_path_factory, sizes_kb, extra_maps, fields, present, meta):
    _count("snapshot")
    from mmugather.workloads.scenario import estimate_memory, parse_scenario
    from mmugather.workloads.snapshot import load_snapshot, snapshot_to_scenario
    d = tmp_path_factory.getbasetemp() / "fuzz-snap"
    d.mkdir(exist_ok=True)
    start, maps, smaps = 0x10000000, [], []
    for kb in sizes_kb:
        line = f"{start:x}-{start + kb * 1024:x} rw-p 00000000 00:00 0 "
        maps.append(line)
        smaps += [line, f"Size: {kb} kB", f"Rss: {kb // 2} kB", *fields]
        start += kb * 1024 + 4096
    (d / "maps").write_text("\n".join(maps + extra_maps) + "\n")
    (d / "smaps").write_text("\n".join(smaps) + "\n")
    (d / "present").write_text(present)
    (d / "meta.json").write_text(meta)
    try:
        sc = parse_scenario(snapshot_to_scenario(load_snapshot(d)), "fuzz")
    except InputError as e:
        assert "\n" not in str(e)
        return
    assert estimate_memory(sc) >= 0


# ------------------------------------------------------------------ replay files
TINY = {"machine": {"cpus": 2, "latency_task": False},
        "process": [{"name": "p", "vma": [{"name": "a", "size": "8KiB", "populate": True}],
                     "thread": [{"cpu": 0, "program": [{"op": "munmap", "vma": "a"}, {"op": "exit"}]},
                                {"cpu": 1, "program": [{"op": "touch", "vma": "a", "write": False}]}]}]}
replay_doc = st.fixed_dictionaries(
    {"format": st.sampled_from(["mmugather-replay/1", "x"])},
    optional={"scenario": st.one_of(st.just(TINY), values), "policy": st.sampled_from(["3.0", "2.6.39", "bogus", 3]),
              "schedule": st.one_of(st.lists(st.lists(st.integers(-4, 6), min_size=2, max_size=2), max_size=3),
                                    values),
              "without_fixes": st.one_of(st.just([]), st.lists(st.text(max_size=5), max_size=2)),
              "arch": st.sampled_from([None, "x86", "arm64", "bogus"]), "seed": st.sampled_from([None, 0, 1, -1])})


@cases(5_000)
@given(replay_doc)
def test_replay_files(tmp_path_factory, doc):
    _count("replay")
    from mmugather.explore.session import load_replay
    from mmugather.explore.story import tell
    f = tmp_path_factory.getbasetemp() / "fuzz-replay.json"
    f.write_text(json.dumps(doc))
    try:
        target, d = load_replay(str(f), max_memory=1 << 30)
        told = tell(target, d["schedule"], max_steps=2000)
    except InputError as e:
        assert "\n" not in str(e)
        return
    assert told["lines"] is not None


# ------------------------------------------------------------------ plugin behaviour
class Boom(Exception):
    pass


yielded = st.one_of(st.integers(-10, 10**6), st.text(max_size=3), st.none(), st.floats(), st.booleans(),
                    st.just("CALL"), st.just("RAISE"), st.just("EXIT"))


@cases(5_000)
@given(st.lists(yielded, max_size=5), st.booleans())
def test_plugin_behaviour(seq, plain):
    """A plugin's tlb_flush yields a random sequence (or is no generator at all): the run ends with metrics or
    a PluginError naming the plugin; the built-in policy beside it is unaffected."""
    _count("plugin")
    from mmugather.policies import Linux30
    from mmugather.policies.plugins import PluginError, _hold_to_contract, plugin_guard
    from mmugather.sim.simulation import Simulation
    from mmugather.workloads.scenario import parse_scenario

    def flush(self, c, tlb):
        for v in seq:
            if v == "RAISE":
                raise Boom("x")
            if v == "EXIT":
                raise SystemExit(0)
            yield super(Fuzzed, self).tlb_flush(c, tlb) if v == "CALL" else v
        yield from super(Fuzzed, self).tlb_flush(c, tlb)

    def flush_plain(self, c, tlb):
        return seq[0] if seq else None
    Fuzzed = type("Fuzzed", (Linux30,), {"tlb_flush": flush_plain if plain else flush, "__module__": "fuzzplugin"})
    Fuzzed._plugin_spec = "fuzz:Fuzzed"
    _hold_to_contract(Fuzzed, "fuzz:Fuzzed")
    sc = parse_scenario(TINY, "fuzz")
    try:
        with plugin_guard(Fuzzed):
            Simulation(sc, Fuzzed).run()
    except PluginError as e:
        assert "\n" not in str(e) and str(e).startswith("--policy fuzz:Fuzzed")
    assert Simulation(sc, Linux30).run()["violations"] == []
