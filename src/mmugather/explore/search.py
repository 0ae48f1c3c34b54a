"""Search strategies over the schedules of a controlled machine, and the schedule format they share.

A *target* builds a fresh machine for every execution (`target.build()`: an object with `engine`, an
Engine whose scheduler is a Controlled (explore/controlled.py); `invariants`; `finish()`, the end-of-run
checks; `fingerprint()`, a state hash).
Every search re-executes from the initial state (stateless search, as CHESS does).

Preemptions are counted as in CHESS: choosing another task while the task that took the last step could
go on. A task whose last step was user work (`Compute`) or a sleep has yielded: switching away from it is
free and continuing it is the preemption. Taking an interrupt is never a preemption.

The *default* choice at a point is the non-preemptive one: the last task if it can go on and did not yield,
else pending interrupts, else the next task after it by tid. A schedule is written as the
deviations from the default: `[[step, actor], ...]`; replaying runs the default everywhere else.
"""
from __future__ import annotations

import gc
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

from mmugather.explore.controlled import RESCHED, StepError, actor_cpu
from mmugather.machine.engine import DeadlockError


def default_choice(enabled: list[int], last: int | None, yielded: bool) -> int:
    """The non-preemptive choice (enabled is ordered: interrupts, then tasks by tid, then ticks): the last
    task goes on unless it yielded or cannot; otherwise pending interrupts are taken; otherwise the next
    task after the last one by tid. A tick is never the default (a task of its CPU is always enabled)."""
    if last is not None and not yielded and last in enabled:
        return last
    first = enabled[0]
    if first < 0 or last is None:
        return first
    for a in enabled:
        if a > last:
            return a
    return first


def preemption_cost(x: int, enabled: list[int], last: int | None, yielded: bool) -> int:
    """1 if choosing actor x here is a preemption, else 0. A tick that sets need_resched is one (the switch
    it causes at the next preemption point is then free: the current task is not offered there)."""
    if x <= RESCHED:
        return 1
    if x < 0 or last is None:
        return 0
    if x == last:
        return 1 if yielded and any(a >= 0 and a != last for a in enabled) else 0
    return 0 if yielded or last not in enabled else 1


def independent(f, g) -> bool:
    """Two step footprints (read mask, write mask) that commute: neither writes what the other touches."""
    return not (f[1] & (g[0] | g[1]) or g[1] & f[0])


class Target(Protocol):
    """What a search explores (explore/target.py's KernelTarget): each build() is a fresh machine whose
    engine's scheduler is a Controlled, ready to run."""

    def build(self) -> Any: ...


@dataclass
class Outcome:
    """How one execution ended."""
    violation: dict | None
    trace: list[int]                  # every actor chosen, in order
    finished: bool                    # every task exited (not stopped by the search)


@dataclass
class Result:
    """What a search found and how much it covered."""
    strategy: str
    violation: dict | None = None
    trace: list[int] | None = None               # every actor of the failing execution
    executions: int = 0
    transitions: int = 0
    states: int = 0
    cut: int = 0                                  # executions stopped at the depth bound
    pruned: int = 0                               # executions stopped at a state seen before
    slept: int = 0                                # branches not taken: asleep (sleep sets, a reordering of
                                                  # independent steps explored already)
    seconds: float = 0.0
    covered: bool = False                         # the whole bound was searched
    bound: dict = field(default_factory=dict)
    max_depth_seen: int = 0


class Budget(Exception):
    """The execution budget ran out."""


def run_machine(m, chooser, *, track: bool = False, log: list | None = None):
    """Run a freshly built machine under `chooser`, then the end-of-run checks if every task exited.
    Returns (the first violation as a dict, or None; whether every task exited)."""
    eng = m.engine
    ctl = eng.scheduler
    ctl.chooser = chooser
    ctl.track = track
    ctl.footprint.log = log
    inv = m.invariants
    try:
        eng.run()
    except DeadlockError as e:
        return {"kind": "deadlock", "cpu": -1, "detail": str(e)}, False
    except StepError as e:                   # the model's own assertion, or a plugin raising, at a step
        cpu = actor_cpu(eng, e.actor).id
        if isinstance(e.error, AssertionError):
            return {"kind": "assertion", "cpu": cpu, "detail": str(e.error)}, False
        return {"kind": "exception", "cpu": cpu, "detail": str(e)}, False
    finished = eng.user_alive == 0 or eng.halted
    if finished and not inv.violations:
        m.finish()
    return (dict(inv.violations[0]) if inv.violations else None), finished


@contextmanager
def _search_heap() -> Iterator[None]:
    """While a search runs (a decorator of the searches), the collector's full passes leave out every
    object that existed before it (gc.freeze(): the interpreter's modules, the target, the caller's data):
    each execution builds a machine whose cycles only the collector frees, and a full pass then scans the
    search's own objects only. Unfrozen afterwards (what became garbage meanwhile is collected later, as
    usual); a caller that froze objects itself, or a search within a search, is left as it is."""
    if gc.get_freeze_count():
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


class Progress:
    """Called by the searches now and then; the CLI draws it on stderr."""

    def update(self, result: Result, depth: int) -> None:
        pass


class _Clock:
    def __init__(self, progress: Progress | None, result: Result) -> None:
        self.progress = progress
        self.result = result
        self.t0 = time.perf_counter()
        self.next = self.t0 + 0.1

    def tick(self, depth: int) -> None:
        r = self.result
        if self.progress is not None:
            now = time.perf_counter()
            if now >= self.next:
                r.seconds = now - self.t0
                self.progress.update(r, depth)
                self.next = now + 0.1

    def done(self) -> None:
        self.result.seconds = time.perf_counter() - self.t0


# ----------------------------------------------------------------------------- replay by deviations
def replay(target, schedule, *, max_steps: int = 100_000):
    """Run one schedule (deviations [[step, actor], ...]: the default everywhere else), stopping at the
    first violation. Returns (machine, Outcome)."""
    deviations = {int(st): int(a) for st, a in schedule}
    trace: list[int] = []
    m = target.build()
    ctl, violations = m.engine.scheduler, m.invariants.violations

    def choose(enabled):
        if violations or len(trace) >= max_steps:
            return None
        a = deviations.get(len(trace))
        if a is None or a not in enabled:
            a = default_choice(enabled, ctl.last_task, ctl.yielded)
        trace.append(a)
        return a
    violation, finished = run_machine(m, choose)
    return m, Outcome(violation, trace, finished)


def to_deviations(target, trace: list[int]) -> list[list[int]]:
    """The deviations from the default that make a run follow `trace`."""
    m = target.build()
    ctl = m.engine.scheduler
    out: list[list[int]] = []
    steps = iter(enumerate(trace))

    def choose(enabled):
        i, a = next(steps, (None, None))
        if i is not None and a != default_choice(enabled, ctl.last_task, ctl.yielded):
            out.append([i, a])  # type: ignore[list-item]  # a: the trace's actor, as i is not None
        return a
    run_machine(m, choose)
    return out


# ----------------------------------------------------------------------------- exhaustive
# State hashing pays right after an execution's branch point, where reordered steps converge with what an
# earlier execution saw: on the catalogue scenarios three prunes in four happen within 4 steps of it, and a
# fingerprint costs about as much as 20 steps, so states are hashed there only.
HASH_WINDOW = 4
_DEPENDENT = (-1, -1)            # a footprint dependent on every other: no step sleeps


class _Node:
    """A scheduling point with alternatives: the schedule reaching it, its sleep set and the footprints
    of the children explored from it so far."""

    __slots__ = ("prefix", "sleep", "used", "done")

    def __init__(self, prefix: tuple, sleep: dict, used: int) -> None:
        self.prefix = prefix
        self.sleep = sleep
        self.used = used                # preemptions used to reach it
        self.done: dict = {}


class _Tick:
    """Where a scheduler tick could have come before the step just taken: the point's node (or the schedule
    and sleep set reaching it), the tick actor and the preemptions used there. A tick changes nothing but
    its CPU's need_resched, so it is queued only if that step read the flag (see `_Execution.choose`)."""

    __slots__ = ("node", "prefix", "sleep", "actor", "used")

    def __init__(self, node: _Node | None, prefix: tuple, sleep: dict, actor: int, used: int) -> None:
        self.node, self.prefix, self.sleep, self.actor, self.used = node, prefix, sleep, actor, used


@dataclass
class _Exhaustive:
    """What the executions of one exhaustive search share: the bounds, the queues of branches by
    preemptions used (`levels`), the states seen and the result."""
    target: Target
    res: Result
    clock: _Clock
    max_preemptions: int
    max_depth: int
    window: int                          # steps after the branch point within which states are hashed
    sleep_sets: bool
    levels: list = field(default_factory=list)
    visited: dict = field(default_factory=dict)
    seen_states: set = field(default_factory=set)


@_search_heap()
def exhaustive(target, *, max_preemptions: int = 2, max_depth: int = 10_000, budget: int = 100_000,
               hash_states: bool = True, hash_window: int | None = HASH_WINDOW, sleep_sets: bool = True,
               progress: Progress | None = None) -> Result:
    """Every schedule with at most `max_preemptions` preemptions, by iterative context bounding
    (Musuvathi & Qadeer, PLDI 2007: all schedules with 0 preemptions, then 1, ...), with sleep sets
    (Godefroid 1996) over step footprints and, when `hash_states`, pruning states seen before with no
    fewer preemptions left, no more depth used and no smaller sleep set. States are hashed within
    `hash_window` steps of each execution's branch point (None: at every scheduling point). `sleep_sets`
    off explores every interleaving (to check the reduction against)."""
    res = Result("exhaustive", bound={"max_preemptions": max_preemptions, "max_depth": max_depth,
                                      "budget": budget})
    window = (max_depth + 1 if hash_window is None else hash_window) if hash_states else 0
    search = _Exhaustive(target, res, _Clock(progress, res), max_preemptions, max_depth, window, sleep_sets,
                         levels=[[] for _ in range(max_preemptions + 2)])
    search.levels[0].append((None, None, 0))
    try:
        for level in range(max_preemptions + 1):
            for item in search.levels[level]:
                stack = [item]
                while stack:
                    if res.executions >= budget:
                        raise Budget
                    if _Execution(search, stack.pop(), stack).run():
                        search.clock.done()
                        return res
            search.levels[level] = []
        res.covered = True
    except Budget:
        res.covered = False
    search.clock.done()
    return res


class _Execution:
    """One branch of the exhaustive search: replay the node's prefix, take the branch's actor, then go on
    with non-preemptive choices, queueing the alternatives met on the way (`choose` is the chooser).
    `step` is the index of the next choice; `here`, `prev` and `before` are the node of the last inline
    choice (None if it had no alternatives), that choice and its sleep set."""

    def __init__(self, search: _Exhaustive, item: tuple, stack: list) -> None:
        self.search = search
        self.stack = stack
        self.node, self.actor, self.used = item
        self.prefix: tuple = self.node.prefix + (self.actor,) if self.node is not None else ()
        self.machine = search.target.build()
        self.control = self.machine.engine.scheduler
        self.control.count_frames = search.window > 0      # no state hashed: no frame counts to keep
        self.violations = self.machine.invariants.violations
        self.sched: list[int] = list(self.prefix)
        self.step = max(len(self.prefix) - 1, 0)
        self.here: _Node | None = None
        self.prev: int | None = None
        self.before: dict = {}
        self.tick: _Tick | None = None      # a tick that could have preceded the step just taken

    def run(self) -> bool:
        """Execute the branch and account for it. True when a violation was found."""
        res = self.search.res
        self.control.prefix = self.prefix[:-1]
        violation, _ = run_machine(self.machine, self.choose, track=not self.prefix)
        self._queue_tick()
        res.executions += 1
        res.transitions += self.step
        res.max_depth_seen = max(res.max_depth_seen, self.step)
        res.states = len(self.search.seen_states)
        self.search.clock.tick(self.step)
        if violation is None:
            return False
        res.violation = violation
        res.trace = self.sched
        return True

    def choose(self, enabled: list[int]) -> int | None:
        d, n = self.step, len(self.prefix)
        if d < n:                       # the branch itself (the engine replayed the prefix before it)
            a = self.prefix[d]
            if a not in enabled:
                raise RuntimeError(f"replay diverged at step {d}: actor {a} not in {enabled}")
            self.control.track = True
            self.step = d + 1
            node = self.node
            if node is not None and a > RESCHED:
                self._note_tick(enabled, a, node, node.prefix, node.sleep, node.used)
            return a
        if self.tick is not None:
            self._queue_tick()
        if self.violations:
            return None
        if d != n and self.here is None and not self.before:
            sleep = {}                  # no choice before this step, nobody asleep: nothing to record
        else:
            sleep = self._sleep_set(d == n)
        search = self.search
        if d >= search.max_depth:
            search.res.cut += 1
            return None
        last, yielded = self.control.last_task, self.control.yielded
        if d - n < search.window and self._seen_before(d, sleep, last, yielded):
            return None
        if len(enabled) == 1 and not sleep:        # one actor: no choice, no preemption (_take, inline)
            a = enabled[0]
            self.here, self.prev, self.before = None, a, sleep
            self.sched.append(a)
            self.step = d + 1
            return a
        return self._branch(enabled, sleep, last, yielded)

    def _sleep_set(self, at_branch: bool) -> dict:
        """Record the footprint of the step just taken; return who sleeps after it (sleep sets). Not called
        when there is nothing to record (no choice before the step, nobody asleep: `choose` knows)."""
        c = self.control
        fp = (c.fp_read, c.fp_write) if self.search.sleep_sets else _DEPENDENT
        if not at_branch:
            if self.here is not None:
                self.here.done[self.prev] = fp
            return {u: f for u, f in self.before.items() if u != self.prev and independent(f, fp)}
        node, actor = self.node, self.actor
        if node is None:
            return {}
        node.done[actor] = fp           # the branch just taken: who stays asleep after it
        sleep = {u: f for u, f in node.sleep.items() if u != actor and independent(f, fp)}
        for u, f in node.done.items():
            if u != actor and independent(f, fp):
                sleep[u] = f
        return sleep

    def _seen_before(self, d: int, sleep: dict, last, yielded: bool) -> bool:
        """Hash the state; True (and counted as pruned) if it was reached before with no fewer preemptions
        left, no more depth used and no smaller sleep set."""
        search = self.search
        h = self.machine.fingerprint()
        search.seen_states.add(h)
        key = (h, last, yielded)
        asleep = frozenset(sleep)
        entries = search.visited.get(key)
        if entries is None:
            search.visited[key] = [(self.used, d, asleep)]
            return False
        for u0, d0, s0 in entries:
            if u0 <= self.used and d0 <= d and s0 <= asleep:
                search.res.pruned += 1
                return True
        entries.append((self.used, d, asleep))
        return False

    def _branch(self, enabled: list[int], sleep: dict, last, yielded: bool) -> int | None:
        """Go on with the first choice that costs no preemption (none: stop); queue the others, each at the
        level of the preemptions it uses."""
        default = default_choice(enabled, last, yielded)
        inline = None
        alts = []
        for x in (default, *[a for a in enabled if a != default]):
            if x <= RESCHED:                # a tick: queued after the step, if the step reads need_resched
                continue
            cost = preemption_cost(x, enabled, last, yielded)
            if self.used + cost > self.search.max_preemptions:
                continue
            if x in sleep:
                self.search.res.slept += 1
                continue
            if inline is None and cost == 0:
                inline = x
            else:
                alts.append((x, cost))
        here = None
        if alts:
            here = _Node(tuple(self.sched), sleep, self.used)
            for x, cost in reversed(alts):
                if cost:
                    self.search.levels[self.used + cost].append((here, x, self.used + cost))
                else:
                    self.stack.append((here, x, self.used))
        if inline is None:
            return None
        if enabled[-1] <= RESCHED:          # ticks are listed last
            self._note_tick(enabled, inline, here, tuple(self.sched), sleep, self.used)
        return self._take(here, inline, sleep)

    def _note_tick(self, enabled: list[int], actor: int, node: _Node | None, prefix: tuple, sleep: dict,
                   used: int) -> None:
        """Before task `actor` steps: remember the tick of its CPU if it is enabled here, not asleep and
        within the bound. It changes nothing but need_resched, so choosing it anywhere between two reads
        of the flag ends alike; it is explored right before a step that reads it (`_queue_tick`)."""
        if actor < 0 or used + 1 > self.search.max_preemptions:
            return
        tick = RESCHED - self.machine.engine.tasks[actor].cpu
        if tick in enabled and tick not in sleep:
            self.tick = _Tick(node, prefix, sleep, tick, used)

    def _queue_tick(self) -> None:
        """The step just taken read need_resched: queue the tick that could have come before it."""
        t = self.tick
        if t is None:
            return
        self.tick = None
        if self.control.read_resched:
            node = t.node if t.node is not None else _Node(t.prefix, t.sleep, t.used)
            self.search.levels[t.used + 1].append((node, t.actor, t.used + 1))

    def _take(self, here: _Node | None, actor: int, sleep: dict) -> int:
        self.here, self.prev, self.before = here, actor, sleep
        self.sched.append(actor)
        self.step += 1
        return actor


# ----------------------------------------------------------------------------- PCT and random
@_search_heap()
def pct(target, *, depth: int = 3, budget: int = 1000, seed: int = 0, max_depth: int = 10_000,
        progress: Progress | None = None) -> Result:
    """Probabilistic concurrency testing (Burckhardt, Kothari, Musuvathi, Nagarakatte, ASPLOS 2010): each
    run gives the actors random distinct priorities above `depth`, picks depth-1 change points among the
    k steps of a run (k: the longest run seen so far), always runs the highest-priority enabled actor,
    and at the i-th change point drops the running actor's priority to i. A bug of depth d is found by
    one run with probability at least 1/(n k^(d-1))."""
    rng = random.Random(seed)
    res = Result("pct", bound={"depth": depth, "budget": budget, "seed": seed, "max_depth": max_depth})
    clock = _Clock(progress, res)
    k = _default_length(target, max_depth)
    for _ in range(budget):
        m = target.build()
        eng = m.engine
        violations = m.invariants.violations
        actors = sorted(eng.tasks) + [-1 - c.id for c in eng.cpus]
        prios = list(range(depth, depth + len(actors)))
        rng.shuffle(prios)
        prio = dict(zip(actors, prios))
        changes = {}
        for i, pt in enumerate(sorted(rng.sample(range(1, k + 1), min(depth - 1, k))), start=1):
            changes[pt] = i
        trace: list[int] = []
        fresh = [depth + len(actors)]

        def choose(enabled, trace=trace, prio=prio, changes=changes, violations=violations, fresh=fresh,
                   actors=actors):
            if violations or len(trace) >= max_depth:
                return None
            for a in enabled:
                if a not in prio:
                    if a <= RESCHED:         # a tick: a random priority among the actors' (above the changes)
                        prio[a] = depth + rng.random() * len(actors)
                    else:                    # a task forked meanwhile: above every other
                        prio[a] = fresh[0]
                        fresh[0] += 1
            a = max(enabled, key=prio.__getitem__)
            low = changes.get(len(trace) + 1)
            if low is not None:
                prio[a] = low
                a = max(enabled, key=prio.__getitem__)
            trace.append(a)
            return a
        if _finish_run(m, choose, trace, res, clock, max_depth):
            return res
        k = max(k, len(trace))
    res.covered = False
    clock.done()
    return res


@_search_heap()
def random_walk(target, *, budget: int = 1000, seed: int = 0, max_depth: int = 10_000,
                progress: Progress | None = None) -> Result:
    """Uniformly random schedules: at every point each enabled actor equally likely."""
    rng = random.Random(seed)
    res = Result("random", bound={"budget": budget, "seed": seed, "max_depth": max_depth})
    clock = _Clock(progress, res)
    for _ in range(budget):
        m = target.build()
        violations = m.invariants.violations
        trace: list[int] = []

        def choose(enabled, trace=trace, violations=violations):
            if violations or len(trace) >= max_depth:
                return None
            a = enabled[rng.randrange(len(enabled))] if len(enabled) > 1 else enabled[0]
            trace.append(a)
            return a
        if _finish_run(m, choose, trace, res, clock, max_depth):
            return res
    res.covered = False
    clock.done()
    return res


def _finish_run(m, choose, trace, res, clock, max_depth) -> bool:
    """Run one PCT or random execution; True (and the result filled in) when it found a violation."""
    violation, finished = run_machine(m, choose)
    res.executions += 1
    res.transitions += len(trace)
    res.max_depth_seen = max(res.max_depth_seen, len(trace))
    if not finished and violation is None and len(trace) >= max_depth:
        res.cut += 1
    clock.tick(len(trace))
    if violation is not None:
        res.violation = violation
        res.trace = trace
        clock.done()
        return True
    return False


def _default_length(target, max_depth: int) -> int:
    _, out = replay(target, [], max_steps=max_depth)
    return max(1, len(out.trace))


# ----------------------------------------------------------------------------- shrinking
def shrink(target, schedule: list[list[int]], kind: str, *, max_steps: int = 100_000,
           max_tests: int = 2000) -> list[list[int]]:
    """Delta debugging (Zeller and Hildebrandt, TSE 2002, ddmin) over the deviations of a failing schedule:
    the result is a subsequence (never longer) that still fails with a violation of `kind`, and from which
    no single deviation can be dropped."""
    tests = [0]

    def fails(devs) -> bool:
        tests[0] += 1
        _, out = replay(target, devs, max_steps=max_steps)
        return out.violation is not None and out.violation["kind"] == kind

    devs = list(schedule)
    if not fails(devs):
        return devs
    n = 2
    while len(devs) >= 2 and tests[0] < max_tests:
        size = len(devs)
        chunks = [devs[i * size // n:(i + 1) * size // n] for i in range(n)]
        reduced = False
        for chunk in chunks:
            if chunk and fails(chunk):
                devs, n, reduced = chunk, 2, True
                break
        if not reduced:
            for i in range(n):
                rest = [d for j, ch in enumerate(chunks) if j != i for d in ch]
                if len(rest) < size and fails(rest):
                    devs, n, reduced = rest, max(n - 1, 2), True
                    break
        if not reduced:
            if n >= size:
                break
            n = min(2 * n, size)
    if len(devs) == 1 and fails([]):
        return []
    return devs
