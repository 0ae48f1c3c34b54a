"""Timelines of a run: `attach_trace(sim)` feeds a ChromeTrace (report/trace.py) from one simulation.

Zero cost when off: attaching switches that simulation's engine to a traced subclass of its own class and
each task's stack to a list that records its pushes and pops. Untraced runs use the plain classes, so
the hot loop (Engine._run_cpu) is the same code whether or not this module exists. Attach before
`sim.run()`.

What the trace holds, per run (one pid; thread tracks named by metadata, tids unique in the file):
- "CPU n": the task running on CPU n as a slice named after it (category "task") and, nested in it, a
  slice for every kernel path on its stack, from the engine pushing the generator to its return, named
  after the function (sys_munmap, unmap_vmas, zap_pte_range, tlb_flush_mmu, ...): category "syscall" for
  a kernel entry of the thread's program (a system call, the exit path, gup), "fault" for do_page_fault,
  "kernel" below them. User loads and stores (workloads/program.access) and the syscall wrapper are not
  slices. When a task is switched out its slices close on that track, and open again when it resumes.
  IPI handlers are complete slices on the receiving CPU, each the end of a flow arrow ("IPI") from the
  sender's flush: one arrow per IPI counted in `ipis_sent`. A violation is an instant ("violation: KIND")
  on the track of the CPU whose step detected it, its args naming the CPU at fault and the detail.
- "CPU n preempt off": spans where preempt_count > 0 (the preempt_off_ns intervals).
- "CPU n PTE lock": spans where CPU n holds a PTE lock (the pte_lock_hold_ns intervals).
- "machine": violations found outside any CPU's step (the leak check after the run).
- counters "CPU n batch fill" (entries in the active batch of the gather of the task on CPU n) and
  "CPU n pending free" (entries in all its batches: pages unhooked and waiting for the flush before they
  are freed), sampled when a kernel function taking the gather (`tlb` argument) is entered or returns.
  An entry is a page (a multi-page folio in a 6.18 batch takes two).
"""
from __future__ import annotations

import copy
from pathlib import Path

from mmugather.errors import InputError
from mmugather.report.trace import PID, ChromeTrace, write_traces
from mmugather.workloads import program

# tid = pid * TIDS_PER_RUN + track + CPU number: unique across a file of several runs, never a pid
TIDS_PER_RUN = 10_000
CPU_TRACK, PREEMPT_TRACK, PTL_TRACK, MACHINE_TRACK = 0, 1000, 2000, 3000

_SYSCALL = program.syscall.__code__
_ACCESS = program.access.__code__


def attach_trace(sim, *, pid: int = PID, first_flow_id: int = 1) -> ChromeTrace:
    """Trace `sim` (a Simulation that has not run yet) into a new ChromeTrace named after its policy,
    workload and machine, as process `pid` with flow ids from `first_flow_id` (several runs in one file:
    distinct pids, and the previous trace's `next_flow_id`). The trace is complete once `sim.run()`
    returns or raises."""
    engine = sim.engine
    if isinstance(engine, _TracingEngine):
        raise ValueError("attach_trace: this simulation is traced already")
    trace = ChromeTrace(f"{sim.kernel.name}: {sim.scenario.name} ({sim.ncpus} CPUs, {sim.arch_name}, "
                        f"preempt {sim.preempt}, seed {sim.seed})", pid=pid, first_flow_id=first_flow_id)
    tracer = _Tracer(trace, engine.cpus)
    for c in engine.cpus:
        trace.name_track(tracer.tid[c.id], f"CPU {c.id}")
        trace.name_track(tracer.preempt_tid[c.id], f"CPU {c.id} preempt off")
        trace.name_track(tracer.ptl_tid[c.id], f"CPU {c.id} PTE lock")
    trace.name_track(tracer.machine_tid, "machine")
    engine._tracer = tracer
    engine.__class__ = _traced_class(type(engine))
    engine.handlers = {kind: getattr(engine, h.__name__) if getattr(h, "__self__", None) is engine else h
                       for kind, h in engine.handlers.items()}      # bound before the class changed
    tasks = [t for p in sim.processes for t in p.threads]
    for c in engine.cpus:
        tasks += [t for t in [c.curr, c.latency_task, *c.runqueue] if t is not None]
    for task in dict.fromkeys(tasks):
        tracer.wrap(task)
    for c in engine.cpus:
        if c.curr is not None:
            tracer.open_task(c, c.curr)
    _hook_violations(tracer, sim.invariants)
    return trace


class _Tracer:
    """What the engine hooks share: the trace, the slices open on each CPU track, the last counter values."""

    def __init__(self, trace: ChromeTrace, cpus: list) -> None:
        self.trace = trace
        self.cpus = cpus
        base = trace.pid * TIDS_PER_RUN
        self.tid = [base + CPU_TRACK + c.id for c in cpus]
        self.preempt_tid = [base + PREEMPT_TRACK + c.id for c in cpus]
        self.ptl_tid = [base + PTL_TRACK + c.id for c in cpus]
        self.machine_tid = base + MACHINE_TRACK
        self.open: list[list[str]] = [[] for _ in cpus]   # names of the slices open on each CPU track
        self.gather_of: dict = {}          # generator -> the gather it was called with
        self.takes_gather: dict = {}       # code object -> has a `tlb` argument
        self.before_active: dict = {}      # gather -> (its active batch, entries before it): _gather_fill
        self.last: dict[str, int] = {}     # counter name -> last value written
        self.counters = [(f"CPU {c.id} batch fill", f"CPU {c.id} pending free") for c in cpus]
        self.active = None                 # the CPU whose step runs now (violations go on its track)

    def wrap(self, task) -> None:
        if not isinstance(task.stack, _TracedStack):
            task.stack = _TracedStack(task.stack, self, task, self.cpus[task.cpu])

    @staticmethod
    def slice_of(task, code, parent, depth: int) -> tuple[str, str] | None:
        """(name, category) of the slice of a generator at `depth` on task's stack (parent: the code of
        the one below it), or None if it gets none."""
        if depth == 0:
            return task.name, "task"
        if code is _ACCESS or code is _SYSCALL:
            return None
        if depth == 1 or parent is _SYSCALL:
            return code.co_name, "syscall"
        return code.co_name, "fault" if parent is _ACCESS else "kernel"

    def push(self, stack, gen) -> None:
        depth = len(stack) - 1
        code = gen.gi_code
        s = self.slice_of(stack.task, code, stack[depth - 1].gi_code if depth else None, depth)
        if s is None:
            return
        c = stack.cpu
        self.open[c.id].append(s[0])
        self.trace.begin(self.tid[c.id], s[0], c.clock, cat=s[1])
        takes = self.takes_gather.get(code)
        if takes is None:
            takes = self.takes_gather[code] = "tlb" in code.co_varnames[:code.co_argcount]
        if takes:
            tlb = self.gather_of[gen] = gen.gi_frame.f_locals["tlb"]
            self.sample(c, tlb)

    def pop(self, stack, gen) -> None:
        depth = len(stack)
        s = self.slice_of(stack.task, gen.gi_code, stack[depth - 1].gi_code if depth else None, depth)
        if s is None:
            return
        c = stack.cpu
        self.open[c.id].pop()
        self.trace.end(self.tid[c.id], s[0], c.clock)
        tlb = self.gather_of.pop(gen, None)
        if tlb is not None:
            self.sample(c, tlb)

    def open_task(self, c, task) -> None:
        """Open the slices of every frame on task's stack (it starts or resumes on c)."""
        stack = task.stack
        opened = self.open[c.id]
        for depth, gen in enumerate(stack):
            s = self.slice_of(task, gen.gi_code, stack[depth - 1].gi_code if depth else None, depth)
            if s is not None:
                opened.append(s[0])
                self.trace.begin(self.tid[c.id], s[0], c.clock, cat=s[1])

    def close_all(self, c) -> None:
        """Close every slice open on c's track (its task is switched out)."""
        for name in reversed(self.open[c.id]):
            self.trace.end(self.tid[c.id], name, c.clock)
        self.open[c.id] = []

    def sample(self, c, tlb) -> None:
        fill = _gather_fill(tlb, self.before_active)
        if fill is None:
            return
        for name, value in zip(self.counters[c.id], fill):
            if self.last.get(name) != value:
                self.last[name] = value
                self.trace.counter(name, c.clock, value, key="pages")

    def violation(self, kind: str, cpu: int, detail: str) -> None:
        args = {"cpu": cpu, "detail": detail}
        c = self.active
        if c is None:
            self.trace.instant(self.machine_tid, f"violation: {kind}", max(x.clock for x in self.cpus), args)
        else:
            self.trace.instant(self.tid[c.id], f"violation: {kind}", c.clock, args)

    def end_run(self) -> None:
        """The run is over: close what is still open on every track."""
        self.active = None
        for c in self.cpus:
            self.close_all(c)
            if c.preempt_count:
                self.trace.end(self.preempt_tid[c.id], "preempt off", c.clock)
            if c.ptl_held:
                self.trace.end(self.ptl_tid[c.id], "PTE lock", c.clock)


class _TracedStack(list):
    """A task's call stack (Task.stack) that tells the tracer of each push and pop, on the task's CPU."""

    __slots__ = ("cpu", "task", "tracer")

    def __init__(self, frames, tracer: _Tracer, task, cpu) -> None:
        super().__init__(frames)
        self.tracer = tracer
        self.task = task
        self.cpu = cpu

    def append(self, gen) -> None:
        list.append(self, gen)
        self.tracer.push(self, gen)

    def pop(self):
        gen = list.pop(self)
        self.tracer.pop(self, gen)
        return gen


def _gather_fill(tlb, before: dict) -> tuple[int, int] | None:
    """(entries in the active batch, entries in all batches) of a gather: 2.6.39's `pages` array, or the
    3.0/6.18 chain of batches from `local` (filled up to `active`, empty after it); None for a gather of
    another shape. `before` caches, per gather, (active batch, entries before it) from the last call:
    the walk goes on from there, and starts again at `local` when a flush has rewound the chain."""
    pages = getattr(tlb, "pages", None)
    if pages is not None:
        return len(pages), len(pages)
    local = getattr(tlb, "local", None)
    if local is None:
        return None
    active = tlb.active
    batch, count = before.get(tlb, (local, 0))
    while batch is not active:
        if batch is None:                   # rewound since the last call
            batch, count = local, 0
            continue
        count += len(batch.pages)
        batch = batch.next
    before[tlb] = (active, count)
    return len(active.pages), count + len(active.pages)


def _hook_violations(tracer: _Tracer, invariants) -> None:
    report = invariants.report

    def traced_report(kind: str, cpu: int, detail: str, key=None) -> None:
        before = invariants.total
        report(kind, cpu, detail, key)
        if invariants.total != before:
            tracer.violation(kind, cpu, detail)
    invariants.report = traced_report


class _TracingEngine:
    """Engine hooks, mixed in over the engine's own class by attach_trace (see `_traced_class`)."""

    _tracer: _Tracer

    def run(self, until_ns: int | None = None) -> int:
        try:
            return super().run(until_ns)
        finally:
            self._tracer.end_run()

    def spawn(self, *args, **kwargs):
        task = super().spawn(*args, **kwargs)
        self._tracer.wrap(task)
        return task

    def _run_cpu(self, c, *args, **kwargs) -> None:
        self._tracer.active = c
        super()._run_cpu(c, *args, **kwargs)

    def _schedule(self, c) -> None:
        """The outgoing task's slices close at the switch, the incoming task's open after its cost."""
        tr = self._tracer
        active = tr.active
        tr.close_all(c)
        tr.active = c
        super()._schedule(c)
        tr.active = active
        if c.curr is not None:
            tr.open_task(c, c.curr)

    def _preempt_inc(self, c) -> None:
        if c.preempt_count == 0:
            tr = self._tracer
            tr.trace.begin(tr.preempt_tid[c.id], "preempt off", c.clock)
        super()._preempt_inc(c)

    def _preempt_dec(self, c) -> None:
        super()._preempt_dec(c)
        if c.preempt_count == 0:
            tr = self._tracer
            tr.trace.end(tr.preempt_tid[c.id], "preempt off", c.clock)

    def _granted(self, c, lock) -> None:
        if lock.stat == "pte" and not c.ptl_held:
            tr = self._tracer
            tr.trace.begin(tr.ptl_tid[c.id], "PTE lock", c.clock, {"lock": lock.name})
        super()._granted(c, lock)

    def _spin_unlock(self, c, task, v) -> bool:
        t, held = c.clock, c.ptl_held
        ok = super()._spin_unlock(c, task, v)
        if held and not c.ptl_held:
            tr = self._tracer
            tr.trace.end(tr.ptl_tid[c.id], "PTE lock", t)
        return ok

    def _smp_call(self, c, task, v) -> bool:
        """Each target's handler becomes a slice on that CPU, with a flow arrow from here and now."""
        tr = self._tracer
        func = v.func
        name = getattr(func, "__name__", "ipi")
        src, sent = tr.tid[c.id], c.clock
        handler_cost = self.costs.ipi_handler

        def traced(t) -> int:
            start, active = t.clock, tr.active
            tr.active = t
            cost = func(t)
            tr.active = active
            dur = handler_cost + cost
            dst = tr.tid[t.id]
            tr.trace.complete(dst, name, start, dur)
            tr.trace.flow(src, sent, dst, start + dur // 2, "IPI")
            return cost
        v = copy.copy(v)
        v.func = traced
        return super()._smp_call(c, task, v)


_TRACED_CLASSES: dict[type, type] = {}


def _traced_class(cls: type) -> type:
    """`cls` with the tracing hooks over it (one class per engine class, so a subclass keeps its own code)."""
    traced = _TRACED_CLASSES.get(cls)
    if traced is None:
        traced = _TRACED_CLASSES[cls] = type(f"Traced{cls.__name__}", (_TracingEngine, cls), {})
    return traced


def check_trace_path(path: str) -> None:
    """`--trace FILE`: a one-line error before any run if FILE cannot be written there."""
    p = Path(path)
    if p.is_dir() or not p.parent.is_dir():
        raise InputError(f"--trace: cannot write {path}: "
                         f"{'it is a directory' if p.is_dir() else 'no such directory'}")


def save_traces(traces: list[ChromeTrace], path: str) -> None:
    """Write the traces of several runs (one process each) to one file; OS errors are one-line errors."""
    try:
        write_traces(traces, path)
    except OSError as e:
        raise InputError(f"--trace: cannot write {path}: {e.strerror}") from None
