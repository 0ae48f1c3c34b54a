"""Hypothesis strategies for scenario dicts, shared by the scenario loader fuzz (test_scenario_fuzz.py) and
the input fuzz suite (test_fuzz_inputs.py): any value, plausible shapes, keys the loader knows."""
from hypothesis import strategies as st

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
