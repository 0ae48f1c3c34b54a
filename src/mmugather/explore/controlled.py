"""Controlled execution: the machine of sim/engine.py with a chooser in place of the clock order.

At every scheduling point the engine lists the *actors* that can take a step and a chooser picks one:
- a task, by its tid: the task current on its CPU resumes until its next yield (one step); or a task on a
  CPU's runqueue, when the current task stands where the preemption model lets it be preempted (user mode,
  cond_resched(), might_sleep() under voluntary/full, preempt_count 0 under full): the CPU switches to it
  (preempt_schedule()) and it takes its step;
- an interrupt, by -1 - cpu: the CPU takes its pending IPIs (only when its interrupts are on). Taking an
  IPI later than "at once" is another actor order, so delivery is explored like any step.

Time still advances on every CPU clock (metrics keep their meaning) but orders nothing. What needs time
to pass is turned into a choice: user work (`Compute`) is one step after which the CPU may be given to
anyone, a sleep yields the CPU to its runqueue, time slices and the latency task are gone (the chooser
decides preemptions). The same list of choices reproduces a run exactly.

The engine is installed on a built Simulation by switching its class (`controlled(sim)`), as
sim/tracing.py does for traces, so Engine.run, the free-running hot loop, is untouched.
"""
from __future__ import annotations

import random
from types import GeneratorType

from mmugather.kernel.smp import Compute, Sleep, SmpCallFunctionMany
from mmugather.machine.tlb import Tlb
from mmugather.sim.engine import (
    P_COND_RESCHED, P_MIGHT_SLEEP, P_PLAIN, RUNNING, DeadlockError, Engine,
)

# footprint bits: shared kernel memory, the shared RNG, process fields user code reads; then per CPU
MEM, RNG, PROC = 1, 2, 4
_PER_CPU = 3


class StepError(Exception):
    """The modelled kernel raised while actor `actor` took a step (an assertion of the model, or a
    plugin's own error): a finding of the search, unlike an error of the search itself."""

    def __init__(self, actor: int, error: Exception) -> None:
        super().__init__(f"{type(error).__name__}: {error}")
        self.actor = actor
        self.error = error


class ControlledEngine(Engine):
    """Engine whose `run` asks `chooser(enabled) -> actor | None` at every scheduling point (None stops
    the run). With `track` on, each step leaves its footprint in `fp_read`/`fp_write` (bit masks)."""

    # set by `controlled()`
    tasks: dict
    chooser = None
    prefix: list | tuple = ()
    track = False
    obs: "Observer"

    def run(self, until_ns: int | None = None) -> int:
        """Replay `prefix` (actors, in order), then run under the chooser until every user task has exited
        or the chooser returns None."""
        chooser, enabled, act = self.chooser, self.enabled, self.act
        for k, a in enumerate(self.prefix):       # a schedule known to be valid: no choices to offer
            if self.user_alive <= 0 or self.halted or not self.can_step(a):
                raise RuntimeError(f"replay diverged at step {k}: actor {a} cannot step")
            try:
                act(a)
            except Exception as e:
                raise StepError(a, e) from e
        while self.user_alive > 0 and not self.halted:
            en = enabled()
            if not en:
                raise DeadlockError(f"{self.user_alive} user task(s) left and no CPU can take a step")
            a = chooser(en)
            if a is None:
                break
            try:
                act(a)
            except Exception as e:
                raise StepError(a, e) from e
        return max(c.clock for c in self.cpus)

    # ----------------------------------------------------------------- actors
    def enabled(self) -> list[int]:
        """The actors that can take a step now: interrupts first (by CPU), then tasks by tid."""
        irqs = None
        tasks = []
        for c in self.cpus:
            if c.pending and not c.irqs_off:
                if irqs is None:
                    irqs = []
                irqs.append(-1 - c.id)
            task = c.curr
            if task is not None and c.state == RUNNING:
                tasks.append(task.tid)
                if c.runqueue and self.preemptible(c, task):
                    tasks.extend(t.tid for t in c.runqueue)
        if len(tasks) > 1:
            tasks.sort()
        return irqs + tasks if irqs else tasks

    def can_step(self, a: int) -> bool:
        """Is actor `a` enabled (a cheaper test than `a in self.enabled()`)?"""
        if a < 0:
            c = self.cpus[-1 - a]
            return bool(c.pending) and not c.irqs_off
        task = self.tasks.get(a)
        if task is None:
            return False
        c = self.cpus[task.cpu]
        curr = c.curr
        if curr is None or c.state != RUNNING:
            return False
        return curr is task or (task in c.runqueue and self.preemptible(c, curr))

    def preemptible(self, c, task) -> bool:
        """May the current task of c be switched out here (Engine._attend's test)?"""
        p = c.point
        return (not task.in_kernel or p == P_COND_RESCHED or (p == P_MIGHT_SLEEP and self.voluntary)
                or (self.full and c.preempt_count == 0 and not c.irqs_off))

    def act(self, a: int) -> None:
        """Let actor `a` take one step; with `track`, leave its footprint in fp_read/fp_write."""
        if a < 0:
            c = self.cpus[-1 - a]
        else:
            task = self.tasks[a]
            c = self.cpus[task.cpu]
        if not self.track:
            self._run_cpu(c, a)
            return
        obs = self.obs
        touched, sent = obs.touched, obs.sent
        touched.clear()
        sent.clear()
        obs.walked = False
        frees0 = obs.frees
        rng = obs.rng
        draws0 = rng.draws if rng is not None else 0
        if a < 0:
            senders = {s.id for _, _, _, s in c.pending}
            self._run_cpu(c, a)
            w = MEM | obs.bit_irq[c.id] | obs.bit_tlb[c.id]
            for s in senders:
                w |= obs.bit_cpu[s]
            self.fp_read, self.fp_write = obs.bit_cpu[c.id], w | obs.written()
            return
        k0, curr0, sig0 = task.in_kernel, c.curr, obs.proc_sig()
        rcu = self.rcu
        rcu0 = bool(rcu.pending)
        self._run_cpu(c, a)
        r = 0
        w = obs.bit_cpu[c.id] | obs.written() if touched or sent else obs.bit_cpu[c.id]
        if k0 or task.in_kernel or curr0 is not task or c.curr is not task or rcu0 or rcu.pending:
            w |= MEM
        else:
            r = PROC | obs.bit_tlb[c.id] | (MEM if obs.walked else 0)
        if k0 != task.in_kernel or sig0 != obs.proc_sig():
            w |= PROC
            r |= obs.all_tlb                        # a return to user space checks every TLB
        if obs.frees != frees0:
            w |= MEM
            r |= obs.all_tlb
        if rng is not None and rng.draws != draws0:
            w |= RNG
        self.fp_read, self.fp_write = r, w

    # ----------------------------------------------------------------- one step
    def _run_cpu(self, c, actor) -> None:
        """One step of `actor` on c (the second argument is the actor in this engine, not a horizon)."""
        if actor < 0:
            if c.pending[0][0] > c.clock:
                c.clock = c.pending[0][0]
            self._take_irqs(c)
            return
        task = self.tasks[actor]
        if c.curr is not task:                      # preempt_schedule() in favour of `task`
            c.runqueue.remove(task)
            c.runqueue.appendleft(task)
            c.runqueue.append(c.curr)
            self._schedule(c)
        self.last_task = actor
        self.yielded = False
        self.last_request = None
        c.need_resched = bool(c.runqueue)           # another task wants this CPU (read by 2.6.39's unmap_vmas)
        c.horizon = c.clock                         # no fast path over several steps: each one is a choice
        stack = task.stack
        send = task.send
        val = None
        while True:
            try:
                v = send(val)
            except StopIteration as e:
                stack.pop()
                if not stack:
                    self._exit_task(c, task)
                    return
                send = task.send = stack[-1].send
                val = e.value
                continue
            if v.__class__ is int:
                c.clock += v
                c.point = P_PLAIN
                return
            if v.__class__ is GeneratorType:
                stack.append(v)
                send = task.send = v.send
                val = None
                continue
            self.last_request = v
            self.handlers[v.__class__](c, task, v)
            return

    # ----------------------------------------------------------------- time turned into choices
    def _push(self, t, cpu, token, callback) -> None:
        """No event queue: nothing is ordered by time."""

    def _arm_slice(self, c) -> None:
        """No time slices: the chooser preempts."""

    def _compute(self, c, task, v) -> bool:
        """User work: one step; afterwards the CPU may go to anyone (a yield)."""
        self.rcu.note_qs(c)
        c.clock += v.ns
        c.point = P_PLAIN
        self.yielded = True
        return True

    def _sleep(self, c, task, v) -> bool:
        """A sleep yields the CPU to the next task on its runqueue (or to nobody); time orders nothing."""
        if c.preempt_count or c.irqs_off:
            return super()._sleep(c, task, v)
        c.clock += v.ns
        self.yielded = True
        if c.runqueue:
            c.runqueue.append(task)
            self._schedule(c)
        return True

    def _smp_call(self, c, task, v) -> bool:
        if not v.targets:
            return True
        self.obs.sent.extend(v.targets)
        return super()._smp_call(c, task, v)

    def spawn(self, name, cpu, kind, gen_factory, mm=None, process=None):
        task = super().spawn(name, cpu, kind, gen_factory, mm, process)
        self.tasks[task.tid] = task
        return task


class Observer:
    """What a step touched, from counters the instrumented TLB, allocator and RNG keep; and, when `log` is
    a list, a record of each TLB operation and free for the story."""

    def __init__(self, sim, ncpus: int) -> None:
        self.sim = sim
        self.bit_tlb = [1 << (_PER_CPU + i) for i in range(ncpus)]
        self.bit_cpu = [1 << (_PER_CPU + ncpus + i) for i in range(ncpus)]
        self.bit_irq = [1 << (_PER_CPU + 2 * ncpus + i) for i in range(ncpus)]
        self.all_tlb = sum(self.bit_tlb)
        self.touched: set[int] = set()
        self.walked = False
        self.frees = 0
        self.sent: list[int] = []
        self.log: list | None = None
        self.procs = getattr(sim, "processes", [])
        self.engine = sim.engine
        self.rng = None                   # the CountingRandom, once installed

    def written(self) -> int:
        w = 0
        for x in self.touched:
            w |= self.bit_tlb[x]
        for x in self.sent:
            w |= self.bit_irq[x]
        return w

    def proc_sig(self):
        """What user code reads of its process between operations (and the machine's halt flag)."""
        procs = self.procs
        if len(procs) == 1:
            p = procs[0]
            return p.exiting, p.busy, p.mm, self.engine.halted
        return [(p.exiting, p.busy, p.mm) for p in procs], self.engine.halted


# ------------------------------------------------------------------------- instrumentation
class CountingRandom(random.Random):
    """random.Random that counts its draws (so that a step drawing from the shared RNG is seen)."""

    draws = 0

    def random(self):
        self.draws += 1
        return super().random()

    def getrandbits(self, k):
        self.draws += 1
        return super().getrandbits(k)


_COUNTING_TLB: dict[type, type] = {}


def _counting_tlb_class(cls: type) -> type:
    """`cls` (a Tlb) whose every public operation on CPU c marks c's TLB as written and, in story mode,
    logs (name, cpu, args); `walk` also marks that page tables were read."""
    made = _COUNTING_TLB.get(cls)
    if made is not None:
        return made
    methods = {}
    for name in dir(cls):
        base = getattr(cls, name)
        if name.startswith("_") or not callable(base):
            continue

        def op(self, c, *args, _base=base, _name=name):
            cpu = getattr(c, "id", None)
            if cpu is not None:
                obs = self.obs
                obs.touched.add(cpu)
                if _name == "walk":
                    obs.walked = True
                if obs.log is not None:
                    obs.log.append((_name, cpu, args))
            return _base(self, c, *args)
        methods[name] = op
    made = _COUNTING_TLB[cls] = type(f"Counting{cls.__name__}", (cls,), methods)
    return made


def controlled(sim) -> "ControlledEngine":
    """Switch a built, not yet run Simulation to controlled execution and instrument it for footprints.
    Returns its engine; set `engine.chooser` before `engine.run()`."""
    engine = sim.engine
    ncpus = len(engine.cpus)
    obs = Observer(sim, ncpus)
    engine.__class__ = _controlled_class(type(engine))
    for kind in (SmpCallFunctionMany, Compute, Sleep):     # the handlers this class overrides
        engine.handlers[kind] = getattr(engine, engine.handlers[kind].__name__)
    engine.obs = obs
    engine.tasks = {}
    engine.last_task = None
    engine.yielded = False
    engine.last_request = None
    engine.fp_read = engine.fp_write = 0
    engine.heap.clear()
    for c in engine.cpus:
        for t in ([c.curr] if c.curr else []) + list(c.runqueue):
            engine.tasks[t.tid] = t
        if c.latency_task is not None:
            raise ValueError("controlled(): build the simulation without the latency task")
    if isinstance(getattr(sim, "tlb", None), Tlb):
        sim.tlb.__class__ = _counting_tlb_class(type(sim.tlb))
        sim.tlb.obs = obs
    if isinstance(getattr(sim, "rng", None), random.Random):
        sim.rng.__class__ = CountingRandom
        sim.rng.draws = 0
        obs.rng = sim.rng
    alloc = getattr(sim, "alloc", None)
    if alloc is not None:
        _count_frees(alloc, obs, engine)
    return engine


def _count_frees(alloc, obs: Observer, engine) -> None:
    """Wrap the allocator's free callbacks: count every free and, in story mode, log (freeing CPU, [(pfn,
    kind)], the cached translations still reaching those frames)."""
    def note(c, freed) -> None:
        obs.frees += 1
        if obs.log is not None:
            mapped = [m for pfn, _ in freed for m in _mapped_by(engine, pfn)]
            obs.log.append(("free", c.id if c is not None else None, freed, mapped))

    on_free, on_free_many, on_free_array = alloc.on_free, alloc.on_free_many, getattr(alloc, "on_free_array", None)

    def counted_free(c, pfn, kind):
        note(c, [(pfn, kind)])
        on_free(c, pfn, kind)

    def counted_free_many(c, pfns, kinds):
        note(c, list(zip(pfns, kinds)) if obs.log is not None else None)
        on_free_many(c, pfns, kinds)

    def counted_free_array(c, pfns, kinds):
        note(c, list(zip(pfns.tolist(), kinds.tolist())) if obs.log is not None else None)
        on_free_array(c, pfns, kinds)
    alloc.on_free, alloc.on_free_many = counted_free, counted_free_many
    if on_free_array is not None:
        alloc.on_free_array = counted_free_array


def _mapped_by(engine, pfn: int) -> list[tuple]:
    """The cached translations to pfn on every CPU: ("tlb", cpu, vpn, pfn) for TLB entries, ("pwc", cpu,
    addr, pfn) for paging-structure cache entries pointing to it as a PTE table (addr: the first address
    it maps)."""
    out = []
    for x in engine.cpus:
        out += [("tlb", x.id, vpn, pfn) for vpn, v in x.tlb.items() if v >> 1 == pfn]
        out += [("pwc", x.id, key << 21, pfn) for key, t in x.pwc.items() if t.pfn == pfn]
    return out


_CONTROLLED: dict[type, type] = {}


def _controlled_class(cls: type) -> type:
    if issubclass(cls, ControlledEngine):
        return cls
    if cls is Engine:
        return ControlledEngine
    made = _CONTROLLED.get(cls)
    if made is None:
        made = _CONTROLLED[cls] = type(f"Controlled{cls.__name__}", (ControlledEngine, cls), {})
    return made
