"""Step footprints, the explorer's independence relation: a step that changes shared state says so (checked
against the state fingerprint's own encoding under random schedules), lock requests leave their lock's
bit, and partial-order reduction keeps every verdict of the unpruned search on small random scenarios."""
import random

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from helpers import examples

from mmugather.explore import search
from mmugather.explore.bugs import get_bug
from mmugather.explore.controlled import INV, MEM, PROC, RESCHED, Controlled
from mmugather.explore.state import Fingerprinter
from mmugather.explore.target import KernelTarget
from mmugather.kernel.locking import DownRead, DownWrite, RwSemaphore, UpRead, UpWrite
from mmugather.kernel.rcu import Rcu
from mmugather.machine.costs import Costs
from mmugather.machine.engine import Engine
from mmugather.policies import get_policy
from mmugather.report.metrics import Metrics
from mmugather.sim.invariants import Invariants
from mmugather.workloads.scenario import parse_scenario


# ------------------------------------------------------------------ the signatures miss no write
def _locks(sim) -> list:
    """Every lock of the machine's mms and files: lock state is the lock requests' footprint, not memory's."""
    out = []
    for mm in sim.mms:
        out += [mm.mmap_sem, mm.page_table_lock, mm.anon_vma_lock, mm.anon_vma_mutex, mm.anon_vma_rwsem]
        out += [t.ptl for t in mm.pte_tables.values()]
    for f in sim.files.values():
        out += [f.i_mmap_lock, f.i_mmap_mutex, f.i_mmap_rwsem, f.unmap_mutex, *f.folio_locks.values()]
    return out


def _generic(sim) -> dict:
    """The shared state by region, as the state fingerprint encodes it (locks left out)."""
    alloc, rcu, inv = sim.alloc, sim.rcu, sim.invariants
    enc = Fingerprinter(sim.engine, singletons=[sim.kernel, sim.arch, sim.costs, sim.metrics, sim.invariants,
                                                sim.tlb, rcu, alloc, sim.scenario, sim.rng, *_locks(sim)]).encode
    out = {MEM: enc([sim.mms, sim.files, rcu.pending, alloc.free_list, alloc.refcount, alloc.mapcount,
                     alloc.kind, alloc.nr_used, alloc.zero_pfn, rcu.qs]),
           INV: enc([inv.in_flight, inv.walking, inv.check_stores, inv.violations]),
           PROC: enc([(p.exiting, p.busy, id(p.mm), p.ranges) for p in sim.processes])}
    fp = sim.engine.scheduler.footprint
    for c in sim.engine.cpus:
        out[fp.bit_pub[c.id]] = enc([c.curr, id(c.loaded_mm), id(c.active_mm), c.tlbstate, c.dangling, c.per_cpu])
        out[fp.bit_cpu[c.id]] = enc([c.state, c.ipi_acks_left, c.runqueue, [t.blocked_on for t in c.runqueue]])
    return out


SIGNED = [("fast-mode-3.0", False), ("madv-dontneed-flush-miss", True), ("mremap-flush-after-unlock", False),
          ("nested-flush-reset-range", True), ("radix-table-free-no-invalidate", True),
          ("pfnmap-munmap-vs-revoke", False), ("khugepaged-gup-fast-free", True),
          ("rmap-removed-before-flush", False), ("table-free-no-invalidate", True)]


@pytest.mark.parametrize("name,fixed", SIGNED)
def test_every_change_of_shared_state_is_in_the_step_footprint(name, fixed):
    """Under random schedules, each region of shared state (kernel memory, the invariant checker's records,
    the programs' process fields, each CPU's visible and scheduling state) that the fingerprint's encoding
    sees change in a step is a bit the step's footprint writes."""
    target = get_bug(name).variant(fixed)
    checked = 0
    for seed in range(4):
        rng = random.Random(seed)
        m = target.build()
        ctl = m.engine.scheduler
        before: list = []

        def choose(enabled, m=m, ctl=ctl, before=before, rng=rng, seed=seed):
            nonlocal checked
            now = _generic(m)
            if before:
                changed = [bit for bit, enc in now.items() if enc != before[-1][bit]]
                for bit in changed:
                    assert ctl.fp_write & bit, (name, fixed, seed, len(before), bin(bit), bin(ctl.fp_write))
                checked += bool(changed)
            before.append(now)
            if m.invariants.violations or len(before) > 400:
                return None
            return enabled[rng.randrange(len(enabled))]
        search.run_machine(m, choose, track=True)
    assert checked > 10                  # (the schedules did change shared state)


# ------------------------------------------------------------------ lock requests
class _NoArch:
    def enter_lazy_tlb(self, c):
        pass

    def switch_mm(self, c, mm):
        pass


def _reader(sem, write: bool):
    yield (DownWrite if write else DownRead)(sem)
    yield 1
    yield (UpWrite if write else UpRead)(sem)


def _footprints(write: bool) -> list:
    """The footprints of the lock steps of two tasks on two CPUs taking one rw_semaphore, one after the other:
    for reading both (`write` off) or for writing both."""
    metrics = Metrics(2)
    inv = Invariants(metrics)
    eng = Engine(2, Costs(), "voluntary", metrics, inv, scheduler=Controlled())
    eng.arch = _NoArch()
    eng.rcu = Rcu(eng.cpus, metrics)
    sem = RwSemaphore("sem")
    for cpu in (0, 1):
        eng.spawn(f"t{cpu}", cpu, "user", lambda c, t: _reader(sem, write)).in_kernel = True
    ctl = eng.scheduler
    out = []

    def choose(enabled):
        if ctl.last_task is not None:
            out.append((ctl.fp_read, ctl.fp_write))
        return enabled[0]
    ctl.chooser, ctl.track = choose, True
    eng.run()
    return out, ctl.footprint.lock_bit(sem)


def test_down_read_granted_at_once_reads_the_lock_and_down_write_writes_it():
    """Two readers' down_read()s commute (each only reads the semaphore's bit); down_write() writes it."""
    reads, bit = _footprints(write=False)
    assert reads[0][0] & bit and not reads[0][1] & bit             # down_read(), nobody holding it for writing
    writes, bit = _footprints(write=True)
    assert writes[0][1] & bit
    assert bit > RESCHED                 # (a bit, not an actor)


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
