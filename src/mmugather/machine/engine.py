"""The simulated SMP machine's engine: tasks on CPUs, the event queue, preemption, IPIs and locks.

Every task is a generator. It yields an `int` to spend that many simulated nanoseconds, or a request
(kernel/locking.py, kernel/smp.py) when it touches scheduler state: a lock, an IPI, a preemption point, a
sleep. Each yield is a point where another CPU may interleave. A path calls another path by yielding the
callee's generator: the engine runs it as a nested call on the task's stack (a trampoline) and sends its
return value back, so a step costs the same however deep the call chain (`yield from` also works, but
resumes every frame of the chain at every step). A task that yields anything else, or a negative int,
breaks the contract: TaskContractError names it.

One engine, composed. What varies is handed in, never swapped in later:
- the `Scheduler` decides which CPU steps next. `ClockOrder` (the default) runs the CPU whose clock is
  earliest until its clock passes the next pending event (another CPU's clock or a timer); ties go to
  the entry queued first (a counter that only grows, as in SimPy), so a run is a total, repeatable order.
  The explorer's scheduler (explore/controlled.py) asks a chooser at every step instead.
- `EngineObserver`s (the tracer, the explorer's footprint counter, the soft-lockup watchdog) are told of
  steps, context switches, preemption and PTE-lock spans, cond_resched()/might_sleep() points, IPIs and
  spawns. With none attached the engine calls none: `step` is `_run_cpu` itself, and the few hooks outside
  the step loop test one attribute.
- tick hooks (`on_tick`): callbacks a design registers (a policy or its arch, from its constructor) to run
  from sched_tick() on every busy CPU each TICK_NS. No hook registered: no tick is ever queued, so a run
  that registers none has exactly the events it had before the seam existed.
- design events (`note`): a design's own events (LATR's lazy invalidations, ABIS's avoided IPIs), counted
  in the metrics' `design_events` and told to the observers (the tracer draws them).
- a `Lookahead` (optional; Simulation hands in workloads/program.py's ChurnLookahead on its fast path): its
  `run_until` takes queued events straight from the queue, in the queue's order (before each pop of the
  free-running loop, and in run_ahead()), while each is a CPU's whose next steps cannot observe any other
  CPU before its next interaction (its user work ending), making exactly the state changes the steps
  would (as in conservative parallel discrete-event simulation); other events go as usual. Observers see
  every step, so with an observer attached the lookahead is not used. tests/test_lookahead.py checks
  runs with and without it give the same metrics.
- bounds: `max_sim_ns` (simulated time) and `max_steps` (task resumptions in one run) end a runaway run
  with LimitExceeded naming the bound.
Randomness lives in the workload and the allocator, drawn from one seeded `random.Random`.

Preemption models (kernel/Kconfig.preempt):
- `none`: CONFIG_PREEMPT_NONE. A task in the kernel switches only when it sleeps or calls cond_resched()
  (which PREEMPT_NONE kernels honour too).
- `voluntary`: CONFIG_PREEMPT_VOLUNTARY: also at might_sleep() points (might_resched()).
- `full`: CONFIG_PREEMPT: anywhere preempt_count == 0 and interrupts are on.
User mode is always preemptible.
"""
from __future__ import annotations

import functools
import heapq
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from types import GeneratorType
from typing import Any, Protocol

from mmugather.kernel.locking import (
    COND_RESCHED, LOCAL_IRQ_DISABLE, LOCAL_IRQ_ENABLE, MIGHT_SLEEP, PREEMPT_DISABLE, PREEMPT_ENABLE, DowngradeWrite,
    DownRead, DownWrite, MutexLock, MutexUnlock, SpinLock, SpinUnlock, UpRead, UpWrite, _Marker,
)
from mmugather.kernel.sched import INF, P_COND_RESCHED, P_ENABLE, P_MIGHT_SLEEP, P_PLAIN, Elapse
from mmugather.kernel.smp import Compute, Sleep, SmpCallFunctionMany
from mmugather.machine.cpu import COMPUTE, IDLE, IPI_WAIT, RUNNING, SPINNING, Cpu, Task, TaskContractError

__all__ = ["PREEMPT_MODELS", "ClockOrder", "DeadlockError", "Engine", "EngineObserver", "LimitExceeded",
           "Lookahead", "Scheduler", "TaskContractError", "TickHook", "Wakeup"]

PREEMPT_MODELS = ("none", "voluntary", "full")

# a request handler: (cpu, task, request) -> True if the task goes on, False if it blocked or switched
Handler = Callable[[Cpu, Task, Any], bool]
# a scheduler-tick hook (Engine.on_tick): run on CPU c from sched_tick(), spending no simulated time
TickHook = Callable[[Cpu], None]


class DeadlockError(RuntimeError):
    """Every remaining user task is blocked and nothing can wake it."""


class LimitExceeded(RuntimeError):
    """The run passed one of the engine's bounds: `bound` is "max_sim_ns" or "max_steps", `limit` its value."""

    def __init__(self, bound: str, limit: int | None, detail: str) -> None:
        super().__init__(f"{bound}={limit} exceeded: {detail}")
        self.bound = bound
        self.limit = limit


class Scheduler(Protocol):
    """Which CPU takes the next step. `timed`: the engine keeps an event queue ordered by time (False: time
    orders nothing and the engine queues no events). `attach` is called once by the engine's constructor;
    `handlers` returns request handlers that replace the engine's own (how an untimed scheduler turns
    waiting into choices); `run` runs the machine until every user task has exited (or the scheduler stops
    it) and returns the simulated time at the end."""

    timed: bool

    def attach(self, engine: Engine) -> None: ...

    def handlers(self, engine: Engine) -> Mapping[type, Handler]: ...

    def run(self, engine: Engine) -> int: ...


class Lookahead(Protocol):
    """Runs queued events at once, straight from the queue: the events before (t, seq) (time, then queue
    order), while each is a CPU's (other than c) whose next steps nothing another CPU does can reach
    (its user work ending, or its turn after such steps), with exactly the state changes (clocks,
    counters, requests handled, events queued or dropped as stale) the engine's pops and steps would
    make. True: the next event is at or after (t, seq), or none is left; False: the next one is not such
    an event (left queued; nothing changed that its steps will not redo), the engine takes it as usual."""

    def run_until(self, engine: Engine, c: Cpu | None, t: float, seq: float) -> bool: ...

    def reads_table(self, engine: Engine, table: Any) -> bool:
        """May the events run_until() takes read or write the PTEs of `table` (a PteTable)? False: a CPU's
        steps that change only that table's PTEs commute with them (a fast path may make those changes
        after running the events instead of before)."""


class EngineObserver:
    """What the engine tells an observer; every hook does nothing unless overridden. Times are CPU clocks."""

    def attached(self, engine: Engine) -> None:
        """Attached to `engine` (before it runs; tasks may exist already)."""

    def spawned(self, task: Task) -> None:
        """`task` was created."""

    def step(self, c: Cpu) -> None:
        """A step of CPU c begins (its current task resumes, or it takes its IPIs)."""

    def switching(self, c: Cpu) -> None:
        """schedule() on c begins: c.curr is the outgoing task."""

    def switched(self, c: Cpu) -> None:
        """schedule() on c is done: c.curr is the incoming task (None: idle)."""

    def resched_point(self, c: Cpu) -> None:
        """c passed cond_resched() or might_sleep() outside atomic context (c.point says which): a point
        where the task may schedule, if the preemption model honours it."""

    def preempt_off(self, c: Cpu) -> None:
        """c's preempt_count goes from 0 to 1."""

    def preempt_on(self, c: Cpu) -> None:
        """c's preempt_count is back to 0."""

    def ptl_taken(self, c: Cpu, lock) -> None:
        """c takes its first PTE lock."""

    def ptl_dropped(self, c: Cpu, t: int) -> None:
        """c dropped its last PTE lock at time t."""

    def ipi(self, c: Cpu, v: SmpCallFunctionMany) -> SmpCallFunctionMany:
        """c sends `v` (targets not empty); returns the request to send (the tracer wraps its function)."""
        return v

    def event(self, c: Cpu, name: str, args: dict) -> None:
        """A design noted event `name` on CPU c (Engine.note): e.g. a lazy invalidation."""

    def run_ended(self) -> None:
        """The run is over (returned or raised)."""


class _Observers(EngineObserver):
    """Several observers, told in the order attached."""

    def __init__(self, observers: list[EngineObserver]) -> None:
        self.all = observers

    def attached(self, engine):
        for o in self.all:
            o.attached(engine)

    def spawned(self, task):
        for o in self.all:
            o.spawned(task)

    def step(self, c):
        for o in self.all:
            o.step(c)

    def switching(self, c):
        for o in self.all:
            o.switching(c)

    def switched(self, c):
        for o in self.all:
            o.switched(c)

    def resched_point(self, c):
        for o in self.all:
            o.resched_point(c)

    def preempt_off(self, c):
        for o in self.all:
            o.preempt_off(c)

    def preempt_on(self, c):
        for o in self.all:
            o.preempt_on(c)

    def ptl_taken(self, c, lock):
        for o in self.all:
            o.ptl_taken(c, lock)

    def ptl_dropped(self, c, t):
        for o in self.all:
            o.ptl_dropped(c, t)

    def ipi(self, c, v):
        for o in self.all:
            v = o.ipi(c, v)
        return v

    def event(self, c, name, args):
        for o in self.all:
            o.event(c, name, args)

    def run_ended(self):
        for o in self.all:
            o.run_ended()


class ClockOrder:
    """The free-running machine: the CPU whose clock is earliest runs until its clock passes the next
    pending event; timers fire in time order."""

    timed = True

    def attach(self, engine: Engine) -> None:
        pass

    def handlers(self, engine: Engine) -> Mapping[type, Handler]:
        return {}

    def run(self, engine: Engine) -> int:
        heap = engine.heap
        step = engine.step
        if engine.max_sim_ns is not None:     # an event just past the bound: no step runs beyond it
            engine.timer(engine.max_sim_ns + 1, functools.partial(_time_is_up, engine))
        ahead = engine.lookahead if engine.observer is None else None
        while heap and engine.user_alive > 0 and not engine.halted:
            if ahead is not None:                 # the churning CPUs' events first, as the pops below would
                ahead.run_until(engine, None, INF, INF)
            t, _, c, token, callback = heapq.heappop(heap)
            if t > engine.now:
                engine.now = t
            if c is None:
                callback(t)
            elif token == c.token:
                if callback is not None:
                    callback(t)
                else:
                    step(c, heap[0][0] if heap else INF)
        if engine.user_alive > 0 and not engine.halted:
            blocked = [t for c in engine.cpus for t in ([c.curr] if c.curr else []) + list(c.runqueue)]
            raise DeadlockError(f"{engine.user_alive} user task(s) can never run again: {blocked}")
        return max(engine.now, max(c.clock for c in engine.cpus))


class Wakeup:
    """A timer event that wakes `task` (Engine.wake) at the event's time, unless `tok` is given and the
    task's sleep_token moved on since (it was woken otherwise): a sleep's end, a latency task's first
    wake-up. A class, so that a Lookahead can tell whose wake-up an event is."""

    __slots__ = ("engine", "task", "tok")

    def __init__(self, engine: Engine, task: Task, tok: int | None = None) -> None:
        self.engine, self.task, self.tok = engine, task, tok

    def __call__(self, t: int) -> None:
        if self.tok is None or self.task.sleep_token == self.tok:
            self.engine.wake(self.task, t)


def _time_is_up(engine: Engine, t: int) -> None:
    """The event at max_sim_ns + 1: the run passed its bound (or, with nothing else queued, is stuck)."""
    if not engine.heap:
        raise DeadlockError(f"{engine.user_alive} user task(s) blocked and nothing left to wake them")
    raise LimitExceeded("max_sim_ns", engine.max_sim_ns, f"{engine.user_alive} user task(s) still running")


def _no_event(t, cpu, token, callback) -> None:
    """An untimed scheduler's event queue: nothing is ordered by time."""


def _no_turn(c: Cpu) -> None:
    """An untimed scheduler's queueing of a CPU's turn: the scheduler picks every step."""


def _no_slice(c: Cpu) -> None:
    """An untimed scheduler's time slice: none (its end would be an event; the scheduler preempts)."""


class Engine:
    """Runs tasks on CPUs in simulated time. `arch` provides switch_mm/enter_lazy_tlb for context switches,
    `invariants` is told of every context switch into user mode and of sleeping while atomic; `scheduler`
    picks the steps (default ClockOrder), `observers` watch them (more with `attach`)."""

    TIMESLICE = 3_000_000
    TICK_NS = 4_000_000           # TICK_NSEC at HZ=250, kernel/Kconfig.hz's default

    def __init__(self, ncpus: int, costs, preempt: str, metrics, invariants, *, scheduler: Scheduler | None = None,
                 observers: Iterable[EngineObserver] = (), max_sim_ns: int | None = None,
                 max_steps: int | None = None, lookahead: Lookahead | None = None) -> None:
        if preempt not in PREEMPT_MODELS:
            raise ValueError(f"unknown preemption model {preempt!r}")
        for name, bound in (("max_sim_ns", max_sim_ns), ("max_steps", max_steps)):
            if bound is not None and (bound.__class__ is not int or bound < 1):
                raise ValueError(f"Engine: {name} must be a positive int or None, got {bound!r}")
        self.cpus = [Cpu(i) for i in range(ncpus)]
        self.costs = costs
        self.preempt = preempt
        self.full = preempt == "full"
        self.voluntary = preempt in ("voluntary", "full")
        self.metrics = metrics
        self.invariants = invariants
        self.arch: Any = None
        self.rcu: Any = None
        self.heap: list = []
        self.seq = 0
        self.user_alive = 0
        self.halted = False       # a workload's `halt`: the measurement is over, stop the machine
        self.next_tid = 1
        self.now = 0
        self.tasks: dict[int, Task] = {}
        self.tick_hooks: list[TickHook] = []     # on_tick(); empty: no tick is ever queued
        self.max_sim_ns = max_sim_ns
        self.max_steps = max_steps
        self.steps_left = max_steps + 1 if max_steps is not None else -1    # -1: counts down forever
        self.handlers: dict[type, Handler] = {
            SpinLock: self._spin_lock, SpinUnlock: self._spin_unlock,
            DownRead: self._down_read, DownWrite: self._down_write, UpRead: self._up_read, UpWrite: self._up_write,
            DowngradeWrite: self._downgrade_write,
            MutexLock: self._mutex_lock, MutexUnlock: self._mutex_unlock,
            SmpCallFunctionMany: self._smp_call, Compute: self._compute, Sleep: self._sleep,
            _Marker: self._marker, Elapse: self._elapse,
        }
        self.scheduler: Scheduler = scheduler if scheduler is not None else ClockOrder()
        if not self.scheduler.timed:      # nothing is ordered by time: queue no events, no CPU's turn, no slice
            self._push = _no_event  # type: ignore[method-assign]
            self._push_cpu = _no_turn  # type: ignore[method-assign]
            self._arm_slice = _no_slice  # type: ignore[method-assign]
        self.scheduler.attach(self)
        self.handlers.update(self.scheduler.handlers(self))
        self.observers: list[EngineObserver] = []
        self.observer: EngineObserver | None = None
        self.step = self._run_cpu
        self.lookahead = lookahead
        self.reserved: Cpu | None = None      # run_ahead(): the CPU whose next queueing takes reserved_seq
        self.reserved_seq = 0
        self._done_cbs: list[Callable[[int], None] | None] = [None] * ncpus   # per CPU: its compute's end
        for obs in observers:
            self.attach(obs)

    def attach(self, observer: EngineObserver) -> None:
        """Add an observer (before the run). The engine then steps through `_observed_step`."""
        self.observers.append(observer)
        self.observer = self.observers[0] if len(self.observers) == 1 else _Observers(self.observers)
        self.step = self._observed_step
        observer.attached(self)

    def on_tick(self, hook: TickHook) -> None:
        """Run hook(c) from sched_tick() on every CPU c that is busy, every TICK_NS (before the run; a
        policy or its arch registers from its constructor). The first hook starts the ticks: CPUs that
        run a task are armed then, the others when schedule() gives them one."""
        if not callable(hook):
            raise TypeError(f"Engine.on_tick: {hook!r} is not callable")
        self.tick_hooks.append(hook)
        for c in self.cpus:
            if c.curr is not None and not c.tick_armed:
                self._arm_tick(c)

    def note(self, c: Cpu, name: str, args: dict | None = None) -> None:
        """A design's own event on CPU c (a lazy invalidation, a shootdown without IPIs): counted by name in
        the run's metrics (`design_events`) and told to the observers (the tracer draws an instant)."""
        counts = self.metrics.design_events
        counts[name] = counts.get(name, 0) + 1
        if self.observer is not None:
            self.observer.event(c, name, args or {})

    def _observed_step(self, c: Cpu, horizon: int) -> None:
        self.observer.step(c)  # type: ignore[union-attr]  # attach() set the observer, then this step
        self._run_cpu(c, horizon)

    # ----------------------------------------------------------------- tasks
    def spawn(self, name: str, cpu: int, kind: str, gen_factory, mm=None, process=None) -> Task:
        """Create a task pinned to `cpu`; `gen_factory(cpu_obj, task)` returns its generator."""
        task = Task(self.next_tid, name, cpu, kind, mm, process)
        self.next_tid += 1
        c = self.cpus[cpu]
        task.start(gen_factory(c, task))
        self.tasks[task.tid] = task
        if self.observer is not None:
            self.observer.spawned(task)
        if kind == "user":
            self.user_alive += 1
            if mm is not None:
                mm.users += 1
        if kind == "latency":
            c.latency_task = task
            task.alive = False        # asleep until its first period
            return task
        c.runqueue.append(task)
        if c.state == IDLE:
            self._schedule(c)
            self._push_cpu(c)
        elif not c.slice_armed:
            self._arm_slice(c)
        return task

    # ----------------------------------------------------------------- event queue
    def _push(self, t, cpu, token, callback) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (t, self.seq, cpu, token, callback))

    def queue(self, c: Cpu) -> None:
        """Queue c to step again at its clock (a Lookahead that stops where the engine's step would)."""
        self._push_cpu(c)

    def _push_cpu(self, c: Cpu) -> None:
        c.token += 1
        if self.reserved is c:                  # run_ahead() kept c's place in the order
            self.reserved = None
            heapq.heappush(self.heap, (c.clock, self.reserved_seq, c, c.token, None))
            return
        self._push(c.clock, c, c.token, None)

    def timer(self, t: int, callback) -> None:
        self._push(t, None, 0, callback)

    def horizon(self) -> float:
        """The time of the next queued event (where a step ends)."""
        return self.heap[0][0] if self.heap else INF

    def run_ahead(self, c: Cpu, t: int) -> bool:
        """For a fast path running CPU c's steps at once, at the end of a step that reaches c.horizon at
        time t (c.clock has not moved yet): the engine would now queue c at t and run the events before it.
        Run them here, in the same order, if the lookahead runs each at once (Lookahead.run_until: a
        compute end, or a CPU's turn to step: it then touches only that CPU, never c nor what c's steps
        read). True: all ran, c has nothing to attend
        to and its next event (c.horizon, updated) is after t: c's steps go on, as after the engine
        resumed it (c's attention is as it was: the caller decides whether it would do anything). False: c
        must stop at t; its queueing then takes the place in the order it has now."""
        la = self.lookahead
        if la is None or self.observer is not None or self.reserved is not None:
            return False
        heap = self.heap
        # what c's steps go on with (read uncounted: resched_reads serves the explorer, which never runs ahead)
        attention, need_resched = c.attention, c._need_resched
        self.seq += 1
        seq0 = self.seq
        self.reserved, self.reserved_seq = c, seq0
        clock, c.clock = c.clock, t                      # what the events see: c at the end of its step
        try:
            if not la.run_until(self, c, t, seq0):
                return False
            horizon = heap[0][0] if heap else INF
            if c.attention != attention or c._need_resched != need_resched or horizon <= t:
                return False
            if t > self.now:
                self.now = t
            c.horizon = horizon
            self.reserved = None
            c.token += 1                                 # (queued and resumed: its token moved on)
            return True
        finally:
            c.clock = clock

    def run(self) -> int:
        """Run under the scheduler until every user task has exited. Returns the simulated time at the end."""
        try:
            return self.scheduler.run(self)
        finally:
            if self.observer is not None:
                self.observer.run_ended()

    # ----------------------------------------------------------------- the hot loop
    def _run_cpu(self, c: Cpu, horizon) -> None:
        """The step loop: resume c's current task until its clock reaches `horizon`, it blocks or it is
        switched out (horizon = c.clock: exactly one step, as the controlled scheduler asks)."""
        c.horizon = horizon
        task = c.curr
        if task is None:
            return
        if task.compute_left:
            self._enter_compute(c, task, task.compute_left)
            return
        send, handlers = task.send, self.handlers
        val, task.retval = task.retval, None
        while True:
            if c.attention and self._attend(c):
                task.retval = val
                self._push_cpu(c)
                return
            try:
                v = send(val)
            except StopIteration as e:
                self.steps_left -= 1                 # max_steps, counted inline (the hot path)
                if not self.steps_left:
                    self._past_max_steps(c, task)
                stack = task.stack
                counts = task.counts
                if counts is not None and len(stack) > 1:    # resumptions counted (Task.count_resumptions())
                    caller = stack[-2]                         # the caller resumes
                    counts[caller] = counts.get(caller, 1) + 1
                stack.pop()
                if not stack:
                    self._exit_task(c, task)
                    return
                send = task.send = stack[-1].send
                val = e.value
                continue
            val = None
            if v.__class__ is int and v > 0:       # time: bounded by max_sim_ns, not counted
                c.clock += v
                c.point = P_PLAIN
                if c.clock >= c.horizon:             # (run_ahead() may have moved c's horizon)
                    self._push_cpu(c)
                    return
                continue
            if v.__class__ is GeneratorType:         # a call: counted when it returns
                task.stack.append(v)
                send = task.send = v.send
                continue
            self.steps_left -= 1                     # returns, 0 ns and requests count toward max_steps
            if not self.steps_left:
                self._past_max_steps(c, task)
            if v.__class__ is int:
                if v:
                    raise TaskContractError(f"task {task} on CPU {c.id} yielded {v} ns (negative)")
                c.point = P_PLAIN
            else:
                handler = handlers.get(v.__class__)
                if handler is None:
                    raise TaskContractError(f"task {task} on CPU {c.id} yielded {v!r:.80} ({type(v).__name__}): "
                                            "not an int, a generator or a request")
                if not handler(c, task, v):
                    return                 # the handler blocked or switched the CPU and queued what follows
            if c.clock >= c.horizon:
                self._push_cpu(c)
                return

    def _past_max_steps(self, c: Cpu, task: Task) -> None:
        """The step loop counted one step past max_steps (a return, a 0 ns yield or a request): LimitExceeded."""
        raise LimitExceeded("max_steps", self.max_steps, f"{task} on CPU {c.id} was still going") from None

    def _attend(self, c: Cpu) -> bool:
        """Take arrived IPIs, then preempt if the last yield was a preemption point. True if switched."""
        if c.pending and not c.irqs_off:
            self._take_irqs(c)
        if c.need_resched and c.curr is not None and self.preemptible(c, c.curr):
            self._preempt(c)
            return True
        c.attention = bool(c.pending) or c.need_resched
        return False

    def preemptible(self, c: Cpu, task: Task) -> bool:
        """May c's current task be switched out where its last step left it (the preemption model)?"""
        p = c.point
        return (not task.in_kernel or p == P_COND_RESCHED or (p == P_MIGHT_SLEEP and self.voluntary)
                or (self.full and c.preempt_count == 0 and not c.irqs_off))

    # ----------------------------------------------------------------- scheduling
    def _pick(self, c: Cpu) -> Task | None:
        lt = c.latency_task
        if lt is not None and lt.alive and lt.woken_at >= 0:
            return lt
        return c.runqueue.popleft() if c.runqueue else None

    def _schedule(self, c: Cpu) -> None:
        """schedule(): put the next task on the CPU (or go idle), switching mm as context_switch() does."""
        obs = self.observer
        if obs is None:
            self._context_switch(c)
            return
        obs.switching(c)
        self._context_switch(c)
        obs.switched(c)

    def _context_switch(self, c: Cpu) -> None:
        prev = c.curr
        nxt = self._pick(c)
        c._need_resched = False                      # (the flag's setter: nothing but the store)
        c.attention = bool(c.pending)
        if nxt is None:
            c.curr = None
            c.state = IDLE
            if prev is not None:
                self.arch.enter_lazy_tlb(c)
            self.rcu.note_qs(c)
            return
        if self.tick_hooks and not c.tick_armed:
            self._arm_tick(c)
        if nxt is prev:
            c.state = RUNNING
            return
        c.clock += self.costs.context_switch
        c.curr = nxt
        c.state = RUNNING
        c.point = P_PLAIN
        self.rcu.note_qs(c)
        if nxt.mm is None:
            self.arch.enter_lazy_tlb(c)
        else:
            self.arch.switch_mm(c, nxt.mm)
        if nxt.woken_at >= 0:
            if nxt.kind == "latency":
                self.metrics.sched_latency.append(c.clock - nxt.woken_at)
            nxt.woken_at = -1
        if nxt.kind == "user" and not nxt.in_kernel:
            self.invariants.resume_user(c, nxt)
        if c.runqueue and nxt.kind == "user" and not c.slice_armed:
            self._arm_slice(c)

    def _arm_slice(self, c: Cpu) -> None:
        c.slice_armed = True

        def tick(t, c=c):
            c.slice_armed = False
            if c.runqueue and c.curr is not None and c.curr.kind == "user":
                self._resched_cpu(c, t)
        self.timer(c.clock + self.TIMESLICE, tick)

    def _arm_tick(self, c: Cpu) -> None:
        """Queue c's next tick at the next multiple of TICK_NS (ticks of all CPUs are aligned, as the
        tick_sched timers are by default: kernel/time/tick-sched.c, tick_setup_sched_timer())."""
        c.tick_armed = True
        self.timer((max(c.clock, self.now) // self.TICK_NS + 1) * self.TICK_NS,
                   functools.partial(self.sched_tick, c))

    def sched_tick(self, c: Cpu, t: int) -> None:
        """kernel/sched/core.c sched_tick() (scheduler_tick() before 6.10), as far as designs see it: the
        tick hooks run on c. An idle CPU stops its tick (NO_HZ_IDLE, tick_nohz_idle_stop_tick()) until
        schedule() gives it a task. Model limits: a tick that finds interrupts off is dropped, not held
        until they come back on; the tick spends no simulated time."""
        c.tick_armed = False
        if c.state == IDLE:
            return
        if not c.irqs_off:
            for hook in self.tick_hooks:
                hook(c)
        self._arm_tick(c)

    def _preempt(self, c: Cpu) -> None:
        """preempt_schedule(): the current task goes back on the runqueue, the next one runs."""
        task = c.curr
        assert task is not None, "preempting an idle CPU"
        if task.kind == "user":
            if c.latency_task is not None and c.latency_task.woken_at >= 0:
                c.runqueue.appendleft(task)      # preempted by the RT task: resume first
            else:
                c.runqueue.append(task)          # time slice over: round robin
        self._schedule(c)

    def _resched_cpu(self, c: Cpu, t: int) -> None:
        """resched_curr(): a wake-up wants the CPU. Act at once if the CPU is idle or in user mode."""
        if c.state == IDLE:
            c.clock = max(c.clock, t)
            self._schedule(c)
            self._push_cpu(c)
        elif c.state == COMPUTE:
            task = c.curr
            assert task is not None, "an idle CPU computing"
            task.compute_left = max(0, c.compute_end - t)
            c.clock = max(c.clock, t)
            c.runqueue.appendleft(task) if c.latency_task and c.latency_task.woken_at >= 0 else c.runqueue.append(task)
            self._schedule(c)
            self._push_cpu(c)
        else:
            c.need_resched = True
            c.attention = True

    def wake(self, task: Task, t: int) -> None:
        """try_to_wake_up(): make a sleeping task runnable on its CPU at time t."""
        c = self.cpus[task.cpu]
        task.blocked_on = None
        if task.kind == "latency":
            task.alive = True
            task.woken_at = t
            self._resched_cpu(c, t)
            return
        c.runqueue.append(task)
        if c.state == IDLE:
            c.clock = max(c.clock, t)
            self._schedule(c)
            self._push_cpu(c)
        elif c.curr is not None and c.curr.kind == "user" and not c.slice_armed:
            self._arm_slice(c)

    def _block(self, c: Cpu, task: Task) -> None:
        """The current task sleeps: schedule another one or idle."""
        if task.kind == "latency":
            task.alive = False
        self._schedule(c)
        if c.state != IDLE:
            self._push_cpu(c)

    def _exit_task(self, c: Cpu, task: Task) -> None:
        task.alive = False
        if task.kind == "user":
            self.user_alive -= 1
        self._schedule(c)
        if c.state != IDLE:
            self._push_cpu(c)

    # ----------------------------------------------------------------- preemption points and markers
    def _elapse(self, c: Cpu, task: Task, v: Elapse) -> bool:
        c.clock += v.ns
        c.point = v.point
        return True

    def _marker(self, c: Cpu, task: Task, v) -> bool:
        if v is PREEMPT_DISABLE:
            self._preempt_inc(c)
        elif v is PREEMPT_ENABLE:
            self._preempt_dec(c)
        elif v is COND_RESCHED:
            c.clock += self.costs.cond_resched
            if c.preempt_count or c.irqs_off:
                self.invariants.sleep_in_atomic(c, "cond_resched()")
            else:
                c.point = P_COND_RESCHED
                if self.observer is not None:
                    self.observer.resched_point(c)
        elif v is MIGHT_SLEEP:
            if c.preempt_count or c.irqs_off:
                self.invariants.sleep_in_atomic(c, "might_sleep()")
            else:
                c.point = P_MIGHT_SLEEP
                if self.observer is not None:
                    self.observer.resched_point(c)
        elif v is LOCAL_IRQ_DISABLE:
            c.irqs_off += 1
        elif v is LOCAL_IRQ_ENABLE:
            c.irqs_off -= 1
            if c.irqs_off < 0:
                raise AssertionError(f"local_irq_enable: IRQs were not disabled on CPU {c.id}")
            if not c.irqs_off and c.pending:
                c.attention = True
        return True

    def _preempt_inc(self, c: Cpu) -> None:
        """preempt_count_inc(): also ends the preemption point of the step before (should_resched() is
        false with preempt_count raised, so a stale cond_resched() point must not switch a lock holder)."""
        if c.preempt_count == 0:
            c.preempt_off_since = c.clock
            if self.observer is not None:
                self.observer.preempt_off(c)
        c.preempt_count += 1
        c.point = P_PLAIN

    def _preempt_dec(self, c: Cpu) -> None:
        c.preempt_count -= 1
        if c.preempt_count < 0:
            raise AssertionError(f"preempt_count underflow on CPU {c.id}")
        if c.preempt_count == 0:
            self.metrics.preempt_off.append(c.clock - c.preempt_off_since)
            c.point = P_ENABLE
            if self.observer is not None:
                self.observer.preempt_on(c)

    # ----------------------------------------------------------------- spinlocks
    def _spin_lock(self, c: Cpu, task: Task, v: SpinLock) -> bool:
        lock = v.lock
        self._preempt_inc(c)
        c.clock += self.costs.lock
        if lock.owner is None:
            self._granted(c, lock)
            return True
        if lock.owner is c:
            raise AssertionError(f"spin_lock: recursive {lock.name} on CPU {c.id}")
        if not lock.waiters:
            lock.waiters = deque()
        lock.waiters.append(c)
        c.state = SPINNING
        return False

    def _granted(self, c: Cpu, lock) -> None:
        lock.owner = c
        lock.acquired_at = c.clock
        if lock.stat == "pte":
            if not c.ptl_held and self.observer is not None:
                self.observer.ptl_taken(c, lock)
            c.ptl_held += 1

    def _spin_unlock(self, c: Cpu, task: Task, v: SpinUnlock) -> bool:
        lock = v.lock
        if lock.owner is not c:
            raise AssertionError(f"spin_unlock: {lock.name} not held by CPU {c.id}")
        t = c.clock
        if lock.stat == "pte":
            c.ptl_held -= 1
            self.metrics.pte_lock_hold.append(c.clock - lock.acquired_at)
        c.clock += self.costs.unlock
        lock.owner = None
        if lock.waiters:
            w = lock.waiters.popleft()
            if not lock.waiters:
                lock.waiters = ()
            w.clock = max(w.clock, c.clock)
            w.state = RUNNING
            self._granted(w, lock)
            self._push_cpu(w)
        self._preempt_dec(c)
        if self.observer is not None and lock.stat == "pte" and not c.ptl_held:
            self.observer.ptl_dropped(c, t)
        return True

    # ----------------------------------------------------------------- sleeping locks
    def _sleep_check(self, c: Cpu, what: str) -> None:
        if c.preempt_count or c.irqs_off:
            self.invariants.sleep_in_atomic(c, what)

    def _down_read(self, c: Cpu, task: Task, v) -> bool:
        sem = v.sem
        self._sleep_check(c, f"down_read({sem.name})")
        c.clock += self.costs.lock
        if sem.writer is None and not sem.waiters:
            sem.readers += 1
            return True
        sem.waiters.append((task, False))
        task.blocked_on = sem
        self._block(c, task)
        return False

    def _down_write(self, c: Cpu, task: Task, v) -> bool:
        sem = v.sem
        self._sleep_check(c, f"down_write({sem.name})")
        c.clock += self.costs.lock
        if sem.writer is None and sem.readers == 0 and not sem.waiters:
            sem.writer = task
            return True
        sem.waiters.append((task, True))
        task.blocked_on = sem
        self._block(c, task)
        return False

    def _up_read(self, c: Cpu, task: Task, v) -> bool:
        sem = v.sem
        sem.readers -= 1
        c.clock += self.costs.unlock
        self._rwsem_wake(sem, c.clock)
        return True

    def _up_write(self, c: Cpu, task: Task, v) -> bool:
        sem = v.sem
        if sem.writer is not task:
            raise AssertionError(f"up_write: {sem.name} not held by {task}")
        sem.writer = None
        c.clock += self.costs.unlock
        self._rwsem_wake(sem, c.clock)
        return True

    def _downgrade_write(self, c: Cpu, task: Task, v) -> bool:
        sem = v.sem
        if sem.writer is not task:
            raise AssertionError(f"downgrade_write: {sem.name} not held for writing by {task}")
        sem.writer = None
        sem.readers += 1
        while sem.waiters and not sem.waiters[0][1]:       # rwsem_downgrade_wake(): the readers queued first
            waiter, _ = sem.waiters.popleft()
            sem.readers += 1
            self.wake(waiter, c.clock)
        return True

    def _rwsem_wake(self, sem, t: int) -> None:
        """rwsem_wake(): grant the writer at the head, or every reader up to the next writer."""
        if sem.writer is not None or not sem.waiters:
            return
        if sem.waiters[0][1]:
            if sem.readers == 0:
                task, _ = sem.waiters.popleft()
                sem.writer = task
                self.wake(task, t)
            return
        while sem.waiters and not sem.waiters[0][1]:
            task, _ = sem.waiters.popleft()
            sem.readers += 1
            self.wake(task, t)

    def _mutex_lock(self, c: Cpu, task: Task, v) -> bool:
        m = v.mutex
        self._sleep_check(c, f"mutex_lock({m.name})")
        c.clock += self.costs.lock
        if m.owner is None:
            m.owner = task
            return True
        m.waiters.append(task)
        task.blocked_on = m
        self._block(c, task)
        return False

    def _mutex_unlock(self, c: Cpu, task: Task, v) -> bool:
        m = v.mutex
        if m.owner is not task:
            raise AssertionError(f"mutex_unlock: {m.name} not held by {task}")
        c.clock += self.costs.unlock
        m.owner = None
        if m.waiters:
            m.owner = m.waiters.popleft()
            self.wake(m.owner, c.clock)
        return True

    # ----------------------------------------------------------------- user compute and sleep
    def _compute(self, c: Cpu, task: Task, v: Compute) -> bool:
        self.rcu.note_qs(c)                 # running user code is a quiescent state
        task.compute_left = 0               # (_enter_compute, inline: the commonest request)
        c.state = COMPUTE
        c.compute_end = end = c.clock + v.ns
        c.token += 1
        self.seq += 1
        heapq.heappush(self.heap, (end, self.seq, c, c.token, self._done_cbs[c.id] or self._compute_done_cb(c)))
        return False

    def _enter_compute(self, c: Cpu, task: Task, ns: int) -> None:
        task.compute_left = 0
        c.state = COMPUTE
        c.compute_end = end = c.clock + ns
        c.token += 1
        self.seq += 1
        heapq.heappush(self.heap, (end, self.seq, c, c.token, self._done_cbs[c.id] or self._compute_done_cb(c)))

    def _sleep(self, c: Cpu, task: Task, v: Sleep) -> bool:
        if c.preempt_count or c.irqs_off:
            # "BUG: scheduling while atomic": reported; the model then spins instead of switching away
            # with this CPU's preempt_count held, so that the rest of the run stays meaningful.
            self._sleep_check(c, "schedule_timeout()")
            c.clock += v.ns
            return True
        task.sleep_token += 1
        task.blocked_on = "sleep"
        tok = task.sleep_token
        wake_at = c.clock + v.ns

        self.timer(wake_at, Wakeup(self, task, tok))
        self._block(c, task)
        return False

    # ----------------------------------------------------------------- IPIs
    def _smp_call(self, c: Cpu, task: Task, v: SmpCallFunctionMany) -> bool:
        """smp_call_function_many(): IPIs to v.targets, then wait for every ack (none to send: go on)."""
        if not v.targets:
            return True
        if self.observer is not None:
            v = self.observer.ipi(c, v)
        costs = self.costs
        c.clock += costs.ipi_send
        arrival = c.clock + costs.ipi_delivery
        self.metrics.ipis_sent += len(v.targets)
        c.ipi_acks_left = len(v.targets)
        c.ipi_wait_until = c.clock
        c.state = IPI_WAIT
        for tid in v.targets:
            t = self.cpus[tid]
            self.seq += 1
            heapq.heappush(t.pending, (arrival, self.seq, v.func, c))
            t.attention = True
            self.timer(arrival, self._make_arrival(t))
        return False

    def _make_arrival(self, t: Cpu):
        def arrival(now, t=t):
            self._irq_arrived(t, now)
        return arrival

    def _irq_arrived(self, t: Cpu, now: int) -> None:
        """An IPI reaches CPU t. A CPU that is not executing steps (idle, spinning, waiting for acks, or
        in user compute) takes it now if its interrupts are on; a stepping CPU takes it at its next step."""
        if t.irqs_off or not t.pending:
            return
        if t.state == RUNNING:
            return
        t.clock = max(t.clock, now)
        before = t.clock
        self._take_irqs(t)
        if t.state == COMPUTE:
            t.compute_end += t.clock - before
            t.token += 1
            self._push(t.compute_end, t, t.token, self._compute_done_cb(t))

    def _take_irqs(self, c: Cpu) -> None:
        """Run the handlers of every IPI that has arrived by c.clock, and acknowledge each."""
        costs = self.costs
        pending = c.pending
        while pending and pending[0][0] <= c.clock:
            _, _, func, sender = heapq.heappop(pending)
            c.clock += costs.ipi_handler + func(c)
            self.metrics.ipis_by_cpu[c.id] += 1
            ack = c.clock + costs.ipi_ack
            if ack > sender.ipi_wait_until:
                sender.ipi_wait_until = ack
            sender.ipi_acks_left -= 1
            if sender.ipi_acks_left == 0:
                self._last_ack_sent(sender)
        c.attention = bool(pending) or c.need_resched

    def _last_ack_sent(self, sender: Cpu) -> None:
        """The last target has run its handler; its csd_unlock() reaches `sender` at sender.ipi_wait_until.
        Until then the sender is still in csd_lock_wait() (kernel/smp.c smp_call_function_many_cond(): it
        spins with interrupts on), so a timed run keeps it in IPI_WAIT and ends the wait with an event at
        that time: an IPI arriving meanwhile is taken inside the wait, overlapping it, as the kernel takes
        it. (An untimed scheduler orders nothing by time: the sender runs again at once.)"""
        if self.scheduler.timed and sender.ipi_wait_until > sender.clock:
            sender.token += 1
            self._push(sender.ipi_wait_until, sender, sender.token, functools.partial(self._ack_landed, sender))
            return
        sender.clock = max(sender.clock, sender.ipi_wait_until)
        sender.state = RUNNING
        self._push_cpu(sender)

    def _ack_landed(self, c: Cpu, t: int) -> None:
        """Event: the last acknowledgement reaches CPU c, waiting in csd_lock_wait(); it runs on from the
        later of that time and the end of any IPI handler it ran while it waited."""
        c.clock = max(c.clock, c.ipi_wait_until)
        c.state = RUNNING
        self._push_cpu(c)

    def _compute_done_cb(self, c: Cpu) -> Callable[[int], None]:
        """The callback of c's compute end (made once per CPU)."""
        done = self._done_cbs[c.id]
        if done is None:
            done = self._done_cbs[c.id] = functools.partial(self._compute_done, c)
        return done

    def _compute_done(self, c: Cpu, t: int) -> None:
        """c's user work ended: it runs again (where the lookahead ran it already, its run_until took the
        event before the engine's pop)."""
        if c.compute_end > c.clock:
            c.clock = c.compute_end
        c.state = RUNNING
        self.step(c, self.heap[0][0] if self.heap else INF)
