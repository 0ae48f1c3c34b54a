"""The engine's lookahead (workloads/program.py ChurnLookahead, Engine.run_ahead) is exact: random small
scenarios give the same metrics, to the byte, with it and without it (the engine's steps), under every
policy on every arch it runs on."""
import json
import random

from hypothesis import HealthCheck, given, settings, strategies as st

from helpers import examples

from mmugather.arch import ARCHES
from mmugather.policies import POLICIES
from mmugather.sim.simulation import Simulation
from mmugather.workloads.program import ChurnLookahead
from mmugather.workloads.scenario import parse_scenario

RUNS = [(name, arch) for name in POLICIES for arch in ARCHES[name]]


def _op(draw, names, k):
    kind = draw(st.sampled_from(["touch", "churn", "munmap", "madvise", "mprotect", "compute", "sleep", "mmap",
                                 "fsync"]))
    if kind == "fsync":
        return {"op": "fsync", "file": "f"}
    if kind in ("touch", "churn"):
        return {"op": kind, "vma": draw(st.sampled_from(names)), "write": draw(st.booleans()),
                "gap_ns": draw(st.sampled_from([1, 30, 700, 2000]))}
    if kind in ("munmap", "madvise"):
        return {"op": kind, "vma": draw(st.sampled_from(names))}
    if kind == "mprotect":
        return {"op": kind, "vma": draw(st.sampled_from(names)), "prot": "r"}
    if kind == "mmap":
        return {"op": "mmap", "vma": {"name": f"m{k}", "size": draw(st.integers(1, 600)) * 4096}}
    return {"op": kind, "ns": draw(st.integers(1, 50000))}


@st.composite
def racing_scenarios(draw):
    """A few threads churning and touching while others unmap, advise away, protect or write back (fsync) the
    same VMAs (the last one sometimes a shared file mapping)."""
    cpus = draw(st.integers(2, 4))
    names = [f"v{i}" for i in range(draw(st.integers(1, 3)))]
    vmas = [{"name": n, "size": draw(st.integers(1, 1100)) * 4096, "populate": draw(st.booleans())} for n in names]
    if draw(st.booleans()):                  # a shared file mapping: stores set the dirty bit, fsync cleans it
        vmas[-1].update(kind="file", file="f", shared=True)
    threads = []
    for _ in range(draw(st.integers(2, 4))):
        prog = [_op(draw, names, k) for k in range(draw(st.integers(0, 3)))]
        if draw(st.booleans()):
            prog.append({"op": "churn", "vma": draw(st.sampled_from(names)), "write": draw(st.booleans()),
                         "gap_ns": draw(st.sampled_from([1, 30, 500, 2000]))})
        threads.append({"cpu": draw(st.integers(0, cpus - 1)), "program": prog})
    return {"seed": draw(st.integers(0, 1000)),
            "machine": {"cpus": cpus, "preempt": draw(st.sampled_from(["none", "voluntary", "full"])),
                        "latency_task": draw(st.booleans()), "fail_nowait": draw(st.sampled_from([0.0, 0.3]))},
            "files": [{"name": "f"}], "process": [{"name": "p", "vma": vmas, "thread": threads}]}


def _metrics(sc, name, arch, **kw) -> str:
    return json.dumps(Simulation(sc, POLICIES[name], arch=arch, **kw).run(), sort_keys=True, default=str)


def _assert_exact(data: dict, label: str, run: tuple[str, str]) -> None:
    """Scenario `data` under `run` (policy, arch) gives the same metrics with the lookahead, without it
    and step by step."""
    sc = parse_scenario(data, label)
    name, arch = run
    ahead = _metrics(sc, name, arch)
    assert ahead == _metrics(sc, name, arch, lookahead=False)
    assert ahead == _metrics(sc, name, arch, fast=False)


@settings(max_examples=examples(100), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(racing_scenarios(), st.sampled_from(RUNS))
def test_lookahead_changes_no_metric(data, run):
    """With the lookahead, the same metrics as with the engine's steps alone (and as step by step)."""
    _assert_exact(data, "lookahead", run)


@st.composite
def teardowns_beside_churn(draw):
    """Thread 0 tears down (munmap, MADV_DONTNEED, exit) a range of several PTE tables while the others
    churn on ranges of their own, or now and then on the one torn down: the zap and release runs cross many
    of their events (fastpath/core.py _zap_ahead, _release_ahead, _release_stretch)."""
    cpus = draw(st.integers(2, 4))
    size = draw(st.integers(300, 3000)) * 4096
    vmas = [{"name": "t", "size": size, "populate": True}]
    prog = [{"op": draw(st.sampled_from(["munmap", "madvise"])), "vma": "t"}]
    if prog[0]["op"] == "madvise" and draw(st.booleans()):
        prog.append({"op": "munmap", "vma": "t"})
    threads = [{"cpu": 0, "program": [{"op": "touch", "vma": "t", "size": 65536, "write": draw(st.booleans())}]
                + prog + [{"op": "exit"}]}]
    for i in range(1, cpus):
        own = draw(st.integers(0, 5)) > 0
        if own:
            vmas.append({"name": f"w{i}", "size": draw(st.integers(1, 700)) * 4096, "populate": True})
        warm = [{"op": "touch", "vma": "t", "size": 16384, "write": False}] if draw(st.booleans()) else []
        threads.append({"cpu": i, "program": warm + [
            {"op": "churn", "vma": f"w{i}" if own else "t", "write": draw(st.booleans()),
             "gap_ns": draw(st.sampled_from([30, 200, 700, 2000]))}]})
    return {"seed": draw(st.integers(0, 1000)),
            "machine": {"cpus": cpus, "preempt": draw(st.sampled_from(["none", "voluntary", "full"])),
                        "latency_task": draw(st.booleans())},
            "process": [{"name": "p", "vma": vmas, "thread": threads}]}


@settings(max_examples=examples(60), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(teardowns_beside_churn(), st.sampled_from(RUNS))
def test_lookahead_across_teardown_runs_changes_no_metric(data, run):
    """A teardown whose runs the lookahead crosses: the same metrics with it, without it, and step by step."""
    _assert_exact(data, "teardown beside churn", run)


def test_every_policy_and_arch_is_drawn():
    """The runs the property draws from are every policy on every arch of the registry."""
    assert {n for n, _ in RUNS} == set(POLICIES) and len(RUNS) == sum(len(ARCHES[n]) for n in POLICIES)


def test_the_lookahead_runs_on_a_churning_workload():
    """The default-like race actually takes the lookahead (the property would be empty otherwise), both
    from the free-running loop and from run_ahead() (a zap running past other CPUs' events)."""
    from helpers import munmap_while_others_run
    sc = munmap_while_others_run()
    ran: dict[bool, int] = {True: 0, False: 0}
    orig = ChurnLookahead.run_until

    def counting(self, engine, c, t, seq):
        before = engine.seq
        ok = orig(self, engine, c, t, seq)
        ran[c is not None] += engine.seq - before       # events queued by the iterations it ran
        return ok
    ChurnLookahead.run_until = counting
    try:
        Simulation(sc, POLICIES["6.18"]).run()
    finally:
        ChurnLookahead.run_until = orig
    assert ran[False] > 10 and ran[True] > 100


def _release_sizes(sc, policy: str, fast_fn: str) -> tuple[list[int], int]:
    """The sizes of the release_pages()/release_array() calls made straight from fastpath/core.py's
    `fast_fn` on a run of `sc`, and the kernel's PAGEVEC chunk."""
    import sys

    from mmugather.mm.page_alloc import PageAlloc
    sizes: list[int] = []
    orig = {name: getattr(PageAlloc, name) for name in ("release_pages", "release_array")}

    def recorder(name):
        def recording(self, cpu, pfns, *a, **kw):
            if sys._getframe(1).f_code.co_name == fast_fn:
                sizes.append(len(pfns))
            return orig[name](self, cpu, pfns, *a, **kw)
        return recording
    for name in orig:
        setattr(PageAlloc, name, recorder(name))
    try:
        sim = Simulation(sc, POLICIES[policy])
        sim.run()
    finally:
        for name, f in orig.items():
            setattr(PageAlloc, name, f)
    return sizes, sim.kernel.PAGEVEC_SIZE


def test_release_steps_releases_several_chunks_in_one_call():
    """On the racing workload, release_steps() hands runs of several PAGEVEC chunks (fewer than
    ARRAY_RELEASE pages) to one release_pages() call: the path the property above checks against the steps
    (fast=False, where each chunk is its own release_pages()). Its own loop runs when the pages do not
    commute with the events (_release_commutes() False, forced here: the racing workload's pages do, and
    take _release_ahead(), next test)."""
    from helpers import munmap_while_others_run
    from mmugather.fastpath import core
    sc = munmap_while_others_run()
    orig = core._release_commutes
    core._release_commutes = lambda kernel, pfns: False     # release_steps()'s own loop, stretch by stretch
    try:
        sizes, chunk = _release_sizes(sc, "3.0", "_release_run")
    finally:
        core._release_commutes = orig
    assert any(chunk < n < core.ARRAY_RELEASE for n in sizes), sizes


def test_release_ahead_releases_past_several_crossings_at_once():
    """On the racing workload, _release_ahead() runs the events of several crossings (Engine.run_ahead)
    and then releases more pages than one stretch in one call: the path the property checks when the pages
    commute with the events."""
    from helpers import munmap_while_others_run
    from mmugather.machine.engine import Engine
    sc = munmap_while_others_run()
    crossings = [0]
    orig = Engine.run_ahead

    def counting(self, c, t):
        import sys
        if sys._getframe(1).f_code.co_name == "_release_ahead":
            crossings[0] += 1
        return orig(self, c, t)
    Engine.run_ahead = counting  # type: ignore[method-assign]
    try:
        sizes, chunk = _release_sizes(sc, "3.0", "_release_ahead")
    finally:
        Engine.run_ahead = orig  # type: ignore[method-assign]
    assert crossings[0] > len(sizes) > 0 and any(n > chunk for n in sizes), (crossings, sizes)


def test_zap_ahead_clears_past_several_crossings_at_once():
    """On the racing workload, _zap_ahead() (or its _zap_ahead_dense()) runs the events of several crossings
    for one run of zap steps (the PTEs cleared after them), and leaves the table alone when a churning
    thread's range maps it."""
    import sys

    from helpers import munmap_while_others_run, scenario
    from mmugather.fastpath import core
    from mmugather.machine.engine import Engine
    sc = munmap_while_others_run()
    calls = [0, 0]
    orig_run_ahead, orig_zap = Engine.run_ahead, core._zap_ahead

    def counting(self, c, t):
        if sys._getframe(1).f_code.co_name in ("_zap_ahead", "_zap_ahead_dense"):
            calls[1] += 1
        return orig_run_ahead(self, c, t)

    def zap(*a, **kw):
        calls[0] += 1
        return orig_zap(*a, **kw)
    Engine.run_ahead, core._zap_ahead = counting, zap  # type: ignore[method-assign]
    try:
        Simulation(sc, POLICIES["6.18"]).run()
        assert calls[1] > 2 * calls[0] > 0, calls
        calls[:] = [0, 0]
        threads = [{"cpu": 0, "program": [{"op": "munmap", "vma": "a"}, {"op": "exit"}]}]
        threads += [{"cpu": i, "program": [{"op": "churn", "vma": "a", "gap_ns": 1500}]} for i in (1, 2, 3)]
        shared = scenario([{"name": "a", "size": "4MiB", "populate": True}], threads, cpus=4)
        Simulation(shared, POLICIES["6.18"]).run()      # the churners' range is the one torn down
        assert calls[0] == 0, calls
    finally:
        Engine.run_ahead, core._zap_ahead = orig_run_ahead, orig_zap  # type: ignore[method-assign]


class _FloatRandom(random.Random):
    """A Random whose own random() makes randrange() take _randbelow_without_getrandbits: the lookahead
    must then draw through randrange, not its inlined getrandbits loop."""

    def random(self):
        return super().random()


@settings(max_examples=examples(15), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(racing_scenarios(), st.sampled_from(RUNS))
def test_lookahead_draws_as_the_thread_with_any_random(data, run):
    """With a Random subclass that draws differently, the lookahead still gives the engine's metrics."""
    sc = parse_scenario(data, "lookahead")
    name, arch = run
    assert Simulation(sc, POLICIES[name], arch=arch, rng_class=_FloatRandom).engine.lookahead.getrandbits is None
    ahead = _metrics(sc, name, arch, rng_class=_FloatRandom)
    assert ahead == _metrics(sc, name, arch, lookahead=False, rng_class=_FloatRandom)


def test_walk_fill_is_fill_pwc_then_fill():
    """Tlb.walk_fill() leaves the TLB, the PWC, the reference counts and the dangling sets exactly as
    fill_pwc() then fill() do, evictions included (both caches filled past their sizes)."""
    from types import SimpleNamespace

    from mmugather.machine.cpu import Cpu
    from mmugather.machine.tlb import PWC_ENTRIES, TLB_ENTRIES, Tlb

    rng = random.Random(5)
    tables = [SimpleNamespace(pfn=10_000 + k) for k in range(PWC_ENTRIES + 9)]
    tlbs, cpus = [], []
    for _ in range(2):
        tlbs.append(Tlb(SimpleNamespace(tlb_refs={}, pwc_refs={})))
        cpus.append(Cpu(0))
    for step in range(TLB_ENTRIES + 700):
        vpn = rng.randrange(TLB_ENTRIES + 300)
        pte = (rng.randrange(50, 4000) << 12) | rng.choice([0x1, 0x3])
        key = rng.randrange(len(tables))
        table = tables[key] if rng.random() < 0.5 else None
        for c in cpus:
            if step % 97 == 0:
                c.dangling.update(v >> 1 for v in list(c.tlb.values())[:3])
        if table is not None:
            tlbs[0].fill_pwc(cpus[0], key, table)
        tlbs[0].fill(cpus[0], vpn, pte)
        tlbs[1].walk_fill(cpus[1], key, table, vpn, pte)
        a, b = cpus
        assert (list(a.tlb.items()), list(a.pwc.items()), a.dangling) == (list(b.tlb.items()), list(b.pwc.items()),
                                                                          b.dangling)
        assert (tlbs[0].inv.tlb_refs, tlbs[0].inv.pwc_refs) == (tlbs[1].inv.tlb_refs, tlbs[1].inv.pwc_refs)


def test_tlb_evicts_first_in_first_out_across_compactions():
    """Many times COMPACT_EVERY evictions from one CPU's TLB (its dict compacted in place each time): the
    entries, their order and the reference counts are a first-in first-out cache's, refills moving an
    entry to the back, and the dict is the same object throughout."""
    from collections import OrderedDict
    from types import SimpleNamespace

    from mmugather.machine.cpu import Cpu
    from mmugather.machine.tlb import COMPACT_EVERY, TLB_ENTRIES, Tlb

    rng = random.Random(9)
    tlb = Tlb(SimpleNamespace(tlb_refs={}, pwc_refs={}))
    c = Cpu(0)
    same = c.tlb
    ref: OrderedDict[int, int] = OrderedDict()
    for step in range(TLB_ENTRIES + 5 * COMPACT_EVERY + 77):
        vpn = rng.randrange(3 * TLB_ENTRIES)
        pte = (rng.randrange(50, 4000) << 12) | 0x3
        if step % 2:
            tlb.fill(c, vpn, pte)
        else:
            tlb.walk_fill(c, vpn >> 9, None, vpn, pte)
        ref.pop(vpn, None)
        if len(ref) >= TLB_ENTRIES:
            ref.popitem(last=False)
        ref[vpn] = (pte >> 12) << 1 | 1
    assert c.tlb is same and list(c.tlb.items()) == list(ref.items())
    counts: dict[int, int] = {}
    for v in ref.values():
        counts[v >> 1] = counts.get(v >> 1, 0) + 1
    assert tlb.inv.tlb_refs == counts


def test_max_steps_stops_at_the_same_step():
    """A run cut by max_steps stops at the same step, naming the same task, with the lookahead or without."""
    import pytest

    from helpers import munmap_while_others_run
    from mmugather.machine.engine import LimitExceeded
    sc = munmap_while_others_run()
    for name in ("2.6.39", "6.18"):
        for bound in range(61, 1_300, 83):      # the run takes about 1,300 steps
            msgs = []
            for ahead in (True, False):
                with pytest.raises(LimitExceeded) as e:
                    Simulation(sc, POLICIES[name], lookahead=ahead, max_steps=bound).run()
                msgs.append(str(e.value))
            assert msgs[0] == msgs[1], (name, bound)


def test_lookahead_with_churners_in_the_range_torn_down():
    """Threads churning in the very range thread 0 advises away and unmaps (their walks read the tables
    being zapped, so _zap_ahead must leave those to the steps: Lookahead.reads_table): the same metrics with
    the lookahead and without, under every policy on every arch. (Fails when reads_table() says no.)"""
    from helpers import scenario
    threads = [{"cpu": 0, "program": [{"op": "madvise", "vma": "a"}, {"op": "munmap", "vma": "a"}, {"op": "exit"}]}]
    threads += [{"cpu": i, "program": [{"op": "churn", "vma": "a", "write": i == 1, "gap_ns": 200}]} for i in (1, 2, 3)]
    sc = scenario([{"name": "a", "size": "4MiB", "populate": True}], threads, cpus=4)
    for name, arch in RUNS:
        assert _metrics(sc, name, arch) == _metrics(sc, name, arch, lookahead=False), (name, arch)


def test_lookahead_with_broken_gathers_beside_churn():
    """Broken gathers (pages freed before the flush, or no shootdown) tear down a range the churning threads
    touched first: the frames released are still in their TLBs, so the release must not wait for the events
    it crosses (fastpath/core.py _release_commutes) and their violations must carry the same times: the
    same metrics and violations with the lookahead and without. (Fails when _release_commutes says yes.)"""
    from helpers import scenario
    from plugins.gathers import FreeBeforeFlush, LocalFlushOnly
    for cls in (FreeBeforeFlush, LocalFlushOnly):
        for gap in (200, 2000):
            for op in ("munmap", "madvise"):
                threads = [{"cpu": 0, "program": [{"op": op, "vma": "t"}, {"op": "exit"}]}]
                threads += [{"cpu": i, "program": [{"op": "touch", "vma": "t", "size": "256KiB", "write": False},
                                                   {"op": "churn", "vma": f"w{i}", "gap_ns": gap}]} for i in (1, 2, 3)]
                sc = scenario([{"name": "t", "size": "8MiB", "populate": True}]
                              + [{"name": f"w{i}", "size": "64KiB", "populate": True} for i in (1, 2, 3)], threads)
                ahead = Simulation(sc, cls).run()
                assert ahead["violations"], (cls.__name__, gap, op)
                assert (json.dumps(ahead, sort_keys=True, default=str)
                        == json.dumps(Simulation(sc, cls, lookahead=False).run(), sort_keys=True, default=str)), \
                    (cls.__name__, gap, op)
