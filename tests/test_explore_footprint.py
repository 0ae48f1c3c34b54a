"""Step footprints, the explorer's independence relation: a step that changes shared state says so (checked
against the state fingerprint's own encoding under random schedules), and partial-order reduction keeps
every verdict of the unpruned search on small random scenarios."""
import random

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from helpers import examples

from mmugather.explore import search
from mmugather.explore.bugs import get_bug
from mmugather.explore.controlled import MEM, PROC, CountingRandom, actor_cpu
from mmugather.explore.state import Fingerprinter
from mmugather.explore.target import KernelTarget
from mmugather.policies import get_policy
from mmugather.workloads.scenario import parse_scenario


# ------------------------------------------------------------------ footprints miss no write
def _generic(sim) -> tuple[dict, dict]:
    """The shared state as the state fingerprint encodes it: (kernel memory with the invariant checker's
    records, the programs' process fields), and per CPU what other CPUs see and change of it."""
    alloc, rcu, inv = sim.alloc, sim.rcu, sim.invariants
    enc = Fingerprinter(sim.engine, singletons=[sim.kernel, sim.arch, sim.costs, sim.metrics, sim.invariants,
                                                sim.tlb, rcu, alloc, sim.scenario, sim.rng]).encode
    shared = {MEM: enc([sim.mms, sim.files, rcu.pending, alloc.free_list, alloc.refcount, alloc.mapcount,
                        alloc.kind, alloc.nr_used, alloc.zero_pfn, rcu.qs, inv.in_flight, inv.walking,
                        inv.check_stores, inv.violations]),
              PROC: enc([(p.exiting, p.busy, id(p.mm), p.ranges) for p in sim.processes])}
    cpus = {c.id: enc([c.curr, id(c.loaded_mm), id(c.active_mm), c.tlbstate, c.dangling, c.per_cpu, c.state,
                       c.ipi_acks_left, c.runqueue, [t.blocked_on for t in c.runqueue]]) for c in sim.engine.cpus}
    return shared, cpus


SIGNED = [("fast-mode-3.0", False), ("madv-dontneed-flush-miss", True), ("mremap-flush-after-unlock", False),
          ("nested-flush-reset-range", True), ("radix-table-free-no-invalidate", True),
          ("pfnmap-munmap-vs-revoke", False), ("khugepaged-gup-fast-free", True),
          ("rmap-removed-before-flush", False), ("table-free-no-invalidate", True)]


@pytest.mark.parametrize("name,fixed", SIGNED)
def test_every_change_of_shared_state_is_in_the_step_footprint(name, fixed):
    """Under random schedules, a step that changes kernel memory (the invariant checker's records and RCU's
    quiescent-state counts included) or another CPU's state, as the fingerprint's encoding sees it, writes
    MEM; one that changes the programs' process fields writes PROC."""
    target = get_bug(name).variant(fixed)
    checked = 0
    for seed in range(4):
        rng = random.Random(seed)
        m = target.build()
        ctl = m.engine.scheduler
        before: list = []
        taken: list = []

        def choose(enabled, m=m, ctl=ctl, before=before, taken=taken, rng=rng, seed=seed):
            nonlocal checked
            now = _generic(m)
            if before:
                (shared0, cpus0), (shared, cpus), a = before[-1], now, taken[-1]
                own = actor_cpu(m.engine, a).id
                changed = [bit for bit in shared if shared[bit] != shared0[bit]]
                changed += [MEM for x in cpus if x != own and cpus[x] != cpus0[x]]
                for bit in changed:
                    assert ctl.fp_write & bit, (name, fixed, seed, len(before), a, bin(bit), bin(ctl.fp_write))
                checked += bool(changed)
            before.append(now)
            if m.invariants.violations or len(before) > 400:
                return None
            taken.append(enabled[rng.randrange(len(enabled))])
            return taken[-1]
        search.run_machine(m, choose, track=True)
    assert checked > 10                  # (the schedules did change shared state)


# ------------------------------------------------------------------ POR against the unpruned search
POLICIES = [("6.18", ()), ("6.18", ("tlb_flush_pending",)), ("3.0", ()), ("3.0", ("tlb_fast_mode",)),
            ("2.6.39", ())]


@st.composite
def small_races(draw):
    """Two or three threads on one or two CPUs, a few ops each on one or two small VMAs (anonymous or
    file-backed), under a kernel with or without a fix."""
    cpus = draw(st.integers(1, 2))
    names = ["a", "b"][:draw(st.integers(1, 2))]
    file = draw(st.booleans())
    vmas = [{"name": n, "size": draw(st.integers(1, 2)) * 4096, "populate": draw(st.booleans()),
             **({"kind": "file", "file": "F", "shared": True} if file and n == "a" else {})} for n in names]
    ops = st.sampled_from(["touch", "store", "munmap", "madvise"])

    def program():
        prog = []
        for kind in draw(st.lists(ops, min_size=1, max_size=2)):
            op = {"op": "touch" if kind == "store" else kind, "vma": draw(st.sampled_from(names))}
            if kind in ("touch", "store"):
                op["write"] = kind == "store"
            prog.append(op)
        return prog
    threads = [{"cpu": draw(st.integers(0, cpus - 1)), "program": program()} for _ in range(draw(st.integers(2, 3)))]
    policy, without = draw(st.sampled_from(POLICIES))
    sc = {"machine": {"cpus": cpus, "preempt": draw(st.sampled_from(["none", "voluntary", "full"])),
                      "latency_task": False},
          "process": [{"name": "app", "vma": vmas, "thread": threads}]}
    if file:
        sc["files"] = [{"name": "F"}]
    return sc, policy, without


@settings(max_examples=examples(12), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(small_races(), st.booleans())
def test_partial_order_reduction_keeps_every_verdict_of_the_unpruned_search(case, hashed):
    """The same violation kind (or none) and the same coverage with and without sleep sets, with or without
    state hashing; a whole bound never takes more executions with them."""
    data, policy, without = case
    target = KernelTarget(parse_scenario(data, "fuzz"), get_policy(policy), without_fixes=without)
    kw = {"max_preemptions": 1, "budget": 400, "hash_states": hashed}
    por = search.exhaustive(target, sleep_sets=True, **kw)
    every = search.exhaustive(target, sleep_sets=False, **kw)
    if por.covered and every.covered:
        assert (por.violation or {}).get("kind") == (every.violation or {}).get("kind"), (data, policy, without)
        if por.violation is None:
            assert por.executions <= every.executions
    elif every.covered or (every.violation is not None and por.covered):
        pytest.fail(f"coverage differs: POR {por.covered}, unpruned {every.covered} ({data}, {policy})")


# ------------------------------------------------------------------ the counted RNG
class _Counted(random.Random):
    """random.Random seeded when made, counting its draws as CountingRandom does."""
    draws = 0

    def random(self):
        self.draws += 1
        return super().random()

    def getrandbits(self, k):
        self.draws += 1
        return super().getrandbits(k)


@pytest.mark.parametrize("seed", [0, 1, 12345, 2**70])
def test_counting_random_draws_as_random_seeded_when_made(seed):
    """CountingRandom seeds at its first use: its state, draws of every kind, seed() and setstate() are those
    of random.Random(seed), and every draw is counted (fails if some way to the state skips the seeding)."""
    assert CountingRandom(seed).getstate() == random.Random(seed).getstate()
    a, b = CountingRandom(seed), _Counted(seed)
    draws = [(x.random(), x.randrange(1000), x.getrandbits(70), x.gauss(0, 1), x.choice(range(50)),
              x.randbytes(3)) for x in (a, b)]
    assert draws[0] == draws[1] and a.getstate() == b.getstate() and a.draws == b.draws >= 6
    first = CountingRandom(seed)
    assert first.getrandbits(64) == random.Random(seed).getrandbits(64)
    reseeded, restored = CountingRandom(seed), CountingRandom(seed)
    reseeded.seed(99)
    restored.setstate(random.Random(5).getstate())
    assert reseeded.random() == random.Random(99).random() and restored.random() == random.Random(5).random()
