"""The race explorer: it finds races, proves small locked programs clean with a hand-checked state count,
replays and shrinks schedules faithfully, and its command line keeps the exit-code contract."""
import json
from pathlib import Path

from helpers import cli_here, scenario

from mmugather.explore import search
from mmugather.explore.controlled import Controlled
from mmugather.explore.session import run_search
from mmugather.explore.state import Fingerprinter
from mmugather.explore.story import tell
from mmugather.explore.target import KernelTarget
from mmugather.kernel.locking import Spinlock, SpinLock, SpinUnlock
from mmugather.kernel.rcu import Rcu
from mmugather.machine.costs import Costs
from mmugather.machine.engine import Engine
from mmugather.policies import Linux30
from mmugather.report.metrics import Metrics
from mmugather.sim.invariants import Invariants

ROOT = Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------ hand-written programs
class _NoArch:
    def enter_lazy_tlb(self, c):
        pass

    def switch_mm(self, c, mm):
        pass


class Shared:
    __slots__ = ("x",)

    def __init__(self) -> None:
        self.x = 0


def increment(shared: Shared, lock):
    """x += 1 as a load step and a store step, inside spin_lock/spin_unlock when `lock` is given."""
    if lock is not None:
        yield SpinLock(lock)
    v = shared.x
    yield 1
    shared.x = v + 1
    yield 1
    if lock is not None:
        yield SpinUnlock(lock)


class TwoIncrements:
    """Two kernel threads on two CPUs each increment one shared counter; x != 2 at the end is a lost update."""

    def __init__(self, locked: bool) -> None:
        metrics = Metrics(2)
        self.invariants = Invariants(metrics)
        self.engine = Engine(2, Costs(), "voluntary", metrics, self.invariants, scheduler=Controlled())
        self.engine.arch = _NoArch()
        self.engine.rcu = Rcu(self.engine.cpus, metrics)
        self.shared = Shared()
        lock = Spinlock("counter_lock") if locked else None
        for cpu in (0, 1):
            task = self.engine.spawn(f"inc/{cpu}", cpu, "user", lambda c, t: increment(self.shared, lock))
            task.in_kernel = True
        self.fingerprint = Fingerprinter(self.engine, roots=[self.shared, lock]).fingerprint

    def finish(self) -> None:
        if self.shared.x != 2:
            self.invariants.report("lost-update", -1, f"x = {self.shared.x} after two increments")


class Toy:
    def __init__(self, locked: bool) -> None:
        self.locked = locked

    def build(self):
        return TwoIncrements(self.locked)


def test_the_explorer_finds_the_lost_update_of_an_unlocked_increment():
    """Load, load, store, store: one preemption is enough, and the schedule replays to the same failure."""
    res = search.exhaustive(Toy(False), max_preemptions=2)
    assert res.violation == {"kind": "lost-update", "cpu": -1, "detail": "x = 1 after two increments"}
    schedule = search.to_deviations(Toy(False), res.trace)
    _, out = search.replay(Toy(False), schedule)
    assert out.violation["kind"] == "lost-update" and out.trace == res.trace


def test_the_locked_twin_is_proven_clean_and_its_states_are_counted_by_hand():
    """Each thread is at one of: not started (s), holding the lock at spin_lock (L), loaded (A), stored (B),
    spinning at spin_lock (W), unlocked (U), exited (D). Reachable pairs: both outside the lock (s, U, D:
    3 x 3 = 9), one holding (L, A, B) and the other outside (2 x 3 x 3 = 18), one holding and the other
    spinning (2 x 3 = 6): 33. A thread at U still has the value it loaded in its frame: when both have
    been through the lock, (U, U), (U, D) and (D, U) come twice, by who went first: 36. Less (D, D), where
    nothing is left to choose: 35 states hashed. With no preemption only the two serial orders remain:
    (s, s); then L, A, B, U, D of the first thread with the other at s (5), then the second's L, A, B, U
    with the first at D (4); and the same the other way round: 19."""
    full = search.exhaustive(Toy(True), max_preemptions=2, hash_window=None)
    assert full.violation is None and full.covered
    assert full.states == 35
    assert search.exhaustive(Toy(True), max_preemptions=4, hash_window=None).states == 35
    serial = search.exhaustive(Toy(True), max_preemptions=0, hash_window=None)
    assert serial.violation is None and serial.states == 19


def test_state_hashing_and_sleep_sets_change_the_work_not_the_verdict():
    """Pruning revisited states cuts executions; turning sleep sets off explores every interleaving
    within the bound and visits the same states."""
    bare = search.exhaustive(Toy(True), max_preemptions=6, hash_states=False)
    hashed = search.exhaustive(Toy(True), max_preemptions=6, hash_window=None)
    assert bare.violation is None and hashed.violation is None and bare.covered and hashed.covered
    assert hashed.executions < bare.executions
    every = search.exhaustive(Toy(True), max_preemptions=6, hash_window=None, sleep_sets=False)
    assert every.states == hashed.states == 35


# ------------------------------------------------------------------ the kernel scenarios
def fast_mode_scenario():
    """Linux 3.0, one CPU: one thread munmaps what it touched while another thread of it waits to run."""
    return scenario([{"name": "a", "size": "16KiB", "populate": True}],
                    [{"cpu": 0, "program": [{"op": "touch", "vma": "a", "write": False}, {"op": "munmap", "vma": "a"},
                                            {"op": "exit"}]},
                     {"cpu": 0, "program": [{"op": "touch", "vma": "a", "write": False}]}], cpus=1, latency=False)


def test_fast_mode_bug_is_found_with_one_preemption_and_told_in_kernel_terms():
    target = KernelTarget(fast_mode_scenario(), Linux30)
    report = run_search(target, max_preemptions=1)
    assert report["violation"]["kind"] == "stale-tlb-use-after-free"
    assert len(report["schedule"]) == 1            # one deviation: the switch at cond_resched()
    story = "\n".join(report["story"])
    assert "preempts app/0 in zap_pmd_range" in story
    assert "frees pfn" in story and "!! CPU 0's TLB still maps" in story
    assert "takes ptl@" in story and "drops ptl@" in story and "clears PTE" in story
    assert "VIOLATION stale-tlb-use-after-free" in story
    assert "hits the TLB: pfn 4 -- STALE: that frame was freed at step" in story      # app/1 reads it
    assert report["stale_use"]["cpu"] == 0 and report["stale_use"]["op"] == "load"


def test_no_preemption_no_bug_and_the_bound_is_stated():
    """With no preemption the fast-mode window is never exploited: the search is complete and clean."""
    report = run_search(KernelTarget(fast_mode_scenario(), Linux30), max_preemptions=0)
    assert report["violation"] is None and report["covered"]


def test_a_replayed_story_is_byte_identical():
    target = KernelTarget(fast_mode_scenario(), Linux30)
    report = run_search(target, max_preemptions=1)
    again = tell(target, report["schedule"])
    assert again["lines"] == report["story"]
    assert tell(KernelTarget(fast_mode_scenario(), Linux30), report["schedule"])["lines"] == report["story"]


def _racy_madvise():
    """Two threads on two CPUs MADV_DONTNEED one range they both wrote (Linux 3.0 had the 2017 race)."""
    prog = [{"op": "touch", "vma": "buf"}, {"op": "madvise", "vma": "buf"}, {"op": "touch", "vma": "buf"}]
    return scenario([{"name": "buf", "size": "8KiB", "populate": True}],
                    [{"cpu": 0, "program": prog}, {"cpu": 1, "program": prog}], cpus=2, latency=False)


def test_shrinking_never_grows_a_schedule_and_keeps_it_failing():
    """Random schedules deviate from the default at many points; delta debugging keeps a subsequence that
    still fails the same way, and each single deviation left is needed."""
    target = KernelTarget(_racy_madvise(), Linux30)
    for seed in range(3):
        res = search.random_walk(target, budget=500, seed=seed)
        assert res.violation is not None
        found = search.to_deviations(target, res.trace)
        small = search.shrink(target, found, res.violation["kind"])
        assert len(small) <= len(found) and all(d in found for d in small)
        _, out = search.replay(target, small)
        assert out.violation["kind"] == res.violation["kind"]
        for i in range(len(small)):
            _, out = search.replay(target, small[:i] + small[i + 1:])
            assert out.violation is None or out.violation["kind"] != res.violation["kind"]


def test_pct_and_random_are_reproducible_from_their_seed():
    target = KernelTarget(_racy_madvise(), Linux30)
    for strategy in (search.pct, search.random_walk):
        a, b = strategy(target, budget=200, seed=7), strategy(target, budget=200, seed=7)
        assert a.violation is not None and a.trace == b.trace and a.executions == b.executions


def test_pct_finds_the_madvise_race():
    res = search.pct(KernelTarget(_racy_madvise(), Linux30), depth=3, budget=2000, seed=1)
    assert res.violation is not None and res.violation["kind"] == "stale-tlb-after-return"


# ------------------------------------------------------------------ the command line
def cli(*args, cwd=ROOT):
    return cli_here(*args, cwd=cwd)


def _toml(tmp_path) -> Path:
    """The fast-mode scenario as a TOML file."""
    p = tmp_path / "fast-mode.toml"
    p.write_text("""
name = "fast-mode"
[machine]
cpus = 1
policy = "3.0"
[[process]]
name = "app"
  [[process.vma]]
  name = "a"
  size = "16KiB"
  populate = true
  [[process.vma]]
  name = "w"
  size = "8KiB"
  populate = true
  [[process.thread]]
  cpu = 0
  program = [ { op = "touch", vma = "a", write = false }, { op = "munmap", vma = "a" }, { op = "exit" } ]
  [[process.thread]]
  cpu = 0
  program = [ { op = "touch", vma = "w" } ]
""")
    return p


def test_explore_exit_codes_replay_file_and_replay(tmp_path):
    sc = _toml(tmp_path)
    out = tmp_path / "bug.json"
    r = cli("explore", str(sc), "--out", str(out))
    assert r.returncode == 1, r.stderr
    assert "VIOLATION stale-tlb-use-after-free" in r.stdout and "preempts app/0 in zap_pmd_range" in r.stdout
    doc = json.loads(out.read_text())
    assert doc["format"] == "mmugather-replay/1" and doc["policy"] == "3.0" and doc["schedule"]
    first = cli("replay", str(out))
    second = cli("replay", str(out))
    assert first.returncode == 1 and first.stdout == second.stdout
    assert "story identical to the one recorded" in first.stdout
    clean = cli("explore", str(sc), "--without-fix", "tlb_fast_mode", "--json")
    assert clean.returncode == 0, clean.stderr
    doc = json.loads(clean.stdout)
    assert doc["violation"] is None and doc["covered"] and doc["bound"]["max_preemptions"] == 2


def test_replay_can_write_a_trace(tmp_path):
    sc = _toml(tmp_path)
    out = tmp_path / "bug.json"
    assert cli("explore", str(sc), "--out", str(out)).returncode == 1
    trace = tmp_path / "trace.json"
    r = cli("replay", str(out), "--trace", str(trace))
    assert r.returncode == 1
    from mmugather.report.trace import validate_trace
    events = json.loads(trace.read_text())
    assert validate_trace(events) == []
    names = {e.get("name") for e in (events["traceEvents"] if isinstance(events, dict) else events)}
    assert "zap_pte_range" in names and "violation: stale-tlb-use-after-free" in names


def test_explore_bad_input_is_one_line_and_exit_2(tmp_path):
    sc = str(_toml(tmp_path))
    for args, text in [
        (["explore", sc, "--policy", "9.9"], "unknown policy '9.9'"),
        (["explore", sc, "--without-fix", "nope"], "has no fix nope"),
        (["explore", sc, "--max-preemptions", "-1"], "--max-preemptions"),
        (["explore", "no-such.toml"], "no-such.toml"),
        (["replay", str(tmp_path / "missing.json")], "cannot read replay file"),
        (["bugs", "run", "no-such-bug"], "unknown bug 'no-such-bug'"),
    ]:
        r = cli(*args)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert text in r.stderr and len(r.stderr.strip().splitlines()) == 1, (args, r.stderr)


def test_a_file_that_is_not_a_replay_is_refused(tmp_path):
    p = tmp_path / "x.json"
    p.write_text(json.dumps({"format": "something else"}))
    r = cli("replay", str(p))
    assert r.returncode == 2 and "not a replay file" in r.stderr


def test_a_frame_is_located_by_how_often_it_was_resumed():
    """States that differ only in how far a frame has run (no locals, no memory written; clocks are not part
    of a state) have different fingerprints: FrameStack.steps stands where the bytecode offset stood."""
    def body():
        yield 1
        yield 1
        yield 1
    metrics = Metrics(1)
    engine = Engine(1, Costs(), "none", metrics, Invariants(metrics), scheduler=Controlled())
    engine.arch = _NoArch()
    engine.rcu = Rcu(engine.cpus, metrics)
    engine.spawn("t", 0, "user", lambda c, t: body())
    fingerprint = Fingerprinter(engine).fingerprint
    seen = []

    def choose(enabled):
        seen.append(fingerprint())
        return enabled[0]
    engine.scheduler.chooser = choose
    engine.run()
    assert len(seen) == 4 and len(set(seen)) == 4


def test_fingerprints_from_resume_counts_never_merge_states_at_different_yield_points():
    """The fingerprint locates each frame by how often it was resumed (FrameStack.steps), not by its bytecode
    offset. Cross-checked against the offsets on the fast-mode scenario, both variants: two states with one
    fingerprint always have every frame at the same yield point (no state is pruned that is not revisited)."""
    from mmugather.explore.state import simulation_fingerprinter

    seen: dict = {}
    merged = []

    class Checked(KernelTarget):
        def build(self):
            sim = super().build()
            fingerprint = simulation_fingerprinter(sim).fingerprint

            def checked():
                h = fingerprint()
                where = tuple((t.tid, tuple((g.gi_code.co_name, g.gi_frame.f_lasti if g.gi_frame else None)
                                            for g in t.stack)) for _, t in sorted(sim.engine.tasks.items()))
                if seen.setdefault(h, where) != where:
                    merged.append((seen[h], where))
                return h
            sim.fingerprint = checked
            return sim

    for fixes in ((), ("tlb_fast_mode",)):
        seen.clear()
        res = search.exhaustive(Checked(fast_mode_scenario(), Linux30, without_fixes=fixes), max_preemptions=2,
                                hash_window=None)
        assert res.states > 100 and not merged


def test_framestack_counts_resumptions_at_every_step():
    """A watched task's FrameStack counts each frame's resumptions at every scheduling point of a
    controlled run, with and without a listener, calls that return within a step included (a return
    resumes the caller, a call starts at 1)."""
    def leaf():
        yield 1
        return 2

    def quick():
        return 3
        yield  # a generator

    def mid():
        x = yield leaf()
        y = yield quick()              # returns within the step that called it
        yield 1
        return x + y

    def body():
        yield mid()
        yield 1
        yield mid()

    class Listener:
        def pushed(self, stack, gen):
            pass

        def popped(self, stack, gen):
            pass

    def counts(heard: bool) -> list:
        metrics = Metrics(1)
        engine = Engine(1, Costs(), "none", metrics, Invariants(metrics), scheduler=Controlled())
        engine.arch = _NoArch()
        engine.rcu = Rcu(engine.cpus, metrics)
        stack = engine.spawn("t", 0, "user", lambda c, t: body()).watch()
        if heard:
            stack.listeners.append(Listener())
        seen = []

        def choose(enabled):
            seen.append(tuple(stack.steps))
            return enabled[0]
        engine.scheduler.chooser = choose
        engine.run()
        return seen
    inline = counts(False)
    assert inline == counts(True)
    # step 1: body calls mid, mid calls leaf, leaf yields; step 2: leaf returns into mid (2), mid calls
    # quick (1), quick returns into mid (3), mid yields; step 3: mid resumes (4) and returns into body (2)
    assert inline[:4] == [(0,), (1, 1, 1), (1, 3), (2,)]


def test_a_search_leaves_the_collector_as_it_found_it():
    """The searches freeze the heap that was there before them (gc.freeze()) and unfreeze it after; one
    frozen by the caller stays frozen."""
    import gc
    target = KernelTarget(fast_mode_scenario(), Linux30)
    assert gc.get_freeze_count() == 0
    search.exhaustive(target, max_preemptions=0)
    search.random_walk(target, budget=2)
    assert gc.get_freeze_count() == 0
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        search.exhaustive(target, max_preemptions=0)
        assert gc.get_freeze_count() == frozen
    finally:
        gc.unfreeze()
