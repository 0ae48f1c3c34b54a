"""Controlled execution: the engine of machine/engine.py with a chooser in place of the clock order.

At every scheduling point the engine lists the *actors* that can take a step and a chooser picks one:
- a task, by its tid: the task current on its CPU resumes until its next yield (one step); or a task on a
  CPU's runqueue, when the current task stands where the preemption model lets it be preempted (user mode,
  cond_resched(), might_sleep() under voluntary/full, preempt_count 0 under full): the CPU switches to it
  (preempt_schedule()) and it takes its step;
- an interrupt, by -1 - cpu: the CPU takes its pending IPIs (only when its interrupts are on). Taking an
  IPI later than "at once" is another actor order, so delivery is explored like any step;
- a scheduler tick, by `RESCHED - cpu`: it sets TIF_NEED_RESCHED on a CPU whose current task has used up its
  slice while another task waits (kernel/sched/fair.c update_deadline() -> resched_curr(), when
  nr_running > 1). Offered only while the current task stands where it cannot be switched at once (in the
  kernel, between preemption points): the kernel code then sees need_resched() (6.18's zap_pte_range()
  break, 2.6.39's unmap_vmas(), unmap_mapping_range's restart) and the CPU switches at the next preemption
  point, as cond_resched()/preempt_enable() do when the flag is set (the current task is then not offered).
  Where the task could be switched at once, choosing the waiting task is that tick and switch in one step.

Time still advances on every CPU clock (metrics keep their meaning) but orders nothing. What needs time
to pass is turned into a choice: user work (`Compute`) is one step after which the CPU may be given to
anyone, a sleep yields the CPU to its runqueue, time slices and the latency task are gone (the chooser
decides preemptions). The same list of choices reproduces a run exactly.

`Controlled` is the engine's Scheduler (handed to the Engine when the Simulation is built, see
explore/target.py): its step is the engine's one step loop (`Engine._run_cpu`) with the horizon at the
CPU's clock, so a step ends at the task's first yield. Its `Footprint` counts what a step touched: it is
the TLB's observer, the allocator's free callbacks are wrapped, and the RNG is a CountingRandom.
"""
from __future__ import annotations

import random
from typing import Any

from mmugather.kernel.smp import Compute, Sleep, SmpCallFunctionMany
from mmugather.kernel.sched import P_PLAIN
from mmugather.machine.cpu import RUNNING, TaskContractError
from mmugather.policies.plugins import PluginError
from mmugather.machine.engine import DeadlockError, Engine

# footprint bits: shared kernel memory, the shared RNG, process fields user code reads; then per CPU
MEM, RNG, PROC = 1, 2, 4
_PER_CPU = 3

# the tick actor of CPU c is RESCHED - c (interrupt actors are -1 - c, c < explore's MAX_EXPLORE_CPUS)
RESCHED = -101


def actor_cpu(engine: Engine, a: int):
    """The CPU actor `a` steps on: an interrupt's or a tick's CPU, or the CPU of task a."""
    if a <= RESCHED:
        return engine.cpus[RESCHED - a]
    if a < 0:
        return engine.cpus[-1 - a]
    return engine.cpus[engine.tasks[a].cpu]


# a plugin breaking the kernel-path contract is bad input (exit 2), not a finding of the search
CONTRACT_BREACHES = (PluginError, TaskContractError)


class StepError(Exception):
    """The modelled kernel raised while actor `actor` took a step (an assertion of the model, or a
    plugin's own error): a finding of the search, unlike an error of the search itself."""

    def __init__(self, actor: int, error: Exception) -> None:
        super().__init__(f"{type(error).__name__}: {error}")
        self.actor = actor
        self.error = error


class Controlled:
    """The explorer's Scheduler: `run` asks `chooser(enabled) -> actor | None` at every scheduling point
    (None stops the run), after replaying `prefix`. With `track` on, each step leaves its footprint in
    `fp_read`/`fp_write` (bit masks). `last_task`, `yielded` and `last_request` describe the last step.
    `count_frames` off (set before the run, by a search that hashes no state): the scheduler has no task count
    its frames' resumptions (a task the tracer watches still does) and the machine's fingerprint is not
    defined."""

    timed = False

    def __init__(self) -> None:
        self.engine: Engine = None  # type: ignore[assignment]  # attach() sets it before any other method runs
        self.footprint = Footprint()
        self.chooser: Any = None      # enabled actors -> the actor to step, or None to stop; set before run()
        self.prefix: list | tuple = ()
        self.track = False
        self.last_task: int | None = None
        self.yielded = False
        self.last_request = None
        self.fp_read = self.fp_write = 0
        self.read_resched = False     # the last tracked step read its CPU's need_resched
        self.count_frames = True      # count frames' resumptions (Task.steps()), which fingerprints read
        self._engine_sleep: Any = None    # the engine's own Sleep handler, from handlers()

    # ----------------------------------------------------------------- the Scheduler protocol
    def attach(self, engine: Engine) -> None:
        if self.engine is not None:
            raise ValueError("Controlled: one scheduler per engine")
        self.engine = engine
        self.footprint.bind(engine)

    def handlers(self, engine: Engine) -> dict:
        """Compute and Sleep turn time into choices; an IPI's targets are noted for the footprint. The
        requests themselves are recorded (`last_request`) only once `record_requests()` was called."""
        own = dict(engine.handlers)
        self._engine_sleep = own[Sleep]
        own[Compute], own[Sleep] = self._compute, self._sleep
        sent = self.footprint.sent
        send_ipi = own[SmpCallFunctionMany]

        def noted(c, task, v):
            sent.extend(v.targets)
            return send_ipi(c, task, v)
        own[SmpCallFunctionMany] = noted
        return own

    def record_requests(self) -> None:
        """From now on every request handler records its request in `last_request` (for the story)."""
        def record(h):
            def recorded(c, task, v):
                self.last_request = v
                return h(c, task, v)
            return recorded
        handlers = self.engine.handlers
        for kind, h in list(handlers.items()):
            handlers[kind] = record(h)

    def run(self, engine: Engine) -> int:
        """Replay `prefix` (actors, in order), then run under the chooser until every user task has exited
        or the chooser returns None. An exception the model raises in a step comes out as a StepError naming
        the actor (a breach of the kernel-path contract passes as it is)."""
        for c in engine.cpus:
            if c.latency_task is not None:
                raise ValueError("Controlled: build the simulation without the latency task")
        chooser, enabled, can_step = self.chooser, self.enabled, self.can_step
        for k, a in enumerate(self.prefix):       # a schedule known to be valid: no choices to offer
            if engine.user_alive <= 0 or engine.halted or not can_step(a):
                raise RuntimeError(f"replay diverged at step {k}: actor {a} cannot step")
            try:
                self._step(a)                     # (untracked: the search tracks from its branch on)
            except CONTRACT_BREACHES:
                raise
            except Exception as e:
                raise StepError(a, e) from e
        step, tracked = self._step, self._tracked
        while engine.user_alive > 0 and not engine.halted:
            en = enabled()
            if not en:
                raise DeadlockError(f"{engine.user_alive} user task(s) left and no CPU can take a step")
            a = chooser(en)
            if a is None:
                break
            try:
                if self.track:
                    tracked(a)
                else:
                    step(a)
            except CONTRACT_BREACHES:
                raise
            except Exception as e:
                raise StepError(a, e) from e
        return max(c.clock for c in engine.cpus)

    # ----------------------------------------------------------------- actors
    def enabled(self) -> list[int]:
        """The actors that can take a step now: interrupts first (by CPU), then tasks by tid, then ticks."""
        eng = self.engine
        irqs = None
        tasks = []
        ticks = None
        for c in eng.cpus:
            if c.pending and not c.irqs_off:
                if irqs is None:
                    irqs = []
                irqs.append(-1 - c.id)
            task = c.curr
            if task is not None and c.state == RUNNING:
                if not c.runqueue:
                    tasks.append(task.tid)
                elif eng.preemptible(c, task):
                    if not c._need_resched:              # set: the switch is due, the current task waits
                        tasks.append(task.tid)
                    tasks.extend(t.tid for t in c.runqueue)
                else:
                    tasks.append(task.tid)
                    if not c._need_resched:
                        if ticks is None:
                            ticks = []
                        ticks.append(RESCHED - c.id)
        if len(tasks) > 1:
            tasks.sort()
        if ticks:
            tasks += ticks
        return irqs + tasks if irqs else tasks

    def can_step(self, a: int) -> bool:
        """Is actor `a` enabled (a cheaper test than `a in self.enabled()`)?"""
        eng = self.engine
        if a <= RESCHED:
            c = eng.cpus[RESCHED - a]
            return (c.curr is not None and c.state == RUNNING and bool(c.runqueue) and not c._need_resched
                    and not eng.preemptible(c, c.curr))
        if a < 0:
            c = eng.cpus[-1 - a]
            return bool(c.pending) and not c.irqs_off
        task = eng.tasks.get(a)
        if task is None:
            return False
        c = eng.cpus[task.cpu]
        curr = c.curr
        if curr is None or c.state != RUNNING:
            return False
        if curr is task:
            return not (c._need_resched and c.runqueue and eng.preemptible(c, task))
        return task in c.runqueue and eng.preemptible(c, curr)

    def act(self, a: int) -> None:
        """Let actor `a` take one step; with `track`, leave its footprint in fp_read/fp_write."""
        if self.track:
            self._tracked(a)
        else:
            self._step(a)

    def _tracked(self, a: int) -> None:
        """act(a), leaving the step's footprint in fp_read/fp_write."""
        eng = self.engine
        self.read_resched = False
        if a <= RESCHED:                            # the tick writes the CPU's need_resched only
            self._step(a)
            self.fp_read, self.fp_write = 0, self.footprint.bit_cpu[RESCHED - a]
            return
        if a < 0:
            c = eng.cpus[-1 - a]
        else:
            task = eng.tasks[a]
            c = eng.cpus[task.cpu]
        fp = self.footprint
        touched, sent = fp.touched, fp.sent
        touched.clear()
        sent.clear()
        fp.walked = False
        frees0 = fp.frees
        rng = fp.rng
        draws0 = rng.draws if rng is not None else 0
        if a < 0:
            senders = {s.id for _, _, _, s in c.pending}
            self._step(a)
            w = MEM | fp.bit_irq[c.id] | fp.bit_tlb[c.id]
            for s in senders:
                w |= fp.bit_cpu[s]
            self.fp_read, self.fp_write = fp.bit_cpu[c.id], w | fp.written()
            return
        k0, curr0, sig0 = task.in_kernel, c.curr, fp.proc_sig()
        rcu = eng.rcu
        rcu0, qs0 = bool(rcu.pending), rcu.qs[c.id]
        reads = c.resched_reads
        self._step(a)
        self.read_resched = c.resched_reads != reads
        w = fp.bit_cpu[c.id] | fp.written() if touched or sent else fp.bit_cpu[c.id]
        if k0 or task.in_kernel or curr0 is not task or c.curr is not task or rcu0 or rcu.pending:
            w |= MEM
            r = PROC                                # the program's own code may run in the step too
        else:
            r = PROC | fp.bit_tlb[c.id]
            if fp.walked:                           # the walk reads the page tables; a store's sets _PAGE_DIRTY
                r |= MEM
                w |= MEM
            if eng.invariants.check_stores:
                r |= MEM                            # a store is checked against the page cache and PTEs
            if rcu.qs[c.id] != qs0:
                w |= MEM                            # user work is a quiescent state: call_rcu() reads the count
        if k0 != task.in_kernel or sig0 != fp.proc_sig():
            w |= PROC
            r |= fp.all_tlb                         # a return to user space checks every TLB
        if fp.frees != frees0:
            w |= MEM
            r |= fp.all_tlb
        if rng is not None and rng.draws != draws0:
            w |= RNG
        self.fp_read, self.fp_write = r, w

    # ----------------------------------------------------------------- one step
    def _step(self, actor: int) -> None:
        """One step of `actor`: an interrupt actor takes its CPU's pending IPIs; a task (switched to first
        if it waits on its CPU's runqueue) resumes until its first yield, in the engine's step loop."""
        eng = self.engine
        if actor <= RESCHED:                        # scheduler tick: resched_curr() sets TIF_NEED_RESCHED
            eng.cpus[RESCHED - actor]._need_resched = True
            return
        if actor < 0:
            c = eng.cpus[-1 - actor]
            if eng.observer is not None:
                eng.observer.step(c)
            if c.pending[0][0] > c.clock:
                c.clock = c.pending[0][0]
            eng._take_irqs(c)
            return
        task = eng.tasks[actor]
        c = eng.cpus[task.cpu]
        if c.curr is not task:                      # preempt_schedule() in favour of `task`
            c.runqueue.remove(task)
            c.runqueue.appendleft(task)
            c.runqueue.append(c.curr)  # type: ignore[arg-type]  # enabled(): a queued task runs only on a busy CPU
            eng._schedule(c)
        self.last_task = actor
        self.yielded = False
        self.last_request = None
        if c._need_resched and not c.runqueue and eng.preemptible(c, task):
            c._need_resched = False                 # schedule() found nobody else: the same task goes on
        c.attention = False                         # the chooser takes IPIs and preempts, not the step loop
        counts = task.counts
        if counts is None and self.count_frames:
            task.count_resumptions()
            counts = task.counts
        if counts is not None:                      # the top frame resumes (Task.count_resumptions())
            top = task.stack[-1]
            counts[top] = counts.get(top, 1) + 1
        eng.step(c, c.clock)                        # horizon = now: one step, no bulk over several

    # ----------------------------------------------------------------- time turned into choices
    def _compute(self, c, task, v) -> bool:
        """User work: one step; afterwards the CPU may go to anyone (a yield)."""
        self.engine.rcu.note_qs(c)
        c.clock += v.ns
        c.point = P_PLAIN
        self.yielded = True
        return True

    def _sleep(self, c, task, v) -> bool:
        """A sleep yields the CPU to the next task on its runqueue (or to nobody); time orders nothing."""
        if c.preempt_count or c.irqs_off:
            return self._engine_sleep(c, task, v)
        c.clock += v.ns
        self.yielded = True
        if c.runqueue:
            c.runqueue.append(task)
            self.engine._schedule(c)
        return True


class Footprint:
    """What a step touched, from counters the TLB (as its observer), the allocator (its free callbacks,
    wrapped by `watch`) and the RNG (a CountingRandom) keep; and, when `log` is a list, a record of each
    TLB operation and free for the story."""

    def __init__(self) -> None:
        self.touched: set[int] = set()
        self.walked = False
        self.frees = 0
        self.sent: list[int] = []
        self.log: list | None = None
        self.procs: list = []
        self.engine: Engine = None  # type: ignore[assignment]  # bind() sets it before any other method runs
        self.rng: CountingRandom | None = None    # the CountingRandom, once watched

    def bind(self, engine) -> None:
        """Size the per-CPU bits for `engine`."""
        ncpus = len(engine.cpus)
        self.engine = engine
        self.bit_tlb = [1 << (_PER_CPU + i) for i in range(ncpus)]
        self.bit_cpu = [1 << (_PER_CPU + ncpus + i) for i in range(ncpus)]
        self.bit_irq = [1 << (_PER_CPU + 2 * ncpus + i) for i in range(ncpus)]
        self.all_tlb = sum(self.bit_tlb)

    def watch(self, sim) -> None:
        """Count what `sim` (a Simulation built with this footprint's scheduler) does outside the engine:
        its processes' fields, its RNG's draws, its allocator's frees."""
        self.procs = sim.processes
        rng = sim.rng
        if isinstance(rng, CountingRandom):
            self.rng = rng
            rng.draws = 0                 # draws since the search began (none: the fingerprint skips the RNG)
        _count_frees(sim.alloc, self, sim.engine)

    def tlb_op(self, name: str, c, args: tuple) -> None:
        """The TLB's observer: an operation on CPU c marks c's TLB as written; `walk` also marks that page
        tables were read; in story mode each is logged as (name, cpu, args)."""
        cpu = getattr(c, "id", None)
        if cpu is None:
            return
        self.touched.add(cpu)
        if name == "walk":
            self.walked = True
        if self.log is not None:
            self.log.append((name, cpu, args))

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
    """random.Random that counts its draws (so that a step drawing from the shared RNG is seen): the RNG
    class the explorer builds its Simulation with. Seeded at its first use rather than when made (most
    executions never draw, and seeding the Mersenne Twister costs a few us per build): every way to its
    state (a draw, getstate()) seeds it first, as Random(x) would have; seed() and setstate() replace it."""

    draws = 0

    def __init__(self, x=None) -> None:
        self._unseeded: tuple | None = (x,)          # the seed still to apply
        self.gauss_next = None                       # (what Random.seed() sets besides the state)

    def _seed_now(self) -> None:
        (x,) = self._unseeded  # type: ignore[misc]  # called only while a seed is pending
        self._unseeded = None
        super().seed(x)

    def seed(self, a=None, version=2) -> None:
        self._unseeded = None
        super().seed(a, version)

    def setstate(self, state) -> None:
        self._unseeded = None
        super().setstate(state)

    def getstate(self):
        if self._unseeded is not None:
            self._seed_now()
        return super().getstate()

    def random(self):
        if self._unseeded is not None:
            self._seed_now()
        self.draws += 1
        return super().random()

    def getrandbits(self, k):
        if self._unseeded is not None:
            self._seed_now()
        self.draws += 1
        return super().getrandbits(k)


def _count_frees(alloc, obs: Footprint, engine) -> None:
    """Wrap the allocator's free callbacks: count every free and, in story mode, log (freeing CPU, [(pfn,
    kind)], the cached translations still reaching those frames)."""
    def log(c, freed) -> None:                     # story mode (obs.log a list)
        mapped = [m for pfn, _ in freed for m in _mapped_by(engine, pfn)]
        obs.log.append(("free", c.id if c is not None else None, freed, mapped))  # type: ignore[union-attr]

    on_free, on_free_many = alloc.on_free, alloc.on_free_many
    on_free_array: Any = getattr(alloc, "on_free_array", None)

    def counted_free(c, pfn, kind):
        obs.frees += 1
        if obs.log is not None:
            log(c, [(pfn, kind)])
        on_free(c, pfn, kind)

    def counted_free_many(c, pfns, kinds):
        obs.frees += 1
        if obs.log is not None:
            log(c, list(zip(pfns, kinds)))
        on_free_many(c, pfns, kinds)

    def counted_free_array(c, pfns, kinds):
        obs.frees += 1
        if obs.log is not None:
            log(c, list(zip(pfns.tolist(), kinds.tolist())))
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
