"""Fuzzing the scenario loader: any input is either a Scenario or one InputError line, nothing else."""
import tomllib

from hypothesis import HealthCheck, given, settings, strategies as st

from mmugather.errors import InputError
from mmugather.workloads.scenario import Scenario, load_scenario, parse_scenario

scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True),
                    st.text(max_size=12), st.sampled_from(["4KiB", "16 pages", "1GiB", "0", "-4096", "3 MiB"]))
keys = st.sampled_from(["name", "seed", "machine", "cpus", "preempt", "policy", "fail_nowait", "process", "vma",
                        "thread", "program", "op", "size", "start", "offset", "populate", "kind", "file", "shared",
                        "cpu", "ns", "vma", "files", "writable", "advice", "gap_ns", "write", "bogus"])
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(keys, inner, max_size=5)), max_leaves=25)
ops = st.fixed_dictionaries({"op": st.sampled_from(["touch", "churn", "munmap", "madvise", "sleep", "compute", "exit",
                                                    "exec", "mmap", "warp"])},
                            optional={"vma": st.sampled_from(["a", "b", 3]), "size": scalars, "offset": scalars,
                                      "ns": scalars, "write": scalars})
plausible = st.fixed_dictionaries({
    "machine": st.fixed_dictionaries({}, optional={"cpus": st.integers(-1, 300), "preempt": scalars,
                                                   "fail_nowait": scalars}),
    "process": st.lists(st.fixed_dictionaries({
        "name": st.sampled_from(["p", ""]),
        "vma": st.lists(st.fixed_dictionaries({"name": st.sampled_from(["a", "b"]), "size": scalars},
                                              optional={"populate": st.one_of(st.booleans(), values),
                                                        "start": scalars}), max_size=3),
        "thread": st.lists(st.fixed_dictionaries({"cpu": st.integers(-1, 8), "program": st.lists(ops, max_size=4)}),
                           max_size=3)}), max_size=2),
})


def _load(data):
    try:
        return parse_scenario(data, "fuzz")
    except InputError as e:
        assert "\n" not in str(e) and str(e).startswith("fuzz: ")
        return None


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.dictionaries(keys, values, max_size=6), plausible))
def test_loader_never_raises_anything_else(data):
    result = _load(data)
    assert result is None or isinstance(result, Scenario)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_garbage_files_are_one_line_errors(tmp_path_factory, text):
    f = tmp_path_factory.mktemp("fuzz") / "s.toml"
    f.write_text(text)
    try:
        load_scenario(f)
    except InputError as e:
        assert "\n" not in str(e)
        assert str(f) in str(e)


def test_a_valid_scenario_survives_a_round_trip():
    text = """
[machine]
cpus = 2
[[process]]
name = "p"
[[process.vma]]
name = "a"
size = "8 pages"
populate = [["4KiB", "4KiB"]]
[[process.thread]]
cpu = 1
program = [{op = "touch", vma = "a"}, {op = "exit"}]
"""
    sc = parse_scenario(tomllib.loads(text), "t")
    assert sc.process[0].vma[0].size == 8 * 4096
    assert sc.process[0].vma[0].populate == [(4096, 4096)]


def _program(draw, names):
    kinds = st.sampled_from(["touch", "munmap", "madvise", "churn", "compute", "sleep", "mmap"])
    prog = []
    for k in range(draw(st.integers(0, 4))):
        kind = draw(kinds)
        if kind in ("touch", "munmap", "madvise", "churn"):
            op = {"op": kind, "vma": draw(st.sampled_from(names))}
            if kind in ("touch", "churn"):
                op["write"] = draw(st.booleans())
                op["gap_ns"] = draw(st.integers(1, 3000))
        elif kind == "mmap":
            op = {"op": "mmap", "vma": {"name": f"m{k}", "size": draw(st.integers(1, 600)) * 4096}}
        else:
            op = {"op": kind, "ns": draw(st.integers(1, 50000))}
        prog.append(op)
    return prog


@st.composite
def runnable_scenarios(draw):
    cpus = draw(st.integers(2, 4))
    nv = draw(st.integers(1, 3))
    names = [f"v{i}" for i in range(nv)]
    vmas = [{"name": n, "size": draw(st.integers(1, 1100)) * 4096, "populate": draw(st.booleans())} for n in names]
    threads = [{"cpu": draw(st.integers(0, cpus - 1)), "program": _program(draw, names)}
               for _ in range(draw(st.integers(1, 4)))]
    return {"seed": draw(st.integers(0, 1000)),
            "machine": {"cpus": cpus, "preempt": draw(st.sampled_from(["none", "voluntary", "full"])),
                        "fail_nowait": draw(st.sampled_from([0.0, 0.5, 1.0]))},
            "process": [{"name": "p", "vma": vmas, "thread": threads}]}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(runnable_scenarios())
def test_random_valid_scenarios_run_clean_under_both_policies(data):
    """On two or more CPUs both kernels keep every invariant, whatever the program."""
    from mmugather.policies import POLICIES
    from mmugather.sim.simulation import Simulation
    sc = parse_scenario(data, "fuzz")
    for cls in POLICIES.values():
        m = Simulation(sc, cls).run()
        assert m["violations"] == [], (cls.name, m["violations"])
